"""`semantica train pairs`: configuration, and real CPU training runs (one process, two processes, an embedding
cache). Resuming, SIGKILL included: tests/test_resume.py."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training import train_pairs
from training.config import ConfigError, OptimConfig, build_model_configs, resolve_config, training_preset_names
from training.train_pairs import lr_factor

from helpers import cli_env

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# Configuration


def test_presets_resolve_and_build_model_configs():
    assert {"tiny", "base64", "base256"} <= set(training_preset_names())
    for name, resolution in [("tiny", 32), ("base64", 64), ("base256", 256)]:
        config = resolve_config(name, flags={"data": "d", "encoder": "e.safetensors"})
        assert config.model.preset == name
        net, diffusion = build_model_configs(config, token_dim=384, pooled_dim=512)
        assert (net.resolution, net.token_dim, net.pooled_dim) == (resolution, 384, 512)
        assert diffusion.to_dict()
    base256 = resolve_config("base256", flags={"data": "d", "encoder": "e"})
    assert base256.train.precision == "bf16" and base256.train.gradient_checkpointing
    net, _ = build_model_configs(base256, 8, 8)
    assert net.gradient_checkpointing
    # The token grid is opt-in; the encoder's token count is filled in only then.
    assert (net.token_layout, net.num_tokens) == (False, 0)
    grid = resolve_config("tiny", sets=["model.network.token_layout=true"], flags={"data": "d", "encoder": "e"})
    net, _ = build_model_configs(grid, 8, 8, num_tokens=49)
    assert (net.token_layout, net.num_tokens) == (True, 49)


def test_config_file_set_and_flags_in_order(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[optim]\nlr = 3e-4\n[train]\nmax_steps = 50\nbatch_size = 4\n[model.network]\nbase_channels = 64\n')
    yaml = tmp_path / "run.yaml"
    yaml.write_text("optim:\n  lr: 0.0003\ntrain:\n  max_steps: 50\n  batch_size: 4\nmodel:\n  network:\n    base_channels: 64\n")
    for path in (toml, yaml):
        config = resolve_config(
            "tiny", str(path),
            sets=["train.max_steps=70", "data.filter_max_similarity=0.9", "optim.betas=[0.9, 0.95]",
                  "data.flip=false", "sample.sampler=euler"],
            flags={"data": "pages/", "encoder": "enc.safetensors", "max_steps": 80, "batch_size": None},
        )
        assert config.optim.lr == pytest.approx(3e-4)  # file over preset
        assert config.train.batch_size == 4  # a flag left unset does not override
        assert config.train.max_steps == 80  # flag over --set over file
        assert config.data.filter_max_similarity == 0.9 and config.data.filter_min_similarity is None
        assert config.optim.betas == (0.9, 0.95) and config.data.flip is False and config.sample.sampler == "euler"
        assert config.train.checkpoint_every == 50  # from the tiny preset
        net, _ = build_model_configs(config, 8, 8)
        assert net.base_channels == 64


def test_config_errors_say_what_to_fix(tmp_path):
    flags = {"data": "d", "encoder": "e"}
    with pytest.raises(ConfigError, match=r"unknown OptimConfig keys \['lr_max'\] in config.optim; valid keys: lr, betas"):
        resolve_config("tiny", sets=["optim.lr_max=1"], flags=flags)
    with pytest.raises(ConfigError, match="train.max_steps must be an integer"):
        resolve_config("tiny", sets=["train.max_steps=lots"], flags=flags)
    with pytest.raises(ConfigError, match="unknown training preset 'huge'.*tiny"):
        resolve_config("huge", flags=flags)
    with pytest.raises(ConfigError, match="no training data"):
        resolve_config("tiny", flags={"encoder": "e"})
    with pytest.raises(ConfigError, match="no encoder"):
        resolve_config("tiny", flags={"data": "d"})
    with pytest.raises(ConfigError, match="must be below"):
        resolve_config("tiny", sets=["data.filter_min_similarity=0.9", "data.filter_max_similarity=0.5"], flags=flags)
    with pytest.raises(ConfigError, match="model.network"):
        build_model_configs(resolve_config("tiny", sets=["model.network.colour=1"], flags=flags), 8, 8)


def test_learning_rate_warmup_and_cosine():
    optim = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, optim, 110) == pytest.approx(0.1)
    assert lr_factor(9, optim, 110) == pytest.approx(1.0)
    assert lr_factor(10, optim, 110) == pytest.approx(1.0)
    assert lr_factor(60, optim, 110) == pytest.approx(0.55)
    assert lr_factor(110, optim, 110) == pytest.approx(0.1)
    assert lr_factor(50, OptimConfig(warmup_steps=0), 100) == 1.0


def test_command_registers_under_train(tmp_path):
    import argparse

    from training.commands import embed, train

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    train.register(subparsers)
    embed.register(subparsers)
    args = parser.parse_args(["train", "pairs", "--data", "d", "--encoder", "e", "--resume", "--set", "optim.lr=1"])
    assert args.func is train_pairs.run and args.resume == "latest" and args.set == ["optim.lr=1"]
    args = parser.parse_args(["embed", "--data", "d", "--encoder", "e", "--output", "o", "--shard", "1",
                              "--num-shards", "4"])
    assert (args.shard, args.num_shards) == (1, 4)


# ----------------------------------------------------------------------------------------------------------------
# Real runs on the CPU (subprocesses: accelerate's state is per process)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from semantica_core.encoders import export_encoder

    from training.data.example_pages import write_example_pages

    root = tmp_path_factory.mktemp("train-pairs")
    info = write_example_pages(str(root / "pages"), num_pages=8, size=64, with_bad_files=True)
    export_encoder("resnet10t", str(root / "encoder.safetensors"), random=True, image_size=64)
    return {"root": root, "data": str(root / "pages"), "encoder": str(root / "encoder.safetensors"), "info": info}


def _train_args(assets, out, *extra):
    return ["--data", assets["data"], "--encoder", assets["encoder"], "--output", str(out), "--preset", "tiny",
            "--batch-size", "4", *extra]


def _run(args, timeout=240, launcher=None):
    command = (launcher or [sys.executable, "-m", "training.train_pairs"]) + args
    result = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_export(out: Path, steps: int, processes: int = 1):
    from semantica_core.checkpoint import load_checkpoint

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps and summary["processes"] == processes
    model = load_checkpoint(out / "model.safetensors")
    assert model.kind == "pair_conditioned" and model.resolution == 32 and model.weights == "ema"
    assert model.encoder_info["token_dim"] == 512 and model.encoder_info["num_tokens"] > 0
    assert model.training_info["steps"] == steps
    return summary


TRAIN_STEPS = 24
CHECKPOINT_EVERY = 4


@pytest.mark.slow
def test_tiny_preset_trains_exports_and_reports_bad_data(assets):
    out = assets["root"] / "run-single"
    result = _run(_train_args(assets, out, "--max-steps", str(TRAIN_STEPS), "--checkpoint-every",
                              str(CHECKPOINT_EVERY), "--set", "data.pairs_per_page=6"))
    summary = _check_export(out, TRAIN_STEPS)
    counts = summary["data"]["counts"]
    assert counts["pages_one_image"] >= 1
    assert counts["images_unreadable"] >= 2 and counts["images_too_small"] >= 1
    assert set(summary["data"]["bad_files"]) == set(assets["info"]["bad"])
    assert counts["pairs_used"] == TRAIN_STEPS * 4
    assert "pages_one_image" in result.stdout and "truncated.jpg" in result.stdout  # the printed summary
    assert (out / "samples" / f"step-{TRAIN_STEPS:08d}.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [f"step-{TRAIN_STEPS - CHECKPOINT_EVERY:08d}", f"step-{TRAIN_STEPS:08d}"]  # keep_checkpoints = 2
    assert (out / "checkpoints" / kept[-1] / "state.safetensors").is_file()


def _torchrun():
    """Two CPU processes with gloo, as `accelerate launch` would start them on GPUs."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "-m", "training.train_pairs"]


@pytest.mark.slow
def test_two_cpu_processes_train_and_export(assets):
    out = assets["root"] / "run-ddp"
    _run(_train_args(assets, out, "--max-steps", "6", "--checkpoint-every", "3"), launcher=_torchrun())
    summary = _check_export(out, 6, processes=2)
    assert summary["images_seen"] == 6 * 4 * 2
    assert summary["data"]["counts"]["pairs_used"] == 6 * 4 * 2  # both processes' counts
    state = out / "checkpoints" / "step-00000006"
    assert {p.name for p in state.iterdir()} == {"state.safetensors", "state-rank1.safetensors"}
    # Resuming with two processes picks up both data positions and finishes.
    _run(_train_args(assets, out, "--max-steps", "8", "--checkpoint-every", "3", "--resume"), launcher=_torchrun())
    assert _check_export(out, 8, processes=2)["start_step"] == 6


@pytest.mark.slow
def test_embedding_cache_then_training_with_filtering(assets):
    cache = assets["root"] / "cache"
    for shard in range(2):
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from training.commands import embed; import argparse;"
             "p = argparse.ArgumentParser(); s = p.add_subparsers(); embed.register(s);"
             "a = p.parse_args(['embed'] + sys.argv[1:]); sys.exit(a.func(a))",
             "--data", assets["data"], "--encoder", assets["encoder"], "--output", str(cache), "--shard", str(shard),
             "--num-shards", "2", "--num-workers", "0"],
            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    out = assets["root"] / "run-cache"
    # A random encoder finds every crop of a photo alike: a max similarity of 0.9985 drops some pairs, not all.
    _run(["--data", assets["data"], "--cache", str(cache), "--output", str(out), "--max-steps", "4",
          "--batch-size", "4", "--set", "data.filter_max_similarity=0.9985", "--set", "data.pairs_per_page=3"])
    summary = _check_export(out, 4)
    counts = summary["data"]["counts"]
    assert counts["pairs_near_duplicate"] > 0 and counts["pairs_used"] == 16
    assert counts["images_missing_from_cache"] > 0  # the bad images were skipped by `semantica embed`


@pytest.mark.slow
def test_init_from_starts_from_an_earlier_models_raw_weights_and_refuses_another_network(assets):
    from safetensors.torch import load_file

    from semantica_core.checkpoint import load_checkpoint

    source = assets["root"] / "run-source"
    _run(_train_args(assets, source, "--max-steps", "3", "--checkpoint-every", "3"))
    # With a learning rate of 0 the optimizer moves nothing: the run ends on exactly the source's raw weights.
    out = assets["root"] / "run-init"
    _run(_train_args(assets, out, "--max-steps", "2", "--checkpoint-every", "2", "--set", "optim.lr=0",
                     "--init-from", str(source / "model.safetensors")))
    started = load_checkpoint(out / "model.safetensors", weights="raw")
    assert started.training_info["init_from"] == str(source / "model.safetensors")
    assert started.training_info["init_from_steps"] == 3
    expected = load_checkpoint(source / "model.safetensors", weights="raw").network.state_dict()
    for name, tensor in started.network.state_dict().items():
        assert tensor.equal(expected[name]), name
    assert load_file(out / "model.safetensors").keys() == load_file(source / "model.safetensors").keys()
    # Resumed, the run takes its weights from its checkpoint, and still says where they started.
    _run(_train_args(assets, out, "--max-steps", "3", "--checkpoint-every", "2", "--set", "optim.lr=0",
                     "--init-from", str(source / "model.safetensors"), "--resume"))
    resumed = load_checkpoint(out / "model.safetensors", weights="raw").training_info
    assert (resumed["steps"], resumed["init_from_steps"]) == (3, 3)

    other = subprocess.run(
        [sys.executable, "-m", "training.train_pairs"]
        + _train_args(assets, assets["root"] / "run-other", "--max-steps", "1",
                      "--set", "model.network.base_channels=64",
                      "--init-from", str(source / "model.safetensors")),
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert other.returncode != 0
    assert "model.init_from" in other.stderr and "base_channels" in other.stderr, other.stderr[-2000:]
    missing = subprocess.run(
        [sys.executable, "-m", "training.train_pairs"]
        + _train_args(assets, assets["root"] / "run-missing", "--max-steps", "1", "--init-from", "nowhere.safetensors"),
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert missing.returncode != 0 and "no file nowhere.safetensors" in missing.stderr, missing.stderr[-2000:]
