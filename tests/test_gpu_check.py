"""The GPU check cannot rot: benchmarks/gpu_check.sh runs every part on the CPU at tiny sizes and prints its one
table. (No figure is asserted: on a CPU they mean nothing; the full check runs where a GPU is lent.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--quick", "--device", "cpu", "--work", str(tmp_path),
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=850, env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    whats = [r["what"] for r in rows]
    assert [w.split(",")[0] for w in whats] == [
        "train tiny bf16", "train single sindiffusion_tiny", "sample variations tiny", "train pairs tiny"
    ], whats
    assert all(isinstance(r["value"], float) and r["value"] > 0 for r in rows), rows
    assert "falls" in rows[-1]["notes"] and "measurement" in done.stdout  # the table


def test_generated_pages_are_related_within_a_page(tmp_path):
    import numpy as np
    from PIL import Image

    from benchmarks.gpu_check import write_pages

    write_pages(tmp_path, pages=3, per_page=2, size=32)
    pages = sorted(p for p in tmp_path.iterdir())
    assert len(pages) == 3 and all(len(list(p.glob("*.png"))) == 2 for p in pages)
    means = [[np.asarray(Image.open(f)).reshape(-1, 3).mean(0) for f in sorted(p.glob("*.png"))] for p in pages]
    assert all(m.shape == (3,) for page in means for m in page)

