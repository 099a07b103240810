"""SinDiffusion training: train a patch-level diffusion model on one image and write its checkpoint.

Training follows the official code (arXiv 2211.12445): the whole image with its long side at most 250 px, each batch
bicubically rescaled by U(0.75, 1.25) per axis and snapped to multiples of 4, DDPM's T=1000 linear betas, eps
prediction (v for the tiny preset: see PRESETS), unweighted MSE, uniform timesteps, AdamW, EMA. Unlike it, this runs
in one process on the CPU or one GPU, resumes from a state file, and writes the checkpoint that the samplers
(semantica_core.single_image), the nodes and `sdedit_images` read.

Pure torch: the CLI (`semantica train single`) and the ComfyUI node SinDiffusionTrain both call
`train_single_image`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import train_state
from .checkpoint import CheckpointError, save_checkpoint
from .config import from_dict as config_from_dict, to_dict as config_to_dict
from .diffusion import Denoiser, DiffusionConfig, ScheduleConfig
from .ema import EMA
from .memory import check_fits, training_bytes
from .networks import PatchUNet, PatchUNetConfig
from .precision import PRECISIONS, resolve_precision

# The training presets: network, image size, training length, prediction and learning recipe. "sindiffusion" is the
# paper's: receptive field 101 px (about 40% of a 250 px image), 50k iterations, eps prediction, the config's default
# recipe (constant 5e-4, EMA 0.9999). The tiny one keeps that ratio (45 px of 112) at about a sixteenth of the compute
# per step, for CPUs and tests, and predicts v: GroupNorm hides the global mean of the network's input, so an eps
# model cannot see the mean of the noise it must remove, and its x0 estimate inherits a colour error of about sigma /
# sqrt(H * W) per channel. On small images that randomises the colour of every sample (chelsea at 64 px, 600 steps:
# substitute SIFID 8.0 with eps, 0.43 with v). Its recipe is for runs of minutes: a warm-up to 2e-3 (then with a
# cosine to a tenth over the run) reached at 300 to 1,200 steps a lower SIFID than the constant 5e-4 at every point,
# on two photos never tuned on (README, "Quality per training minute"). Its EMA decay, 0.999 against the paper's
# 0.9999, changes nothing before 9,000 steps: the EMA warm-up caps the decay of update n at (1 + n) / (10 + n), so a
# shorter run averages over about its last tenth whichever decay is set. It keeps the paper's rescale U(0.75, 1.25):
# without it a short run overfits the photo, and a wider U(0.6, 1.4) was no better over three seeds. Its learning rate
# stays at 2e-3 after the warm-up: a cosine to a tenth over the run (the recipe from 2026-12-03 to 2026-12-07) made
# every run's end worse than the same step of a longer run, and a run sized to 10 minutes scored 16 points of mean
# SIFID (ddpm) worse than the constant rate with the same EMA. Progressive size: the first 90 % of its steps rescale
# by U(0.55, 0.85), half the pixels; a run sized to 10 minutes scored better than with the first 56 % small (the
# recipe of a few hours on 2026-12-07), better than the old recipe's 4,000 steps, and better than the smaller
# U(0.45, 0.75) of 2026-12-07 to 2026-12-08, whose samples repeat the photo's parts smaller and closer together
# (three to six eyes on the cat); U(0.35, 0.6) was worse still (README, "Quality per training minute").
PRESETS = {
    "sindiffusion": {"network": PatchUNetConfig().to_dict(), "max_side": 250, "steps": 50_000, "prediction": "eps",
                     "recipe": {}},
    "sindiffusion_tiny": {
        "network": PatchUNetConfig(base_channels=32, channel_mult=(1, 2)).to_dict(),
        "max_side": 112,
        "steps": 4_000,
        "prediction": "v",
        "recipe": {"lr": 2e-3, "warmup_steps": 100, "lr_decay": "constant", "ema_decay": 0.999,
                   "small_fraction": 0.9},
    },
}
LR_DECAYS = ("constant", "cosine")
STATE_SUFFIX = ".train-state"  # no model-file extension, so ComfyUI's model lists never show it


def sindiffusion_diffusion(prediction: str = "eps") -> DiffusionConfig:
    """DDPM's T=1000 linear betas with uniform integer timesteps, as the paper."""
    return DiffusionConfig(schedule=ScheduleConfig(kind="vp_linear", timesteps=1000), prediction=prediction)


@dataclass
class SingleImageTrainConfig:
    """Everything that defines a single-image training run; stored in the state file and the checkpoint."""

    network: dict = field(default_factory=lambda: dict(PRESETS["sindiffusion"]["network"]))
    diffusion: dict = field(default_factory=lambda: sindiffusion_diffusion().to_dict())
    preset: str = "sindiffusion"  # the training preset (PRESETS) it started from; its network is the model preset
    max_side: int = 250  # long side of the training image in pixels (smaller images are not enlarged)
    scale_min: float = 0.75  # each batch is resized by U(scale_min, scale_max) per axis
    scale_max: float = 1.25
    crop: float = 1.0  # < 1: each batch row a random crop of this fraction of the rescaled sides (1: the whole image)
    # Progressive size: the first `small_fraction` of the run's steps rescale by U(small_scale_min, small_scale_max)
    # per axis in place of U(scale_min, scale_max): cheaper steps first, on the learning-rate curve of the whole run.
    small_fraction: float = 0.0
    small_scale_min: float = 0.55
    small_scale_max: float = 0.85
    size_multiple: int = 4  # batch sizes snap down to multiples of this (and of the network's own multiple)
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 0  # the learning rate rises linearly from 0 over these steps
    lr_decay: str = "constant"  # constant | cosine: cosine falls to lr * lr_final over the run's total steps
    lr_final: float = 0.1
    ema_decay: float = 0.9999
    min_snr_gamma: float = 0.0  # > 0: Min-SNR loss weighting (Denoiser.loss); 0: the unweighted MSE
    seed: int = 0
    precision: str = "auto"  # auto | bf16 | fp32: the network's forward (semantica_core.precision)

    def __post_init__(self):
        if self.max_side < 8:
            raise ValueError(f"max_side must be at least 8 px; got {self.max_side}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max; got {self.scale_min}, {self.scale_max}")
        if not 0 < self.crop <= 1:
            raise ValueError(f"crop must be in (0, 1] (1 trains on the whole image); got {self.crop}")
        if not 0 <= self.small_fraction <= 1 or not 0 < self.small_scale_min <= self.small_scale_max:
            raise ValueError(f"need small_fraction in [0, 1] (0: no progressive size) and 0 < small_scale_min <= "
                             f"small_scale_max; got {self.small_fraction}, {self.small_scale_min}, "
                             f"{self.small_scale_max}")
        if self.batch_size < 1 or self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("batch_size must be >= 1, lr > 0 and ema_decay in [0, 1)")
        if self.warmup_steps < 0 or self.lr_decay not in LR_DECAYS or not 0 <= self.lr_final <= 1:
            raise ValueError(f"need warmup_steps >= 0, lr_decay one of {', '.join(LR_DECAYS)} and lr_final in "
                             f"[0, 1]; got {self.warmup_steps}, {self.lr_decay!r}, {self.lr_final}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0 turns the weighting off); got {self.min_snr_gamma}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        PatchUNetConfig.from_dict(self.network)  # fail early on a bad network config
        DiffusionConfig.from_dict(self.diffusion)

    @classmethod
    def from_preset(cls, preset: str = "sindiffusion", prediction: Optional[str] = None, **overrides):
        """A preset's network, size, prediction ("eps", "v" or "x0") and recipe; `overrides` set any field (None
        values are ignored)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}")
        values = {
            "network": dict(PRESETS[preset]["network"]),
            "max_side": PRESETS[preset]["max_side"],
            "preset": preset,
            "diffusion": sindiffusion_diffusion(prediction or PRESETS[preset]["prediction"]).to_dict(),
            **PRESETS[preset]["recipe"],
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SingleImageTrainConfig":
        data = dict(data)
        if "mixed_precision" in data:  # state files before the precision switch: "no" meant float32 everywhere
            data.setdefault("precision", "fp32" if data.pop("mixed_precision") == "no" else "auto")
        return config_from_dict(cls, data)


# ----------------------------------------------------------------------------------------------------------------
# Data


def prepare_training_image(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """[1,3,H,W] (or [3,H,W]) in [0, 1] -> [1,3,h,w] in [-1, 1] with max(h, w) <= max_side (never enlarged)."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"train on one RGB image [1,3,H,W] in [0, 1]; got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = image.float()
    if size != (height, width):
        image = F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False)
    return image.clamp(0, 1) * 2 - 1


def scale_range(config: SingleImageTrainConfig, step: int, total: int) -> tuple[float, float]:
    """The rescale range of step `step` (0-based) of a run of `total` steps: the small one during the first
    `small_fraction` of the run (progressive size), the paper's after."""
    if step < round(config.small_fraction * total):
        return config.small_scale_min, config.small_scale_max
    return config.scale_min, config.scale_max


def random_rescale(image: torch.Tensor, generator: torch.Generator, scales: tuple[float, float], multiple: int):
    """The paper's augmentation: one bicubic resize of the whole image by U(*scales) per axis, sizes snapped down to
    `multiple` (at least one multiple)."""
    height, width = image.shape[-2:]
    u = torch.rand(2, generator=generator).tolist()
    scales = [scales[0] + (scales[1] - scales[0]) * v for v in u]
    size = (_scaled_side(height, scales[0], multiple), _scaled_side(width, scales[1], multiple))
    out = F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(-1, 1)


def random_crops(image: torch.Tensor, generator: torch.Generator, config: SingleImageTrainConfig, multiple: int):
    """The batch: `config.batch_size` copies of the rescaled image, or with crop < 1 as many crops at random places,
    each side `crop` of the image's, rounded down to `multiple` (at least one)."""
    if config.crop == 1:
        return image.expand(config.batch_size, -1, -1, -1).contiguous()
    height, width = image.shape[-2:]
    crop_height, crop_width = (multiple * max(1, int(side * config.crop) // multiple) for side in (height, width))
    tops = torch.randint(0, height - crop_height + 1, (config.batch_size,), generator=generator).tolist()
    lefts = torch.randint(0, width - crop_width + 1, (config.batch_size,), generator=generator).tolist()
    return torch.cat([image[..., top:top + crop_height, left:left + crop_width] for top, left in zip(tops, lefts)])


def _scaled_side(side: int, scale: float, multiple: int) -> int:
    """One side of a rescaled batch: snapped down to `multiple`, at least one multiple."""
    return max(multiple, multiple * (round(side * scale) // multiple))


# ----------------------------------------------------------------------------------------------------------------
# Training


def learning_rate(config: SingleImageTrainConfig, step: int, total: int) -> float:
    """The learning rate of step `step` (0-based) of a run of `total` steps: linear warm-up, then constant or a
    cosine down to lr * lr_final at the last step. A resumed run with a new total follows the new total's curve."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "constant" or total <= config.warmup_steps + 1:
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / (total - config.warmup_steps - 1))
    return config.lr * (config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class SingleImageTrainState:
    """A training run in progress: the network and its EMA, the optimizer, the step and the random streams."""

    config: SingleImageTrainConfig
    image: torch.Tensor  # the prepared training image [1,3,h,w] in [-1, 1], on the training device
    source_size: tuple  # (width, height) of the image before resizing
    network: PatchUNet
    ema: EMA
    optimizer: torch.optim.Optimizer
    data_generator: torch.Generator  # CPU: the per-batch scales
    noise_generator: torch.Generator  # on the device: timesteps and noise
    step: int = 0

    @property
    def device(self) -> torch.device:
        return self.image.device

    def ema_state_dict(self) -> dict:
        """The network's state dict with the EMA weights (what samplers load)."""
        with self.ema.applied():
            return {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def receptive_field(self) -> int:
        # measured by backpropagation, so also from callers under no_grad / inference_mode (ComfyUI)
        with torch.inference_mode(False), torch.enable_grad():
            return self.network.receptive_field()

    def training_info(self, **extra) -> dict:
        """What the checkpoint records about this run (JSON-safe)."""
        height, width = self.image.shape[-2:]
        info = {
            "method": "sindiffusion",
            "preset": self.config.preset,
            "steps": self.step,
            "source_width": int(self.source_size[0]),
            "source_height": int(self.source_size[1]),
            "train_width": int(width),
            "train_height": int(height),
            "receptive_field": self.receptive_field(),
            "config": self.config.to_dict(),
        }
        info.update(extra)
        return info


def _new_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def init_train_state(image: torch.Tensor, config: SingleImageTrainConfig, device=None) -> SingleImageTrainState:
    """A fresh run on `image` [1,3,H,W] in [0, 1]; the network's initial weights depend only on config.seed."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source_size = (int(image.shape[-1]), int(image.shape[-2]))
    prepared = prepare_training_image(image, config.max_side).to(device)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
        torch.manual_seed(config.seed)
        network = PatchUNet(PatchUNetConfig.from_dict(config.network))
    network.to(device).train()
    ema = EMA(network.named_parameters(), config.ema_decay)
    optimizer = train_state.adamw(network.parameters(), device, lr=config.lr, weight_decay=0.0)
    return SingleImageTrainState(
        config=config,
        image=prepared,
        source_size=source_size,
        network=network,
        ema=ema,
        optimizer=optimizer,
        data_generator=_new_generator(torch.device("cpu"), config.seed),
        noise_generator=_new_generator(device, config.seed + 1),
    )


def train_single_image(
    image: Optional[torch.Tensor],
    config: Optional[SingleImageTrainConfig] = None,
    steps: int = 1000,
    callback: Optional[Callable[[dict], None]] = None,
    state: Optional[SingleImageTrainState] = None,
    device=None,
) -> SingleImageTrainState:
    """Trains until `state.step == steps` (a total, so a resumed run continues to the same end) and returns the state.

    image [1,3,H,W] in [0, 1] (ignored when `state` is given). callback({"step", "total", "loss"}) after every
    step, with `loss` a detached 0-dim tensor on the device (call .item() only when you print it: it syncs the GPU);
    raising from it stops training, and the state stays consistent at the last finished step.
    """
    if state is None:
        if image is None or config is None:
            raise ValueError("train_single_image needs an image and a config, or a state to continue")
        state = init_train_state(image, config, device)
    config, network, device = state.config, state.network, state.device
    # Only the forward runs in bf16: weights, gradients, AdamW state and the EMA (NCHW) stay float32.
    precision = resolve_precision(config.precision, device)
    denoiser = Denoiser(network, DiffusionConfig.from_dict(config.diffusion), precision)
    precision.prepare(network)  # now, not at the first forward: a resumed optimizer state must follow its layout
    train_state.match_parameter_layouts(state.optimizer)
    multiple = math.lcm(config.size_multiple, network.required_multiple())
    height, width = state.image.shape[-2:]
    top_scale = max(config.scale_max, config.small_scale_max if config.small_fraction else 0.0)
    largest = [_scaled_side(side, top_scale, multiple) for side in (height, width)]  # the biggest batch
    check_fits(
        training_bytes(network, config.batch_size, *largest), device,
        f"training on a {width}x{height} image in batches of {config.batch_size}",
        "train at a smaller size (the image's long side) or with a smaller batch",
    )
    network.train()
    while state.step < steps:
        x0 = random_rescale(state.image, state.data_generator, scale_range(config, state.step, steps), multiple)
        x0 = random_crops(x0, state.data_generator, config, multiple)
        loss = denoiser.loss(x0, generator=state.noise_generator, min_snr_gamma=config.min_snr_gamma)
        for group in state.optimizer.param_groups:
            group["lr"] = learning_rate(config, state.step, steps)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.ema.update()
        state.step += 1
        if callback is not None:
            callback({"step": state.step, "total": steps, "loss": loss.detach()})
    network.eval()
    return state


# ----------------------------------------------------------------------------------------------------------------
# Files: the checkpoint (what users share) and the resume state (next to it)


def save_single_image_checkpoint(path, state: SingleImageTrainState, **training_info) -> Path:
    """Writes the run as a `single_image` checkpoint (raw and EMA weights; samplers load the EMA)."""
    return save_checkpoint(
        path,
        kind="single_image",
        network_config=state.config.network,
        diffusion_config=state.config.diffusion,
        state_dict=state.network.state_dict(),
        ema_state_dict=state.ema_state_dict(),
        training_info=state.training_info(**training_info),
    )


def state_path_for(checkpoint_path) -> Path:
    """Where the resume state of a checkpoint lives: next to it, `<name>.train-state`."""
    path = Path(checkpoint_path)
    return path.with_name(path.name + STATE_SUFFIX)


def save_train_state(path, state: SingleImageTrainState) -> Path:
    """Everything needed to continue the run, in semantica_core.train_state's format (atomic; nothing is pickled)."""
    return train_state.save_train_state(
        path, step=state.step, config=state.config.to_dict(), network=state.network.state_dict(), ema=state.ema,
        optimizer=state.optimizer, generators={"data": state.data_generator, "noise": state.noise_generator},
        tensors={"image": state.image}, info={"source_size": list(state.source_size)},
    )


def load_train_state(path, device=None) -> SingleImageTrainState:
    """Rebuilds a run saved by `save_train_state` on `device` (the noise stream restarts if the device type changed)."""
    saved = train_state.read_train_state(path)
    if "image" not in saved.tensors:
        raise CheckpointError(f"{path} is not a single-image training state; delete it or train without --resume")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = init_train_state(torch.zeros(1, 3, 8, 8), SingleImageTrainConfig.from_dict(saved.config), device)
    state.image = saved.tensors["image"].to(device)
    state.source_size = tuple(saved.info["source_size"])
    state.step = saved.step
    saved.load_network(state.network)
    saved.load_ema(state.ema)
    saved.load_optimizer(state.optimizer)
    saved.load_rng({"data": state.data_generator, "noise": state.noise_generator})
    return state
