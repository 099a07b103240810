"""Image fitting in the core, the IMAGE/MASK conversion and the progress adapter of nodes/, without a host."""
import importlib
import sys
import types

import pytest
import torch

from semantica_core.imageops import fit_image, to_rgb


def test_to_rgb_repeats_gray_and_composites_rgba_over_white():
    gray = torch.rand(2, 1, 5, 6)
    assert torch.equal(to_rgb(gray), gray.repeat(1, 3, 1, 1))

    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    alpha = torch.tensor([1.0, 0.0, 0.5]).view(1, 1, 1, 3)
    out = to_rgb(torch.cat([rgb, alpha], dim=1))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))  # opaque: its color
    assert torch.allclose(out[0, :, 0, 1], torch.ones(3))  # transparent: the white background
    assert torch.allclose(out[0, :, 0, 2], torch.tensor([0.6, 0.7, 0.8]))  # half: the mix

    with pytest.raises(ValueError, match="1 .gray., 3 .RGB. or 4 .RGBA. channels, got 2"):
        to_rgb(torch.rand(1, 2, 4, 4))


@pytest.mark.parametrize("mode", ["crop", "pad", "resize"])
@pytest.mark.parametrize("size", [(37, 23), (128, 96), (16, 64)])
def test_fit_image_gives_the_target_size_in_range(mode, size):
    out = fit_image(torch.rand(2, 4, 50, 70), *size, mode=mode)
    assert out.shape == (2, 3, size[1], size[0])
    assert out.min() >= 0 and out.max() <= 1


def test_crop_keeps_the_center_and_pad_centers_the_image():
    columns = torch.arange(8.0).div(8).view(1, 1, 1, 8).expand(1, 3, 4, 8)
    cropped = fit_image(columns, 4, 4, mode="crop")  # already 4 high: no scaling, cut 2 columns each side
    assert torch.equal(cropped, columns[..., 2:6])

    padded = fit_image(columns, 8, 6, mode="pad", pad_value=0.5)  # fits as is, one row of padding above and below
    assert torch.equal(padded[:, :, 1:5], columns)
    assert torch.all(padded[:, :, 0] == 0.5) and torch.all(padded[:, :, 5] == 0.5)


def test_fit_image_scales_before_cropping_or_padding():
    image = torch.zeros(1, 3, 20, 40)
    image[..., 20:] = 1.0  # left half black, right half white
    crop = fit_image(image, 10, 10, mode="crop")  # scaled to 20x10, center 10 columns: half black, half white
    assert crop[..., :4].max() < 0.05 and crop[..., 6:].min() > 0.95
    pad = fit_image(image, 10, 10, mode="pad")  # scaled to 10x5, rows 2..6
    assert torch.all(pad[:, :, :2] == 0.5) and torch.all(pad[:, :, 7:] == 0.5)
    assert pad[:, :, 3, :4].max() < 0.05 and pad[:, :, 3, 6:].min() > 0.95
    resized = fit_image(image, 10, 10, mode="resize")
    assert resized[..., :4].max() < 0.05 and resized[..., 6:].min() > 0.95


def test_fit_image_at_its_own_size_is_exact_and_rejects_bad_arguments():
    image = torch.rand(1, 3, 16, 24)
    for mode in ("crop", "pad", "resize"):
        assert torch.equal(fit_image(image, 24, 16, mode=mode), image)
    with pytest.raises(ValueError, match="unknown fit mode 'zoom'"):
        fit_image(image, 8, 8, mode="zoom")
    with pytest.raises(ValueError, match="at least 1x1"):
        fit_image(image, 0, 8)


def test_image_conversion_round_trip_and_channel_counts():
    from nodes.convert import core_to_image, image_to_core

    image = torch.rand(2, 9, 7, 3)
    core = image_to_core(image)
    assert core.shape == (2, 3, 9, 7)
    assert torch.equal(core_to_image(core), image)

    assert torch.equal(image_to_core(image[..., :1])[:, 2], image[..., 0])  # gray -> RGB
    rgba = torch.cat([image, torch.zeros(2, 9, 7, 1)], dim=-1)
    assert torch.equal(image_to_core(rgba), torch.ones(2, 3, 9, 7))  # fully transparent -> white
    assert image_to_core(image[0]).shape == (1, 3, 9, 7)  # a lone [H, W, C]
    with pytest.raises(ValueError, match="1 .gray., 3 .RGB. or 4 .RGBA. channels, got 5"):
        image_to_core(torch.rand(1, 4, 4, 5))


def test_mask_conversion_broadcasts_resizes_and_checks_the_batch():
    from nodes.convert import core_to_mask, mask_to_core

    mask = torch.zeros(4, 4)
    mask[:, 2:] = 1
    out = mask_to_core(mask, batch=3, height=8, width=8)
    assert out.shape == (3, 1, 8, 8)
    assert torch.all(out[:, :, :, :3] == 0) and torch.all(out[:, :, :, 5:] == 1)
    assert torch.equal(core_to_mask(out), out[:, 0])
    assert mask_to_core(torch.rand(3, 8, 8), batch=3, height=8, width=8).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"mask batch \(2\) does not match the image batch \(3\)"):
        mask_to_core(torch.rand(2, 8, 8), batch=3, height=8, width=8)


@pytest.fixture
def progress_module(monkeypatch):
    """nodes/progress.py against stand-ins for the three ComfyUI modules it uses."""
    calls = {"bars": [], "interrupt_checks": 0, "interrupt_at": None}

    class ProgressBar:
        def __init__(self, total):
            self.updates = []
            calls["bars"].append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append((value, total, preview))

    def throw_exception_if_processing_interrupted():
        calls["interrupt_checks"] += 1
        if calls["interrupt_checks"] == calls["interrupt_at"]:
            raise InterruptedError("interrupted")

    class LatentPreviewMethod:
        NoPreviews = "none"

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted
    )
    cli_args = types.SimpleNamespace(
        LatentPreviewMethod=LatentPreviewMethod, args=types.SimpleNamespace(preview_method="auto", preview_size=512)
    )
    for name, module in {"comfy": comfy, "comfy.utils": comfy.utils, "comfy.cli_args": cli_args,
                         "comfy.model_management": comfy.model_management}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "nodes.progress", raising=False)
    module = importlib.import_module("nodes.progress")
    monkeypatch.setitem(sys.modules, "nodes.progress", module)  # removed again after the test
    return module, calls


def test_progress_adapter_reports_each_step_with_a_preview_and_checks_interrupt(progress_module):
    progress, calls = progress_module
    callback = progress.SamplingProgress()
    x0 = torch.linspace(-1, 1, 3 * 8 * 10).view(1, 3, 8, 10)
    for i in range(3):
        callback({"i": i, "total": 3, "x": x0, "sigma": 1.0, "denoised": x0})
    assert calls["interrupt_checks"] == 3
    updates = calls["bars"][0].updates
    assert [(value, total) for value, total, _ in updates] == [(1, 3), (2, 3), (3, 3)]
    kind, image, max_size = updates[0][2]
    assert (kind, image.size, image.mode, max_size) == ("JPEG", (10, 8), "RGB", 512)
    assert image.getpixel((0, 0))[0] == 0 and image.getpixel((9, 7))[2] == 255  # [-1, 1] -> [0, 255]

    calls["interrupt_at"] = 5  # the host's Cancel raises from the check: it must reach the sampler
    callback = progress.SamplingProgress(total=10, preview=False)
    callback({"i": 0, "total": 10, "denoised": x0})
    assert calls["bars"][1].updates == [(1, 10, None)]
    with pytest.raises(InterruptedError):
        callback({"i": 1, "total": 10, "denoised": x0})
