"""The configuration of `semantica train pairs`: dataclasses, layered as training preset <- --config file <- --set
key=value <- explicit flags, and built by the one builder of semantica_core.config (one unknown-key and type check).

A training preset is a TOML file of this folder's configs/ (pairs-NAME.toml, `--preset NAME`); it names the model
preset (`model.preset`: the network of semantica_core.presets and its diffusion defaults). `semantica train pairs
--print-config` lists every key.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Optional

from semantica_core.config import ConfigError, apply_set, deep_merge, from_dict, read_config_file, to_dict
from semantica_core.precision import PRECISIONS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# Keys a resumed run may change without --override: how long, how often it saves, logs and samples, and how it
# loads data; none changes what a step computes.
FREE_ON_RESUME = ("train.max_steps", "train.output", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.log_every", "train.compile", "data.num_workers", "sample.")
# Old key -> (new key, value mapping); read from files, --set and stored configs with a one-line notice.
RENAMED_KEYS = {
    "train.output_dir": ("train.output", lambda v: v),
    "train.mixed_precision": ("train.precision", lambda v: "fp32" if v == "no" else v),
    "train.cpu": ("train.device", lambda v: "cpu" if v in (True, "true") else "auto"),
}


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
    preset: str = "tiny"  # model preset: network (semantica_core.presets.network_preset) and diffusion defaults
    encoder: str = ""  # frozen encoder file (semantica encoder export); optional with a cache
    network: dict = field(default_factory=dict)  # overrides of the network config (UNetConfig fields)
    diffusion: dict = field(default_factory=dict)  # overrides of the diffusion config (DiffusionConfig.to_dict())
    # a pair model file (model.safetensors of an earlier run) whose raw weights the network starts from, with a new
    # optimizer, schedule and EMA; its network, diffusion and encoder must be this run's
    init_from: str = ""


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
    warmup: bool = True  # decay ramps as min(decay, (1 + n) / (10 + n)) at update n (semantica_core.ema)


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-batch; effective batch = batch_size * grad_accum * processes
    grad_accum: int = 1
    seed: int = 0
    output: str = "out/train-pairs"  # the run folder
    device: str = "auto"  # auto | cpu | cuda: cpu trains on the CPU even where an accelerator is present
    # auto = what `accelerate launch --mixed_precision` or its config file says; without either, bf16 where the
    # device has native bf16 (semantica_core.precision, SEMANTICA_PRECISION honoured), else fp32.
    precision: str = "auto"  # auto | bf16 | fp32
    compile: bool = False  # torch.compile the network
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2  # older training-state checkpoints are deleted
    log_every: int = 10
    fsdp_pickled_state: bool = False  # FSDP only: accelerate's own (pickled) state format, see training/run_dir.py


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
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PairTrainingConfig":
        return from_dict(cls, data, "config")


def training_preset_names() -> list[str]:
    return sorted(n[len("pairs-"):-len(".toml")] for n in os.listdir(CONFIG_DIR) if re.match(r"pairs-.+\.toml$", n))


def training_preset_path(name: str) -> str:
    path = os.path.join(CONFIG_DIR, f"pairs-{name}.toml")
    if not os.path.isfile(path):
        raise ConfigError(f"unknown training preset '{name}'; presets: {', '.join(training_preset_names())}")
    return path


def rename_old_keys(data: dict, log=lambda message: print(message, file=sys.stderr)) -> dict:
    """A config dict with the keys of RENAMED_KEYS under their new names."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, (new, convert) in RENAMED_KEYS.items():
        section, key = old.split(".")
        if key in data.get(section, {}):
            value = convert(data[section].pop(key))
            data[section].setdefault(new.split(".")[1], value)
            log(f"[config] {old} is deprecated; use {new}")
    return data


# Explicit flags (argparse dest) -> config keys; they win over --set, the config file and the preset.
FLAG_KEYS = {
    "data": "data.path",
    "data_format": "data.format",
    "cache": "data.cache",
    "pairing": "data.pairing",
    "num_workers": "data.num_workers",
    "encoder": "model.encoder",
    "init_from": "model.init_from",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum",
    "output": "train.output",
    "seed": "train.seed",
    "precision": "train.precision",
    "device": "train.device",
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
    """training preset (default tiny) <- config file <- --set <- flags; `base` (a resumed run's stored config)
    replaces the default preset, so only what is given explicitly changes it."""
    data: dict = dict(base or {})
    if preset or not (config_file or base):
        data = deep_merge(data, read_config_file(training_preset_path(preset or "tiny")))
    if config_file:
        data = deep_merge(data, read_config_file(config_file))
    for assignment in sets:
        data = apply_set(data, assignment)
    data = rename_old_keys(data)
    for name, value in (flags or {}).items():
        if value is not None:
            section, key = FLAG_KEYS[name].split(".")
            data = deep_merge(data, {section: {key: value}})
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
    need(c.train.precision in PRECISIONS,
         f"train.precision must be {', '.join(PRECISIONS)}; got '{c.train.precision}' (fp16: keep auto and start the "
         "run with `accelerate launch --mixed_precision fp16`)")
    need(c.train.device == "auto" or c.train.device.split(":")[0] in ("cpu", "cuda"),
         f"train.device must be auto, cpu or cuda; got '{c.train.device}'")
    need(c.optim.schedule in ("constant", "cosine"), "optim.schedule must be constant or cosine")
    need(0.0 <= c.ema.decay < 1.0, "ema.decay must be in [0, 1)")
    need(c.data.pairs_per_page >= 1 and c.data.num_workers >= 0 and c.data.holdout_pages >= 0,
         "data.pairs_per_page must be >= 1, data.num_workers and data.holdout_pages >= 0")
    lo, hi = c.data.filter_min_similarity, c.data.filter_max_similarity
    need(lo is None or hi is None or lo < hi, f"data.filter_min_similarity ({lo}) must be below filter_max_similarity ({hi})")


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


def build_model_configs(config: PairTrainingConfig, token_dim: int, pooled_dim: int, num_tokens: int = 0):
    """(network config, diffusion config): the model preset with the config's overrides applied; the encoder's
    num_tokens goes into the network config when model.network.token_layout asks for the token grid."""
    from semantica_core.diffusion import DiffusionConfig
    from semantica_core.networks import UNetConfig
    from semantica_core.presets import default_diffusion_config, network_preset

    try:
        net = network_preset(config.model.preset, token_dim, pooled_dim)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"model.preset: {error}") from None
    overrides = {**config.model.network, "gradient_checkpointing": bool(config.train.gradient_checkpointing)}
    if overrides.get("token_layout") and "num_tokens" not in overrides:
        overrides["num_tokens"] = int(num_tokens)
    try:
        net = UNetConfig.from_dict({**net.to_dict(), **overrides})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.network: {error}") from None
    diffusion = default_diffusion_config(config.model.preset, resolution=net.resolution)
    try:
        diffusion = DiffusionConfig.from_dict(deep_merge(diffusion.to_dict(), dict(config.model.diffusion)))
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"model.diffusion: {error}") from None
    return net, diffusion
