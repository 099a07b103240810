"""The templates in the real ComfyUI frontend, in headless Chromium, as a new user meets them.

A fresh ComfyUI base directory gets a copy of the repository in custom_nodes/ (what a user's clone holds; nothing is
linked, copied into models/ or uploaded), and the page opens every template the pack serves from the Templates
browser, checks that no missing-file dialog appears, presses Run without touching a widget, and checks the images.
Screenshots go to out/browser/ for a person to look at. Skipped, with the reason, where Chromium or Playwright is
missing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tools.frontend import Frontend, browser_missing, install_pack_copy
from tools.hostctl import REPO_ROOT, ComfyServer

pytestmark = [pytest.mark.host, pytest.mark.browser]

SHOTS = REPO_ROOT / "out" / "browser"
TEMPLATES = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
# Template -> {output node id: (image count, (height, width))}, from the embedded models' sizes (32 px digits;
# the rocket at 112 x 75). A template not listed here must still show non-blank images.
EXPECTED = {
    "semantica_image_variations": {"6": (4, (32, 32))},
    "semantica_mix_two_images": {"9": (4, (32, 32))},
    "sdedit_stroke_painting": {"4": (1, (32, 32)), "6": (1, (32, 32))},
    "sdedit_masked_edit": {"5": (1, (32, 32))},
    "sindiffusion_new_aspect_ratio": {"4": (4, (75, 224))},
    "sindiffusion_outpainting": {"4": (1, (75, 224))},
    "sindiffusion_harmonization": {"7": (1, (75, 112))},
    "sindiffusion_train_your_photo": {"4": (4, (75, 112)), "6": (1, (75, 112))},
}


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    why = browser_missing()
    if why:
        pytest.skip(f"browser tests need a browser: {why}")
    base = tmp_path_factory.mktemp("browser-base")
    pack = install_pack_copy(base / "custom_nodes")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with ComfyServer(base, pack_dir=pack, log_path=SHOTS / "comfyui.log", cpu=True) as server:
        with Frontend(server.url) as page:
            yield page


def test_the_pack_serves_every_workflow_as_a_template(frontend):
    assert frontend.templates_listed() == TEMPLATES


@pytest.mark.timeout(1800)  # the in-graph training template trains for minutes; the others take seconds
@pytest.mark.parametrize("name", TEMPLATES)
def test_a_template_opens_and_runs_as_it_is(frontend, name):
    started = time.monotonic()
    run = frontend.run_template(name, timeout=1700)
    frontend.screenshot(SHOTS / f"{name}.png")
    assert not run.dialogs, f"the page showed a dialog: {run.dialogs}"
    assert run.status == "success", run.error or run.status
    print(f"[browser] {name}: ran in {run.seconds:.1f} s ({time.monotonic() - started:.1f} s with opening)")
    expected = EXPECTED.get(name)
    if expected is not None:
        assert {k: len(v) for k, v in run.images.items()} == {k: n for k, (n, _) in expected.items()}
        for node_id, (_, size) in expected.items():
            assert [im.shape[:2] for im in run.images[node_id]] == [size] * len(run.images[node_id])
    assert run.images, "no image came out"
    for images in run.images.values():
        for image in images:
            assert image.std() > 2, "a blank image"  # 8-bit values: flat images have a spread of about 0
    if len(run.images.get(max(run.images, key=lambda k: len(run.images[k])), [])) > 1:
        biggest = run.images[max(run.images, key=lambda k: len(run.images[k]))]
        assert np.abs(biggest[0].astype(int) - biggest[1]).mean() > 1, "the images of one run are all the same"
