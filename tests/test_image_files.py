"""The core's image-file loader (EXIF, alpha, gray, bad files) and training's fitting through the core's."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from semantica_core.image_files import ImageFileError, load_image_file
from semantica_core.imageops import cover, fit_image
from training.data.images import BadImage, decode_image, fit_square

RED = (255, 0, 0)


def _png(img: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_rgb_file_gives_float_chw_in_0_1(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image_file(tmp_path / "a.png")
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_exif_orientation_is_applied():
    # Stored 3 wide, 2 high with the top-left pixel red; orientation 6 = "rotate 90 degrees clockwise to view".
    stored = Image.new("RGB", (3, 2))
    stored.putpixel((0, 0), RED)
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image_file(_png(stored, exif=exif))
    assert image.shape == (3, 3, 2)  # now 2 wide, 3 high
    red = (image[0] == 1) & (image[1] == 0)
    assert red.nonzero().tolist() == [[0, 1]]  # the top-left corner went to the top-right


def test_alpha_is_composited_over_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = RED
    rgba[0, :, 3] = [255, 0, 51]  # opaque, transparent, 20 % opaque
    image = load_image_file(_png(Image.fromarray(rgba, "RGBA")))
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(image[:, 0, 1], torch.ones(3))  # the red under a transparent pixel does not leak
    assert torch.allclose(image[:, 0, 2], torch.tensor([1.0, 0.8, 0.8]))


def test_palette_transparency_is_composited_over_white():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    image = load_image_file(_png(palette, transparency=1))
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(image[:, 0, 1], torch.ones(3))


def test_gray_becomes_rgb_and_16_bit_keeps_its_range():
    gray = np.array([[0, 128, 255]], np.uint8)
    image = load_image_file(_png(Image.fromarray(gray, "L")))
    assert image.shape == (3, 1, 3)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert torch.allclose(image[0, 0], torch.tensor([0, 128, 255]) / 255)

    deep = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
    image = load_image_file(_png(deep))
    assert torch.allclose(image[0, 0], torch.tensor([0.0, 0.5, 1.0]), atol=1e-4)  # not clipped to 255


def test_bad_files_raise_an_error_naming_the_file_and_the_problem(tmp_path):
    good = _png(Image.new("RGB", (64, 64), RED))
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    cases = {"truncated.png": "truncated or corrupt", "notes.png": "not an image file", "folder.png": "folder",
             "missing.png": "no such file"}
    for name, problem in cases.items():
        with pytest.raises(ImageFileError, match=problem) as error:
            load_image_file(tmp_path / name)
        assert str(tmp_path / name) in str(error.value) and isinstance(error.value, ValueError)
    with pytest.raises(ImageFileError, match="cannot read page 3 as an image: not an image file"):
        load_image_file(b"\x00" * 10, name="page 3")


def test_training_decode_reports_the_reason(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(BadImage) as error:
        decode_image(str(tmp_path / "bad.jpg"))
    assert error.value.reason == "unreadable" and "bad.jpg" not in str(error.value)  # the stats name the file
    with pytest.raises(BadImage) as error:
        decode_image(_png(Image.new("RGB", (10, 30))), min_size=16)
    assert error.value.reason == "too_small" and "10x30" in str(error.value)


def test_training_fits_images_as_sampling_does():
    image = torch.rand(3, 30, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fit_square(image, 16, "center"), fit_image(image[None], 16, 16, "crop")[0])
    assert torch.equal(fit_square(image, 16, "squash"), fit_image(image[None], 16, 16, "resize")[0])
    assert torch.equal(fit_square(image, 16, "center", flip=True), fit_image(image[None], 16, 16, "crop")[0].flip(-1))

    scaled = cover(image[None], 16, 16)[0]
    assert scaled.shape == (3, 16, 27)
    windows = {tuple(fit_square(image, 16, "random", rng=np.random.default_rng(s))[0, 0, :2].tolist())
               for s in range(20)}
    assert len(windows) > 1  # the offset varies with the rng ...
    for s in range(5):  # ... and every crop is a window of the same covering image
        crop = fit_square(image, 16, "random", rng=np.random.default_rng(s))
        assert any(torch.equal(crop, scaled[:, :, left:left + 16]) for left in range(12))
    with pytest.raises(ValueError, match="unknown crop"):
        fit_square(image, 16, "middle")
