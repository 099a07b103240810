"""`semantica train pairs`: train a pair-conditioned diffusion model (Semantica) on pages of related images.

The same module runs on one CPU, one GPU, or many GPUs and nodes under `accelerate launch` (DDP, or FSDP through
accelerate's config). Accelerate owns devices, mixed precision and the training-state checkpoint; this file owns
the data (training.data), the loss, EMA, logging and the export to a Semantica checkpoint.

Output folder:
  config.json                      the resolved training config
  train.lock                       held while a run trains here (pid, host, start): a second run stops at once
  checkpoints/step-00001000/       the whole training state, safetensors and JSON only (nothing is pickled),
                                   written to a temporary folder and renamed (atomic): model.safetensors (raw
                                   weights), optimizer.safetensors (AdamW moments, param groups), ema-<rank> and
                                   rng-<rank>.safetensors (torch, CUDA, numpy, Python and the noise generator),
                                   data-<rank>.json (data position), config.json, trainer_state.json (written last)
  samples/step-00001000.png        variations of fixed held-out conditions (also in TensorBoard)
  tensorboard/                     scalars: loss, learning rate, images/s, gradient norm
  model.safetensors                the export (semantica_core.checkpoint format: raw + EMA weights)
  summary.json                     steps, time, and the data counts (what was used and skipped)

--resume continues from the newest complete checkpoint (a truncated or corrupt one is skipped with a message) with
the config stored there; a flag that contradicts it stops the run unless --override is given. The learning-rate
schedule is a function of the step, so it needs no state of its own. FSDP: the sharded optimizer state cannot be
written as safetensors here, so FSDP runs need --fsdp-pickled-state, which keeps accelerate's own (pickled) format.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
STATE_FORMAT = 2  # 1: accelerate's save_state (pickles), read only with --fsdp-pickled-state
LOCK_NAME = "train.lock"
# Keys a resumed run may change without --override: how long, how often it saves, logs and samples, and how it
# loads data; none changes what a step computes.
FREE_ON_RESUME = ("train.max_steps", "train.output_dir", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.log_every", "train.compile", "data.num_workers", "sample.")


class ConfigError(ValueError):
    """A training config that cannot be used; the message says which key and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Configuration: dataclasses <- preset file <- --config file <- --set key=value <- explicit flags


@dataclass
class DataConfig:
    path: str = ""  # folder of page folders, .jsonl/.csv manifest, or tar shards (dir, glob, {000..099} range)
    format: str = "auto"  # auto | folder | jsonl | csv | tar
    tar_page_from: str = "key"  # tar pages: WebDataset sample key (or its json "page"), or "dir" (member folder)
    cache: str = ""  # embedding cache from `semantica embed` ("" = embed conditions on the fly)
    pairing: str = "pairs"  # pairs: condition and target are two images of a page; reconstruct: the same image
    pairs_per_page: int = 1  # pairs drawn from a page per epoch
    min_image_size: int = 32  # images with a shorter side below this are skipped
    crop: str = "random"  # target crop: random | center
    flip: bool = True  # random horizontal flip of the target
    filter_min_similarity: Optional[float] = None  # drop pairs whose pooled-embedding cosine is below (unrelated)
    filter_max_similarity: Optional[float] = None  # drop pairs above (near-duplicates)
    holdout_pages: int = 4  # first pages kept out of training; their first images are the sample-grid conditions
    num_workers: int = 2  # dataloader worker processes per training process


@dataclass
class ModelConfig:
    preset: str = "tiny"  # network preset (semantica_core.presets.network_preset) and diffusion defaults
    encoder: str = ""  # frozen encoder file (semantica encoder export); optional with a cache
    network: dict = field(default_factory=dict)  # overrides of the network config (UNetConfig fields)
    diffusion: dict = field(default_factory=dict)  # overrides of the diffusion config (DiffusionConfig.to_dict())


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0  # on matrices and kernels only, never on biases, norms or null embeddings
    warmup_steps: int = 1000  # linear warmup from 0
    schedule: str = "constant"  # constant | cosine (after warmup, down to lr * min_lr_ratio at max_steps)
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm (0 = no clipping; the norm is still logged)


@dataclass
class EMAConfig:
    decay: float = 0.9999
    warmup: bool = True  # decay ramps as min(decay, (1 + step) / (10 + step)), so early averages are not stale


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-batch; effective batch = batch_size * grad_accum * processes
    grad_accum: int = 1
    seed: int = 0
    output_dir: str = "out/train-pairs"
    # auto = what `accelerate launch --mixed_precision` or its config file says; without either, bf16 where the
    # device has native bf16 (semantica_core.precision, SEMANTICA_PRECISION honoured), else fp32. fp32 = no.
    mixed_precision: str = "auto"  # auto | bf16 | fp16 | fp32 (no)
    cpu: bool = False  # train on the CPU even where an accelerator is present (several CPU processes use gloo)
    compile: bool = False  # torch.compile the network
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2  # older training-state checkpoints are deleted
    log_every: int = 10
    fsdp_pickled_state: bool = False  # FSDP only: accelerate's own (pickled) state format, see the module docstring


@dataclass
class SampleConfig:
    every: int = 1000  # 0 = only at the end
    num_conditions: int = 4
    per_condition: int = 4
    steps: int = 20
    guidance: float = 3.0
    sampler: str = "dpmpp_2m"
    spacing: str = "karras"
    seed: int = 0


@dataclass
class PairTrainingConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "PairTrainingConfig":
        return _build(cls, data, "config")


def _to_jsonable(value):
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def _coerce(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of keys; got {value!r}")
        return _build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false; got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return tuple(value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of keys; got {value!r}")
        return dict(value)
    return value


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str) -> dict:
    """A TOML (.toml) or YAML (.yaml/.yml) file of config sections."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        if path.lower().endswith((".yaml", ".yml")):
            import yaml

            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        else:
            with open(path, "rb") as f:
                data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise ConfigError(f"config file '{path}' cannot be parsed: {error}") from None
    except Exception as error:  # yaml.YAMLError
        raise ConfigError(f"config file '{path}' cannot be parsed: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold sections of keys (data, model, optim, ema, train, sample)")
    return data


def preset_names() -> list[str]:
    return sorted(n[len("pairs-"):-len(".toml")] for n in os.listdir(CONFIG_DIR) if re.match(r"pairs-.+\.toml$", n))


def preset_path(name: str) -> str:
    path = os.path.join(CONFIG_DIR, f"pairs-{name}.toml")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown training preset '{name}'; presets: {', '.join(preset_names())}")
    return path


def parse_value(text: str):
    """A --set value: TOML syntax (numbers, true/false, "strings", [lists]); anything else is a plain string."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(data: dict, assignment: str) -> dict:
    """`section.key=value` (or `model.network.base_channels=64`) into a nested dict."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set needs key=value (e.g. optim.lr=2e-4); got '{assignment}'")
    parts = key.strip().split(".")
    override: dict = {}
    node = override
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = parse_value(value.strip())
    return _deep_merge(data, override)


# Explicit flags -> config keys (they win over --set, the config file and the preset).
FLAG_KEYS = {
    "data": "data.path",
    "data_format": "data.format",
    "cache": "data.cache",
    "pairing": "data.pairing",
    "num_workers": "data.num_workers",
    "encoder": "model.encoder",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum",
    "output_dir": "train.output_dir",
    "seed": "train.seed",
    "mixed_precision": "train.mixed_precision",
    "cpu": "train.cpu",
    "compile": "train.compile",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "checkpoint_every": "train.checkpoint_every",
    "sample_every": "sample.every",
    "lr": "optim.lr",
    "fsdp_pickled_state": "train.fsdp_pickled_state",
}


def resolve_config(
    preset: Optional[str] = None, config_file: Optional[str] = None, sets=(), flags: Optional[dict] = None,
    validate: bool = True, base: Optional[dict] = None,
) -> PairTrainingConfig:
    """preset (default tiny) <- config file <- --set <- flags; `base` (a resumed run's stored config) replaces the
    default preset, so only what is given explicitly changes it."""
    data: dict = dict(base or {})
    if preset or not (config_file or base):
        data = _deep_merge(data, read_config_file(preset_path(preset or "tiny")))
    if config_file:
        data = _deep_merge(data, read_config_file(config_file))
    for assignment in sets:
        data = apply_set(data, assignment)
    for name, value in (flags or {}).items():
        if value is not None:
            section, key = FLAG_KEYS[name].split(".")
            data = _deep_merge(data, {section: {key: value}})
    config = PairTrainingConfig.from_dict(data)
    if validate:
        validate_config(config)
    return config


def validate_config(c: PairTrainingConfig) -> None:
    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    need(c.data.path, "no training data: give --data (a folder of page folders, a .jsonl/.csv manifest or tar shards)")
    need(c.data.pairing in ("pairs", "reconstruct"), f"data.pairing must be 'pairs' or 'reconstruct'; got '{c.data.pairing}'")
    need(c.data.crop in ("random", "center"), f"data.crop must be 'random' or 'center'; got '{c.data.crop}'")
    need(c.model.encoder or c.data.cache, "no encoder: give --encoder FILE (from `semantica encoder export`) or --cache DIR")
    need(c.train.max_steps >= 1 and c.train.batch_size >= 1 and c.train.grad_accum >= 1,
         "train.max_steps, train.batch_size and train.grad_accum must be at least 1")
    need(c.train.mixed_precision in ("auto", "no", "bf16", "fp16", "fp32"),
         f"train.mixed_precision must be auto, bf16, fp16 or fp32 (no); got '{c.train.mixed_precision}'")
    need(c.optim.schedule in ("constant", "cosine"), f"optim.schedule must be constant or cosine")
    need(0.0 <= c.ema.decay < 1.0, "ema.decay must be in [0, 1)")
    need(c.data.pairs_per_page >= 1 and c.data.num_workers >= 0 and c.data.holdout_pages >= 0,
         "data.pairs_per_page must be >= 1, data.num_workers and data.holdout_pages >= 0")
    lo, hi = c.data.filter_min_similarity, c.data.filter_max_similarity
    need(lo is None or hi is None or lo < hi, f"data.filter_min_similarity ({lo}) must be below filter_max_similarity ({hi})")


# ----------------------------------------------------------------------------------------------------------------
# Model pieces


class PairLoss(nn.Module):
    """The training forward as a module, so DDP/FSDP wrap it (they only see `forward`) and autocast applies.

    `keep` marks rows kept by on-the-fly pair filtering; when no row is kept the loss of all rows times zero keeps
    every process's backward identical (DDP needs every rank to reduce the same gradients)."""

    def __init__(self, denoiser, cond_drop_prob: float, encoder_id: str):
        super().__init__()
        self.denoiser = denoiser
        self.cond_drop_prob = cond_drop_prob
        self.encoder_id = encoder_id

    def forward(self, x0, tokens, pooled, generator=None, keep=None):
        from semantica_core.embeds import Embeds

        scale = 1.0
        if keep is not None:
            if bool(keep.any()):
                x0, tokens, pooled = x0[keep], tokens[keep], pooled[keep]
            else:
                scale = 0.0
        embeds = Embeds(tokens, pooled, self.encoder_id)
        return self.denoiser.loss(x0, embeds, cond_drop_prob=self.cond_drop_prob, generator=generator) * scale


class EMA:
    """Exponential moving average of the parameters this process holds: the whole network under DDP, its shard
    under FSDP (the average is elementwise, so shards average independently). `applied()` swaps the average in for
    a while, e.g. to gather a full EMA state dict through accelerate."""

    def __init__(self, params, decay: float, warmup: bool):
        self.params = list(params)
        self.decay, self.warmup = decay, warmup
        self.shadow = [p.detach().clone().float() for p in self.params]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.decay_at(step))

    @contextlib.contextmanager
    def applied(self):
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def local_state(self) -> dict:
        return {str(i): t.detach().cpu().contiguous() for i, t in enumerate(self.shadow)}

    def load_local_state(self, state: dict, where: str) -> None:
        if len(state) != len(self.shadow) or any(state[str(i)].shape != t.shape for i, t in enumerate(self.shadow)):
            raise ConfigError(f"{where} does not match this run's parameters (another model or FSDP layout)")
        for i, t in enumerate(self.shadow):
            t.copy_(state[str(i)])


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Multiplier of optim.lr at optimizer step `step` (0-based): linear warmup, then constant or cosine."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "cosine":
        span = max(1, max_steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def parameter_groups(network: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in network.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not name.startswith("null_") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model_configs(config: PairTrainingConfig, token_dim: int, pooled_dim: int):
    """(network config, diffusion config): the presets with the config's overrides applied."""
    from semantica_core.diffusion import DiffusionConfig
    from semantica_core.networks import UNetConfig
    from semantica_core.presets import network_preset

    from training.presets import default_diffusion_config

    try:
        net = network_preset(config.model.preset, token_dim, pooled_dim)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"model.preset: {error}") from None
    net_dict = net.to_dict() if hasattr(net, "to_dict") else dict(net)
    overrides = dict(config.model.network)
    overrides["gradient_checkpointing"] = bool(config.train.gradient_checkpointing)
    try:
        net = UNetConfig.from_dict({**net_dict, **overrides})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.network: {error}") from None
    diffusion = default_diffusion_config(config.model.preset, resolution=net.resolution)
    try:
        diffusion = DiffusionConfig.from_dict(_deep_merge(diffusion.to_dict(), dict(config.model.diffusion)))
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model.diffusion: {error}") from None
    return net, diffusion


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints of the training state


def checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
    """Finished training-state checkpoints (their trainer_state.json, written last, exists), oldest first."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = CHECKPOINT_NAME.match(name)
        if match and os.path.isfile(os.path.join(root, name, "trainer_state.json")):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def check_checkpoint(path: str, pickled_ok: bool = False) -> dict:
    """The trainer state of a complete, readable training checkpoint; ConfigError saying what is wrong otherwise.

    Every file is checked without loading tensors: JSON that parses, safetensors headers whose sizes match the
    files (a truncated file fails), and the files each process wrote."""
    from semantica_core.checkpoint import CheckpointError, read_safetensors_header

    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        if state.get("format") is None:
            if not pickled_ok:
                raise ConfigError(
                    "written by an older version in accelerate's pickled format (optimizer.bin, random_states_*.pkl), "
                    "which is never unpickled here; its weights are in the run's model.safetensors export"
                )
            return state
        if state["format"] != STATE_FORMAT:
            raise ConfigError(f"training-state format {state['format']} (this version reads {STATE_FORMAT})")
        if state.get("state") == "accelerate":
            if not pickled_ok:
                raise ConfigError("saved in accelerate's pickled FSDP format: resume it with --fsdp-pickled-state")
            return state
        files = ["model.safetensors", "optimizer.safetensors", "config.json"]
        for rank in range(int(state["world_size"])):
            files += [f"ema-{rank}.safetensors", f"rng-{rank}.safetensors", f"data-{rank}.json"]
        for name in files:
            file = os.path.join(path, name)
            if name.endswith(".json"):
                with open(file, encoding="utf-8") as f:
                    json.load(f)
            else:
                read_safetensors_header(file, "training-state file")
        return state
    except (OSError, ValueError, KeyError, TypeError, CheckpointError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"incomplete or corrupt ({error})") from None


def find_resume_dir(resume: str, output_dir: str, log=print, pickled_ok: bool = False) -> Optional[str]:
    """`latest` -> the newest usable checkpoint of output_dir (None when there is none; corrupt ones are skipped
    with a message); else a checkpoint folder, or an output folder whose newest usable checkpoint is taken."""
    if resume != "latest" and os.path.isfile(os.path.join(resume, "trainer_state.json")):
        try:
            check_checkpoint(resume, pickled_ok)
        except ConfigError as error:
            raise ConfigError(f"--resume {resume}: the checkpoint is {error}") from None
        return resume
    folder = output_dir if resume == "latest" else resume
    found = checkpoint_dirs(folder)
    if not found:
        if resume == "latest":
            return None
        raise ConfigError(f"--resume {resume}: no training checkpoint there (expected checkpoints/step-N/)")
    problems = []
    for _, path in reversed(found):
        try:
            check_checkpoint(path, pickled_ok)
            return path
        except ConfigError as error:
            log(f"[train] skipping checkpoint {path}: {error}")
            problems.append(f"{path}: {error}")
    raise ConfigError(
        f"no usable training checkpoint in {folder}/checkpoints ({'; '.join(problems)}); delete them to start over, "
        f"or resume from another folder"
    )


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("network", "diffusion"):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_conflicts(stored: dict, new: dict) -> list[str]:
    """The keys where a resumed run's config contradicts the stored one, as `key: new (stored: old)`."""
    a, b = _flatten(stored), _flatten(new)
    conflicts = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not key.startswith(FREE_ON_RESUME):
            conflicts.append(f"{key}: {b.get(key)!r} (stored: {a.get(key)!r})")
    return conflicts


def _write_json(path: str, data) -> None:
    from semantica_core.atomic import write_json_atomic

    write_json_atomic(path, data)


# Locks held by this process, by folder: a run's lock lives as long as its process (see lock_output_dir).
_LOCKS: dict[str, int] = {}


def lock_output_dir(output_dir: str) -> None:
    """Takes output_dir/train.lock for this process, or raises ConfigError naming the run that holds it.

    An flock: the kernel drops it when the process ends however it ends (SIGKILL too), so there is no stale lock to
    clean up. Only where fcntl exists (not on Windows)."""
    try:
        import fcntl
    except ImportError:
        return
    key = os.path.realpath(output_dir)
    if key in _LOCKS:
        return
    os.makedirs(output_dir, exist_ok=True)
    fd = os.open(os.path.join(output_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        raise ConfigError(
            f"{output_dir} is in use by another training run (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to end or stop it, or "
            f"give another --output-dir"
        ) from None
    import socket

    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    _LOCKS[key] = fd


def unlock_output_dir(output_dir: str) -> None:
    fd = _LOCKS.pop(os.path.realpath(output_dir), None)
    if fd is not None:
        os.close(fd)


# -- the training state as safetensors + JSON


def optimizer_state(optimizer) -> tuple[dict, dict]:
    """(tensors, metadata) of an optimizer's state dict: tensors `<param index>.<name>`, the rest as JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            (tensors if torch.is_tensor(value) else scalars)[f"{index}.{name}"] = value
    return tensors, {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}


def load_optimizer_state(optimizer, tensors: dict, metadata: dict) -> None:
    state: dict = {}
    for key, value in list(tensors.items()) + list(json.loads(metadata["scalars"]).items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})


def rng_state(generator: torch.Generator, device: torch.device) -> tuple[dict, dict]:
    """Every random stream a step can draw from: torch's (CPU and this CUDA device), numpy's, Python's, and the
    training generator (noise, noise levels, condition dropout)."""
    import random

    import numpy as np

    tensors = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    metadata = {"numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
                "python": json.dumps(random.getstate())}
    return tensors, metadata


def load_rng_state(generator: torch.Generator, device: torch.device, tensors: dict, metadata: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["torch"])
    generator.set_state(tensors["generator"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)
    kind, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------------------------------------------
# Training


def _log_factory(is_main: bool, output_dir: str):
    log_path = os.path.join(output_dir, "train.log")

    def log(message: str) -> None:
        if not is_main:
            return
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(message + "\n")

    return log


def pick_holdout(source, count: int, min_image_size: int) -> list[tuple[str, str, Any]]:
    """The first `count` pages (in source order) with a readable image: (page key, image id, PIL image)."""
    from training.data import BadImage, decode_image

    picked = []
    if count <= 0:
        return picked
    for page in source.iter_pages():
        for image in page.images:
            try:
                picked.append((page.key, image.id, decode_image(image.read(), min_image_size)))
                break
            except BadImage:
                continue
        if len(picked) >= count:
            break
    return picked


def _accelerate_precision(setting: str, cpu: bool) -> Optional[str]:
    """train.mixed_precision in accelerate's words; None lets `accelerate launch`'s flag or config file decide."""
    from semantica_core.precision import accelerate_mixed_precision

    if setting == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):  # set by accelerate launch from its flag or config
            return None
        device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
        return accelerate_mixed_precision("auto", device)
    return "no" if setting == "fp32" else setting


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or bool(mps and mps.is_available())


def train(config: PairTrainingConfig, resume: Optional[str] = None) -> dict:
    """Runs (or continues) a training run; returns the summary (also written to output_dir/summary.json).

    resume: "latest" (the newest usable checkpoint of output_dir, if any), a checkpoint folder or an output folder.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object, set_seed

    from semantica_core.atomic import atomic_path, fsync_dir
    from semantica_core.checkpoint import (
        SemanticaModel, load_safetensors_tensors, read_safetensors_header, save_checkpoint, write_safetensors_atomic,
    )
    from semantica_core.memory import check_fits, training_bytes
    from semantica_core.diffusion import Denoiser
    from semantica_core.encoders import load_encoder
    from semantica_core.precision import Precision
    from semantica_core.networks import PairConditionedUNet
    from training.data import (
        DataError, DataPosition, DataStats, EmbedCache, PairDataset, condition_input, encoder_info, fit_square,
        make_loader, open_source, pair_verdict,
    )

    c = config
    out = c.train.output_dir
    accelerator = Accelerator(
        cpu=c.train.cpu or not _has_accelerator(),  # without it accelerate never starts CPU process groups
        mixed_precision=_accelerate_precision(c.train.mixed_precision, c.train.cpu),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    precision = accelerator.mixed_precision  # "no", "bf16" or "fp16", once accelerate has resolved "auto"
    is_main = accelerator.is_main_process
    device = accelerator.device
    pickled_state = accelerator.distributed_type == DistributedType.FSDP
    if pickled_state and not c.train.fsdp_pickled_state:
        raise ConfigError(
            "under FSDP the sharded optimizer state can only be saved in accelerate's own format, which pickles "
            "(optimizer.bin, random_states_*.pkl); pass --fsdp-pickled-state to train with it, or train with DDP "
            "(plain `accelerate launch`), whose state is saved as safetensors"
        )
    if is_main:
        lock_output_dir(out)  # first: nothing in the folder is touched while another run owns it
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        os.makedirs(os.path.join(out, "samples"), exist_ok=True)
        for name in os.listdir(os.path.join(out, "checkpoints")):
            if name.startswith(".tmp-"):  # left by a run killed while saving
                shutil.rmtree(os.path.join(out, "checkpoints", name), ignore_errors=True)
    accelerator.wait_for_everyone()
    log = _log_factory(is_main, out)

    resume_dir = find_resume_dir(resume, out, log, pickled_state) if resume else None
    if resume and resume_dir is None:
        log(f"[train] --resume: no checkpoint in {out}/checkpoints yet, starting from step 0")
    set_seed(c.train.seed)  # same initial weights on every process

    # -- condition: encoder and/or cache ------------------------------------------------------------------------
    cache = EmbedCache(c.data.cache) if c.data.cache else None
    encoder = None
    if c.model.encoder:
        enc_dtype = None
        if device.type == "cuda" and precision != "no":
            enc_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        encoder = load_encoder(c.model.encoder, device=device, dtype=enc_dtype)
    enc_info = encoder_info(encoder) if encoder is not None else {k: cache.info[k] for k in ("encoder_id", "token_dim", "pooled_dim", "num_tokens")}
    if cache is not None:
        if encoder is not None and cache.info["encoder_id"] != encoder.encoder_id:
            raise ConfigError(
                f"the cache {c.data.cache} was made with encoder '{cache.info['encoder_id']}' but --encoder is "
                f"'{encoder.encoder_id}': rebuild the cache with `semantica embed --encoder {c.model.encoder}`"
            )
        if cache.missing_shards:
            log(f"[data] warning: the cache lacks shard(s) {cache.missing_shards}; their images are skipped")

    # -- model -----------------------------------------------------------------------------------------------------
    net_cfg, diff_cfg = build_model_configs(c, enc_info["token_dim"], enc_info["pooled_dim"])
    network = PairConditionedUNet(net_cfg)
    check_fits(
        training_bytes(network, c.train.batch_size, net_cfg.resolution, net_cfg.resolution,
                       c.train.gradient_checkpointing), device,
        f"training {c.model.preset} at {net_cfg.resolution} px in batches of {c.train.batch_size} per process",
        "lower --batch-size (a higher --grad-accum keeps the effective batch) or pass --gradient-checkpointing",
    )
    # bf16: accelerate autocasts the forward; channels-last too (not under FSDP, which flattens the weights). The
    # weights, AdamW state and EMA stay float32.
    bf16 = precision == "bf16"
    net_precision = Precision(device.type, torch.bfloat16 if bf16 else None,
                              bf16 and accelerator.distributed_type != DistributedType.FSDP)
    net_precision.prepare(network)  # before accelerate wraps it
    denoiser = Denoiser(network, diff_cfg, net_precision)
    if c.train.compile:
        network.compile()  # in place: state_dict keys stay those of the plain network
    loss_module = PairLoss(denoiser, net_cfg.cond_drop_prob, enc_info["encoder_id"])
    optimizer = torch.optim.AdamW(
        parameter_groups(network, c.optim.weight_decay), lr=c.optim.lr, betas=tuple(c.optim.betas), eps=c.optim.eps
    )
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    params = [p for p in loss_module.parameters() if p.requires_grad]  # as prepared (FSDP: this process's shards)
    ema = EMA(params, c.ema.decay, c.ema.warmup)
    sample_network = None
    if is_main:
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten; it must not move the RNG
            sample_network = PairConditionedUNet(net_cfg).eval().requires_grad_(False)
    generator = torch.Generator(device=device)
    generator.manual_seed(c.train.seed * 1_000_003 + rank)
    num_params = sum(p.numel() for p in network.parameters())

    # -- data ------------------------------------------------------------------------------------------------------
    source = open_source(c.data.path, c.data.format, c.data.tar_page_from)
    holdout = pick_holdout(source, max(c.data.holdout_pages, 0), c.data.min_image_size)
    sample_conditions = holdout[: c.sample.num_conditions]
    if source.kind == "pages" and len(holdout) * 2 >= source.num_units:
        log(f"[data] warning: only {source.num_units} pages; data.holdout_pages={c.data.holdout_pages} would hold out "
            f"too many, so no page is held out (the sample grids condition on training pages)")
        holdout = []
    if not sample_conditions and c.sample.num_conditions > 0:
        sample_conditions = pick_holdout(source, c.sample.num_conditions, c.data.min_image_size)
    cond_size, cond_crop = condition_input(encoder) if encoder is not None else (None, "center")
    dataset = PairDataset(
        source,
        resolution=net_cfg.resolution,
        pairing=c.data.pairing,
        cond_size=None if cache is not None else cond_size,
        cond_crop=cond_crop,
        cache=cache,
        pairs_per_page=c.data.pairs_per_page,
        min_image_size=c.data.min_image_size,
        crop=c.data.crop,
        flip=c.data.flip,
        filter_min_similarity=c.data.filter_min_similarity,
        filter_max_similarity=c.data.filter_max_similarity,
        seed=c.train.seed,
        rank=rank,
        world_size=world,
        exclude_pages=[key for key, _, _ in holdout],
    )
    filter_on_the_fly = cache is None and c.data.pairing == "pairs" and (
        c.data.filter_min_similarity is not None or c.data.filter_max_similarity is not None
    )

    # -- resume ----------------------------------------------------------------------------------------------------
    step, images_seen, elapsed_before = 0, 0, 0.0
    data_state = None
    if resume_dir:
        with open(os.path.join(resume_dir, "trainer_state.json"), encoding="utf-8") as f:
            trainer_state = json.load(f)
        step, images_seen = trainer_state["step"], trainer_state["images_seen"]
        elapsed_before = trainer_state.get("seconds", 0.0)

        def per_rank(name: str) -> str:  # fewer processes before: under DDP every process holds the same state
            path = os.path.join(resume_dir, name.format(rank=rank))
            return path if os.path.isfile(path) else os.path.join(resume_dir, name.format(rank=0))

        if pickled_state:
            accelerator.load_state(resume_dir)
        else:
            tensors = load_safetensors_tensors(os.path.join(resume_dir, "model.safetensors"), what="training state")
            accelerator.unwrap_model(loss_module).denoiser.network.load_state_dict(tensors)
            path = os.path.join(resume_dir, "optimizer.safetensors")
            load_optimizer_state(optimizer, load_safetensors_tensors(path, what="training state"),
                                 read_safetensors_header(path, "training state")[1])
            if accelerator.scaler is not None and trainer_state.get("scaler"):
                accelerator.scaler.load_state_dict(trainer_state["scaler"])
            path = per_rank("rng-{rank}.safetensors")
            load_rng_state(generator, device, load_safetensors_tensors(path, what="training state"),
                           read_safetensors_header(path, "training state")[1])
        ema_path = per_rank("ema-{rank}.safetensors")
        ema.load_local_state(load_safetensors_tensors(ema_path, what="training state"), ema_path)
        data_path = os.path.join(resume_dir, f"data-{rank}.json")
        if os.path.isfile(data_path):
            with open(data_path, encoding="utf-8") as f:
                data_state = json.load(f)
        log(f"[train] resumed from {resume_dir} at step {step}")
    start_step = step
    position = DataPosition(world, c.data.num_workers, data_state)
    dataset.set_resume_state(data_state, c.data.num_workers, log=log)
    loader = make_loader(dataset, c.train.batch_size, c.data.num_workers)

    if is_main:
        _write_json(os.path.join(out, "config.json"), c.to_dict())
    log(
        f"[train] {num_params / 1e6:.2f}M parameters, preset {c.model.preset}, {net_cfg.resolution}px, "
        f"{world} process(es) on {device.type}, batch {c.train.batch_size} x {c.train.grad_accum} accumulation x "
        f"{world} = {c.train.batch_size * c.train.grad_accum * world}, mixed precision {precision}"
    )
    log(
        f"[data] {source.description}: {source.num_units} unit(s); pairing {c.data.pairing}; condition from "
        f"{'cache ' + c.data.cache if cache is not None else 'encoder ' + enc_info['encoder_id'] + ' on the fly'}; "
        f"{len(holdout)} page(s) held out"
    )

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(out, "tensorboard"))

    # -- helpers ---------------------------------------------------------------------------------------------------
    def condition_of(batch):
        """(tokens, pooled, keep) on the device; keep is None unless pairs are filtered on the fly."""
        if cache is not None:
            return batch["tokens"].to(device).float(), batch["pooled"].to(device).float(), None
        cond = encoder(batch["cond"].to(device, non_blocking=True))
        keep = None
        if filter_on_the_fly:
            target01 = batch["target"].to(device).add(1).div(2)
            target_pooled = encoder(target01).pooled
            sims = torch.nn.functional.cosine_similarity(cond.pooled, target_pooled, dim=1).tolist()
            verdicts = [pair_verdict(s, c.data.filter_min_similarity, c.data.filter_max_similarity) for s in sims]
            for verdict in verdicts:
                if verdict:
                    position.stats.add(verdict)
                    position.stats.add("pairs_used", -1)
            keep = torch.tensor([v is None for v in verdicts], device=device)
        return cond.tokens, cond.pooled, keep

    def network_state(use_ema: bool) -> dict:
        """The network's full state dict (raw or EMA weights); every process takes part (FSDP gathers)."""
        with ema.applied() if use_ema else contextlib.nullcontext():
            state = accelerator.get_state_dict(loss_module)
            prefix = "denoiser.network."
            # Cloned inside the swap: without FSDP the state dict aliases the live parameters.
            return {k[len(prefix):]: v.detach().to("cpu", copy=True) for k, v in (state or {}).items()
                    if k.startswith(prefix)}

    def sample_grid(at_step: int) -> None:
        if not sample_conditions or c.sample.per_condition < 1:
            return
        ema_state = network_state(use_ema=True)
        if not is_main:
            return
        sample_network.load_state_dict(ema_state)
        sample_network.to(device)
        from PIL import Image
        from torchvision.utils import make_grid

        from semantica_core.embeds import Embeds
        from semantica_core.pipeline import sample_variations

        if cache is not None:
            rows = [cache.get(image_id) for _, image_id, _ in sample_conditions if image_id in cache]
            if not rows:
                return
            embeds = Embeds(torch.stack([r[0] for r in rows]).float(), torch.stack([r[1] for r in rows]).float(),
                            enc_info["encoder_id"])
            shown = [img for _, image_id, img in sample_conditions if image_id in cache]
        else:
            pixels = torch.stack([fit_square(img, cond_size, cond_crop) for _, _, img in sample_conditions])
            embeds = encoder(pixels.to(device))
            shown = [img for _, _, img in sample_conditions]
        model = SemanticaModel(
            network=sample_network, denoiser=Denoiser(sample_network, diff_cfg, net_precision),
            kind="pair_conditioned",
            network_config=net_cfg.to_dict(), diffusion_config=diff_cfg.to_dict(), encoder_info=enc_info,
            resolution=net_cfg.resolution, channels=net_cfg.out_channels, path="the training EMA", weights="ema",
        )
        images = sample_variations(
            model, embeds.to(device=device, dtype=torch.float32), seed=c.sample.seed, count=c.sample.per_condition,
            steps=c.sample.steps, guidance=c.sample.guidance, sampler=c.sample.sampler, spacing=c.sample.spacing,
            device=device,
        ).cpu()
        k, r = c.sample.per_condition, net_cfg.resolution
        tiles = []
        for i, img in enumerate(shown):
            tiles.append(fit_square(img, r, "center"))
            tiles.extend(images[i * k:(i + 1) * k])
        grid = make_grid(torch.stack(tiles), nrow=k + 1, padding=2, pad_value=1.0)
        path = os.path.join(out, "samples", f"step-{at_step:08d}.png")
        array = grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
        writer.add_image("samples", grid, at_step)
        log(f"[train] step {at_step}: sample grid {path} (first column: the condition)")

    def save_training_state(at_step: int, seconds: float) -> None:
        """The whole training state into checkpoints/step-N, through a temporary folder renamed when complete: a
        kill or a full disk leaves the previous checkpoints as they were."""
        root = os.path.join(out, "checkpoints")
        final = os.path.join(root, f"step-{at_step:08d}")
        tmp = os.path.join(root, f".tmp-step-{at_step:08d}")
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        try:
            if pickled_state:
                accelerator.save_state(tmp)
            else:
                weights = network_state(use_ema=False)  # every process takes part (FSDP would gather)
                if is_main:
                    write_safetensors_atomic(os.path.join(tmp, "model.safetensors"), weights, {})
                    tensors, metadata = optimizer_state(optimizer)  # DDP: the same on every process
                    write_safetensors_atomic(os.path.join(tmp, "optimizer.safetensors"), tensors, metadata)
                tensors, metadata = rng_state(generator, device)
                write_safetensors_atomic(os.path.join(tmp, f"rng-{rank}.safetensors"), tensors, metadata)
            write_safetensors_atomic(os.path.join(tmp, f"ema-{rank}.safetensors"), ema.local_state(), {})
            _write_json(os.path.join(tmp, f"data-{rank}.json"), position.state())
            accelerator.wait_for_everyone()
            if is_main:
                _write_json(os.path.join(tmp, "config.json"), c.to_dict())
                scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                _write_json(os.path.join(tmp, "trainer_state.json"), {  # last: it marks the folder complete
                    "format": STATE_FORMAT, "state": "accelerate" if pickled_state else "safetensors",
                    "step": at_step, "images_seen": images_seen, "seconds": seconds, "world_size": world,
                    "scaler": scaler,
                })
                fsync_dir(tmp)
                if os.path.isdir(final):  # a checkpoint of this step from an earlier attempt
                    shutil.rmtree(final)
                os.replace(tmp, final)
                fsync_dir(root)
        except BaseException:
            if is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if is_main:
            for _, old in checkpoint_dirs(out)[: -max(c.train.keep_checkpoints, 1)]:
                shutil.rmtree(old, ignore_errors=True)
            log(f"[train] step {at_step}: checkpoint {final}")
        accelerator.wait_for_everyone()

    # -- loop ------------------------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(total=c.train.max_steps, initial=step, disable=not is_main, desc="train pairs", unit="step",
               dynamic_ncols=True, mininterval=1.0)
    network.train()
    data_iter = iter(loader)
    started = time.time()
    window_start, window_images = time.time(), 0
    last_loss, last_grad_norm = float("nan"), float("nan")
    max_norm = c.optim.grad_clip if c.optim.grad_clip > 0 else float("inf")
    while step < c.train.max_steps:
        loss_total = torch.zeros((), device=device)
        for micro in range(c.train.grad_accum):
            batch = {"empty": True}
            while batch.get("empty"):  # an empty batch only carries the counts of a worker that stopped
                try:
                    batch = next(data_iter)
                except StopIteration:
                    raise DataError(
                        f"process {rank}: the data gave no usable pair in a whole pass over this process's share "
                        f"of {source.description}. What was read:\n{position.stats.report()}"
                    ) from None
                position.update(batch)
            target = batch["target"].to(device, non_blocking=True)
            tokens, pooled, keep = condition_of(batch)
            sync = contextlib.nullcontext() if micro == c.train.grad_accum - 1 else accelerator.no_sync(loss_module)
            with sync:
                loss = loss_module(target, tokens, pooled, generator, keep)
                accelerator.backward(loss / c.train.grad_accum)
            loss_total += loss.detach() / c.train.grad_accum
            window_images += target.shape[0]
        grad_norm = accelerator.clip_grad_norm_(params, max_norm)
        lr = c.optim.lr * lr_factor(step, c.optim, c.train.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        images_seen += c.train.batch_size * c.train.grad_accum * world
        ema.update(step)
        bar.update(1)

        if step % max(c.train.log_every, 1) == 0 or step == c.train.max_steps:
            mean_loss = accelerator.reduce(loss_total, "mean").item()
            window_all = accelerator.reduce(torch.tensor(float(window_images), device=device), "sum").item()
            seconds = max(time.time() - window_start, 1e-9)
            last_loss = mean_loss
            last_grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"the loss is {mean_loss} at step {step}: lower optim.lr, keep optim.grad_clip > 0, or use "
                    f"bf16 instead of fp16; resume from the last checkpoint with --resume"
                )
            if writer is not None:
                writer.add_scalar("train/loss", mean_loss, step)
                writer.add_scalar("train/learning_rate", lr, step)
                writer.add_scalar("train/images_per_second", window_all / seconds, step)
                writer.add_scalar("train/grad_norm", last_grad_norm, step)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{window_all / seconds:.1f}")
            window_start, window_images = time.time(), 0
        if c.train.checkpoint_every > 0 and step % c.train.checkpoint_every == 0 and step < c.train.max_steps:
            save_training_state(step, elapsed_before + time.time() - started)
        if c.sample.every > 0 and step % c.sample.every == 0 and step < c.train.max_steps:
            sample_grid(step)
    bar.close()
    seconds = elapsed_before + time.time() - started
    if start_step < step or not checkpoint_dirs(out) or checkpoint_dirs(out)[-1][0] != step:
        save_training_state(step, seconds)
    sample_grid(step)

    # -- export and summary ----------------------------------------------------------------------------------------
    all_stats = gather_object([position.stats.to_dict()])
    stats = DataStats.merged(all_stats)
    raw, ema_state = network_state(use_ema=False), network_state(use_ema=True)
    summary = None
    if is_main:
        export_path = os.path.join(out, "model.safetensors")
        export_cfg = dataclasses.replace(net_cfg, gradient_checkpointing=False)
        save_checkpoint(
            export_path,
            kind="pair_conditioned",
            network_config=export_cfg,
            diffusion_config=diff_cfg,
            state_dict=raw,
            ema_state_dict=ema_state,
            encoder_info=enc_info,
            training_info={
                "steps": step, "images_seen": images_seen, "resolution": net_cfg.resolution,
                "preset": c.model.preset, "pairing": c.data.pairing, "data": c.data.path,
                "ema_decay": c.ema.decay,
            },
        )
        summary = {
            "steps": step,
            "start_step": start_step,
            "resumed_from": resume_dir,
            "processes": world,
            "images_seen": images_seen,
            "seconds": round(seconds, 2),
            "final_loss": last_loss,
            "final_grad_norm": last_grad_norm,
            "export": export_path,
            "data": stats.to_dict(),
        }
        _write_json(os.path.join(out, "summary.json"), summary)
        writer.close()
        log(f"[train] done: {step} steps in {seconds:.1f} s, final loss {last_loss:.4f}; exported {export_path}")
        log("[data] summary:\n" + stats.report())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if is_main:
        unlock_output_dir(out)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="folder of page folders, .jsonl/.csv manifest, or tar shards")
    parser.add_argument("--data-format", choices=["auto", "folder", "jsonl", "csv", "tar"], help="default: from the path")
    parser.add_argument("--encoder", help="frozen encoder file (semantica encoder export)")
    parser.add_argument("--cache", help="embedding cache folder from `semantica embed` (then --encoder is optional)")
    parser.add_argument("--preset", help=f"training preset: {', '.join(preset_names())} (default tiny)")
    parser.add_argument("--config", help="TOML or YAML config file (sections data, model, optim, ema, train, sample)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=2e-4 --set model.network.base_channels=64")
    parser.add_argument("--pairing", choices=["pairs", "reconstruct"], help="reconstruct = the paper's baseline")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--output-dir")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--precision", "--mixed-precision", dest="mixed_precision",
                        choices=["auto", "bf16", "fp16", "fp32", "no"],
                        help="default auto: accelerate launch's --mixed_precision or config file, else bf16 where "
                             "the CPU or GPU has native bf16 (SEMANTICA_PRECISION=fp32 switches it off); no = fp32")
    parser.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even with a GPU present")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--num-workers", type=int, help="dataloader workers per process")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--sample-every", type=int)
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint in --output-dir (or the one given), with its stored "
                        "config")
    parser.add_argument("--override", action="store_true",
                        help="with --resume: let the flags, --set and --config change the stored config")
    parser.add_argument("--fsdp-pickled-state", action="store_true", default=None,
                        help="under FSDP only: save and resume the sharded state in accelerate's pickled format "
                        "(FSDP runs stop without it; DDP and single-process runs never pickle)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def resolve_resume(args, flags: dict, first: PairTrainingConfig) -> tuple[PairTrainingConfig, Optional[str]]:
    """The config and checkpoint of `--resume`: the config stored with the checkpoint, changed only by what is given
    explicitly (`first` is the config the arguments give on their own); a change that contradicts it (other than
    FREE_ON_RESUME) stops unless --override."""
    is_main = int(os.environ.get("RANK", "0")) == 0  # every process reads the same files; one reports
    log = print if is_main else (lambda message: None)
    resume_dir = find_resume_dir(args.resume, first.train.output_dir, log, bool(first.train.fsdp_pickled_state))
    if resume_dir is None:
        log(f"[train] --resume: no checkpoint in {first.train.output_dir}/checkpoints yet, starting from step 0")
        return first, None
    stored_path = os.path.join(resume_dir, "config.json")
    if not os.path.isfile(stored_path):  # an accelerate-format checkpoint: the run folder's config
        stored_path = os.path.join(os.path.dirname(os.path.dirname(resume_dir)), "config.json")
    with open(stored_path, encoding="utf-8") as f:
        stored = json.load(f)
    config = resolve_config(args.preset, args.config, args.set, flags, validate=False, base=stored)
    conflicts = config_conflicts(stored, config.to_dict())
    if conflicts and not args.override:
        raise ConfigError(
            f"--resume: the run in {resume_dir} was trained with another config; {'; '.join(conflicts)}. Resume "
            f"without those flags to keep the stored config, or add --override to change it"
        )
    if conflicts:
        log(f"[train] --override: resuming with {'; '.join(conflicts)}")
    return config, resume_dir


def run(args: argparse.Namespace) -> int:
    """`semantica train pairs`; exit status as training/cli.py says (2 with one line for a user's error)."""
    from training.cli import exit_status

    return exit_status(lambda: _run(args), prog="semantica train pairs")


def _run(args: argparse.Namespace) -> int:
    flags = {name: getattr(args, name, None) for name in FLAG_KEYS}
    config, resume = resolve_config(args.preset, args.config, args.set, flags, validate=False), None
    if not args.print_config and int(os.environ.get("RANK", "0")) == 0:
        lock_output_dir(config.train.output_dir)  # before anything slow: a second run stops at once
    if args.resume and not args.print_config:
        config, resume = resolve_resume(args, flags, config)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    validate_config(config)
    train(config, resume=resume)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="semantica train pairs", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
