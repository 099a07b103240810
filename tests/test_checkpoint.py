"""Checkpoints: save -> load gives the same model; every bad file gets its own actionable error; the CLI end to end."""
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub fetch fails at once instead of hanging

import pytest
import torch
from safetensors.torch import save_file

from semantica_core.checkpoint import (
    CheckpointError,
    EncoderMismatchError,
    check_embeds_match,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from semantica_core import diffusion, networks
from semantica_core.embeds import Embeds

ENCODER = {"encoder_id": "timm:test:random-0-abc", "token_dim": 12, "pooled_dim": 10, "num_tokens": 4}


def tiny_unet_config(**overrides):
    base = dict(
        resolution=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
        head_dim=8, token_dim=12, pooled_dim=10,
    )
    return networks.UNetConfig(**{**base, **overrides})


def diffusion_config():
    return diffusion.DiffusionConfig(schedule=diffusion.ScheduleConfig(kind="vp_cosine"), prediction="v")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pair-conditioned checkpoint with distinct raw and EMA weights, and the networks it was saved from."""
    torch.manual_seed(0)
    config = tiny_unet_config()
    raw = networks.build_network("pair_conditioned", config).eval()
    ema = networks.build_network("pair_conditioned", config).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(
        path, kind="pair_conditioned", network_config=config, diffusion_config=diffusion_config(),
        state_dict=raw.state_dict(), ema_state_dict=ema.state_dict(), encoder_info=ENCODER,
        training_info={"step": 7},
    )
    return path, raw, ema


def _embeds(batch=2, encoder_id=ENCODER["encoder_id"]):
    g = torch.Generator().manual_seed(1)
    return Embeds(torch.randn(batch, 4, 12, generator=g), torch.randn(batch, 10, generator=g), encoder_id)


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_save_load_gives_identical_outputs(saved, weights):
    path, raw, ema = saved
    model = load_checkpoint(path, weights=weights)
    reference = ema if weights == "ema" else raw
    assert model.weights == weights and model.kind == "pair_conditioned" and not model.network.training
    assert (model.resolution, model.channels) == (16, 3)
    assert model.encoder_info == ENCODER and model.training_info == {"step": 7}
    x, c_noise, embeds = torch.randn(2, 3, 16, 16), torch.tensor([0.1, 0.7]), _embeds()
    with torch.no_grad():
        expected = reference(x, c_noise, tokens=embeds.tokens, pooled=embeds.pooled)
        got = model.network(x, c_noise, tokens=embeds.tokens, pooled=embeds.pooled)
        assert torch.equal(got, expected)
        # The denoiser wraps the loaded network with the stored diffusion config.
        assert model.denoiser(x, torch.tensor([1.0, 2.0]), embeds, guidance_scale=2.0).shape == x.shape
    assert model.denoiser.config.to_dict() == diffusion_config().to_dict()


def test_write_is_atomic_and_metadata_is_cheap_to_read(saved):
    path, raw, _ = saved
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    meta = read_checkpoint_metadata(path)
    assert meta["semantica_format"] == 1 and meta["kind"] == "pair_conditioned" and meta["has_ema"]
    assert meta["encoder"] == ENCODER and meta["network"]["token_dim"] == 12
    assert meta["parameters"] == sum(t.numel() for t in raw.state_dict().values())


def test_single_image_checkpoint_without_ema_falls_back_to_raw(tmp_path):
    config = networks.PatchUNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    net = networks.build_network("single_image", config).eval()
    path = save_checkpoint(
        tmp_path / "single.safetensors", kind="single_image", network_config=config,
        diffusion_config=diffusion_config(), state_dict=net.state_dict(), training_info={"resolution": 48},
    )
    with pytest.warns(UserWarning, match="no EMA weights"):
        model = load_checkpoint(path)
    assert model.weights == "raw" and model.encoder_info is None and model.resolution == 48
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(model.network(x, torch.tensor([0.3])), net(x, torch.tensor([0.3])))


def test_embeds_must_come_from_the_models_encoder(saved):
    model = load_checkpoint(saved[0])
    check_embeds_match(model, _embeds())
    with pytest.raises(EncoderMismatchError, match="'timm:other:x'.*'timm:test:random-0-abc'"):
        check_embeds_match(model, _embeds(encoder_id="timm:other:x"))


def _metadata(**overrides):
    meta = {
        "semantica_format": "1",
        "kind": json.dumps("pair_conditioned"),
        "network": json.dumps(tiny_unet_config().to_dict()),
        "diffusion": json.dumps(diffusion_config().to_dict()),
        "encoder": json.dumps(ENCODER),
        "training": "null",
    }
    meta.update(overrides)
    return meta


def test_bad_files_get_clear_errors(tmp_path, saved):
    good_path, raw, _ = saved
    state = {f"model.{k}": v.contiguous() for k, v in raw.state_dict().items()}

    def write(name, tensors=state, **meta):
        path = tmp_path / name
        save_file(tensors, path, metadata=_metadata(**meta))
        return path

    (tmp_path / "truncated.safetensors").write_bytes(good_path.read_bytes()[:-100])
    (tmp_path / "garbage.safetensors").write_bytes(b"hello, this is not a model file at all")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    save_file({"w": torch.zeros(1)}, tmp_path / "plain.safetensors")
    for name, match in [
        ("missing", "checkpoint not found: .*missing.safetensors"),
        ("truncated", "truncated.*re-download or re-export"),
        ("garbage", "not a safetensors file"),
        ("empty", "empty or truncated"),
        ("plain", "not a Semantica checkpoint.*semantica_format"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / f"{name}.safetensors")

    cases = [
        (dict(semantica_format="2"), "format version 2 .*update semantica"),
        (dict(kind=json.dumps("text_to_image")), "unknown model kind 'text_to_image'"),
        (dict(network="{not json"), "metadata 'network' is not valid JSON"),
        (dict(encoder="null"), "pair-conditioned model but names no encoder"),
        (dict(encoder=json.dumps({"encoder_id": "x"})), "encoder info lacks token_dim"),
        (dict(encoder=json.dumps({**ENCODER, "token_dim": 99})), "network takes token_dim=12 but its encoder"),
    ]
    for i, (meta, message) in enumerate(cases):
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(write(f"case{i}.safetensors", **meta))

    name = next(k for k in raw.state_dict() if k.endswith("weight") and raw.state_dict()[k].ndim == 4)
    wrong_shape = dict(state)
    wrong_shape[f"model.{name}"] = torch.zeros(3, 1, 1, 1)
    expected_shape = tuple(raw.state_dict()[name].shape)
    message = f"'model.{name}' has shape (3, 1, 1, 1) in the file but the network config expects {expected_shape}"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(write("shape.safetensors", wrong_shape), weights="raw")
    missing = {k: v for k, v in state.items() if k != f"model.{name}"}
    with pytest.raises(CheckpointError, match=rf"'model\.{name}' is missing"):
        load_checkpoint(write("missing_key.safetensors", missing), weights="raw")
    wider = write("wider.safetensors", network=json.dumps(tiny_unet_config(base_channels=32).to_dict()))
    with pytest.raises(CheckpointError, match="has shape .* but the network config expects"):
        load_checkpoint(wider, weights="raw")


def test_pickles_are_refused_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    torch.save({"model.w": torch.zeros(2)}, path)
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"model.w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)

    def never(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in [(pickle, "Unpickler"), (pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(module, name, never)
    for p in (path, legacy):
        with pytest.raises(CheckpointError, match=r"looks like a PyTorch pickle .*only safetensors"):
            load_checkpoint(p)
        with pytest.raises(CheckpointError, match="PyTorch pickle"):
            read_checkpoint_metadata(p)


def test_save_refuses_a_pair_model_without_encoder(tmp_path):
    net = networks.build_network("pair_conditioned", tiny_unet_config())
    with pytest.raises(ValueError, match="needs encoder_info"):
        save_checkpoint(
            tmp_path / "x.safetensors", kind="pair_conditioned", network_config=tiny_unet_config(),
            diffusion_config=diffusion_config(), state_dict=net.state_dict(),
        )
    assert not list(tmp_path.iterdir())


def _semantica_command():
    script = Path(sys.executable).with_name("semantica")
    return [str(script)] if script.exists() else [sys.executable, "-m", "training.cli"]


def test_cli_export_init_and_info(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(*args):
        result = subprocess.run(_semantica_command() + list(args), capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    encoder_file, model_file = tmp_path / "encoder.safetensors", tmp_path / "model.safetensors"
    out = run(
        "encoder", "export", "resnet10t", "--random", "--seed", "3", "--image-size", "64", "--output", str(encoder_file)
    )
    assert "timm:resnet10t:random-3-" in out
    run("init", "--encoder", str(encoder_file), "--preset", "tiny", "--output", str(model_file), "--seed", "1")
    info = json.loads(run("checkpoint", "info", str(model_file)))

    from semantica_core.encoders import read_encoder_spec

    spec = read_encoder_spec(encoder_file)
    assert info["encoder"] == spec.info() and info["kind"] == "pair_conditioned"
    assert info["network"]["token_dim"] == spec.token_dim == 512 and info["network"]["pooled_dim"] == spec.pooled_dim
    with pytest.warns(UserWarning, match="no EMA"):
        model = load_checkpoint(model_file)
    assert model.diffusion_config["prediction"] == "v" and model.diffusion_config["schedule"]["kind"] == "vp_cosine"


def test_cli_errors_are_one_line_messages(tmp_path, capsys):
    from training.cli import main

    assert main(["encoder", "export", "resnet18", "--output", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("semantica: error: no offline weights for 'resnet18'") and "--random" in err
    bad = tmp_path / "bad.safetensors"
    torch.save({}, bad)
    assert main(["checkpoint", "info", str(bad)]) == 2
    assert "PyTorch pickle" in capsys.readouterr().err
