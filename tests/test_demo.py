"""The demo end to end, reduced (`python -m tools.demo --quick`): a real ComfyUI server runs the shipped workflows
on the embedded demo models, and the images, the contact sheet and the metrics come out."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_stroke_painting_keeps_the_digit_layout():
    import numpy as np

    from training.demo_data import stroke_painting

    digit = np.zeros((32, 32), dtype=np.uint8)
    digit[8:24, 14:18] = 255  # a "1"
    painting = stroke_painting(digit)
    assert painting.shape == digit.shape
    assert painting[16, 15] > 0 and painting[2, 2] == 0


@pytest.mark.slow
@pytest.mark.host
def test_quick_demo_writes_images_sheet_and_metrics(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--quick", "--out", str(out), "--base", str(tmp_path / "base")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "contact_sheet.png").is_file()
    rows = sorted(out.glob("row*_*.png"))
    # 2 digits x (condition + 4 + 4 variations) + stroke painting and 3 SDEdit results.
    assert len(rows) >= 2 * 9 + 4
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("pairs", "reconstruct"):
        for key in ("consistency_encoder_cosine", "diversity_l1", "distance_to_condition_l1"):
            assert key in metrics["models"][model]["mean"]
        assert metrics["models"][model]["mean"]["diversity_l1"] > 0
        assert metrics["models"][model]["mean"]["conditions"] == 2  # --quick: 2 digits
    assert "consistency: classifier" in done.stdout
    _check_sindiffusion_rows(out, first_row=3)  # the embedded models ship in models/demo/: none may be missing


def _check_sindiffusion_rows(out: Path, first_row: int):
    """Rows after the digits and the SDEdit: the training picture, 3 samples twice as wide, an outpaint that keeps
    the picture pixel for pixel in its middle."""
    import numpy as np
    from PIL import Image

    def row(r):
        return [np.asarray(Image.open(p)) for p in sorted(out.glob(f"row{r:02d}_*.png"))]

    (picture,), wide, (outpainted,) = row(first_row), row(first_row + 1), row(first_row + 2)
    height, width = picture.shape[:2]
    assert [im.shape for im in wide] == [(height, 2 * width, 3)] * 3
    assert not np.array_equal(wide[0], wide[1])
    margin = width // 2
    assert outpainted.shape == (height, width + 2 * margin, 3)
    assert np.array_equal(outpainted[:, margin:margin + width], picture)
