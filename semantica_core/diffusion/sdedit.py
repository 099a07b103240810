"""SDEdit (Meng et al., ICLR 2022): re-noise a guide image to an intermediate time t0, then denoise it.

Small t0 keeps the guide, large t0 trusts the model. `repeats` feeds the output back as the next guide (the official
`--sample_step`). With a mask the kept region follows the guide: before every model call it is set to the guide
re-noised to the current sigma with one noise drawn at the start of the pass (as the official code, minus its
off-by-one), and after the last step it is the guide exactly.
"""
from __future__ import annotations

import math

import torch

from .noise import BatchNoise
from .samplers import SAMPLERS, Callback, Model, sample
from .schedules import NoiseSchedule, get_sigmas


def sdedit_sigmas(
    schedule: NoiseSchedule, t0: float, steps: int | None = None, spacing: str = "uniform"
) -> torch.Tensor:
    """The noise levels of one SDEdit pass, from t_to_sigma(t0) down to 0.

    steps None or 0: one step per DDPM timestep below t0 (vp_linear: the exact DDPM levels, as the official SDEdit;
    other kinds: ceil(timesteps * t0) uniform steps). Otherwise `steps` steps with the given spacing.
    """
    t0 = _check_t0(t0)
    if not steps:
        if schedule.kind == "vp_linear":
            return schedule.ddpm_sigmas(t0)
        steps = max(1, math.ceil(schedule.timesteps * t0 - 1e-6))
    return get_sigmas(schedule, steps, spacing, t_start=t0)


def sdedit(
    model: Model,
    guide: torch.Tensor,
    schedule: NoiseSchedule,
    t0: float,
    steps: int | None = None,
    repeats: int = 1,
    mask: torch.Tensor | None = None,
    sampler: str = "ddpm",
    noise: BatchNoise | None = None,
    callback: Callback = None,
    spacing: str = "uniform",
    **sampler_opts,
) -> torch.Tensor:
    """Edits `guide` [B,C,H,W] in [-1, 1]; returns [B,C,H,W].

    model: `model(x, sigma_batch) -> x0` (a closure carrying any condition and guidance scale).
    t0 in (0, 1]: how far to re-noise (schedule time). steps: see `sdedit_sigmas`. repeats: passes, each starting
    from the previous output. mask [B,1,H,W] or broadcastable, ComfyUI's convention: 1 = change, 0 = keep, values
    in between blend with the original guide (also across repeats). noise: the BatchNoise all randomness comes from
    (per image). callback: as the samplers', with i and total counted over all passes. sampler_opts: e.g. eta.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; valid samplers: {', '.join(SAMPLERS)}")
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats}")
    if noise is None:
        raise ValueError("sdedit draws its noise only from `noise`: pass noise=BatchNoise(seeds, device)")
    if guide.ndim != 4:
        raise ValueError(f"guide must be [B,C,H,W], got shape {tuple(guide.shape)}")
    sigmas = sdedit_sigmas(schedule, t0, steps, spacing)
    change = None if mask is None else _prepare_mask(mask, guide)
    steps_per_pass = len(sigmas) - 1
    start_sigma = float(sigmas[0])

    x = guide
    for k in range(int(repeats)):
        fixed_noise = noise.randn_like(guide)  # one draw per pass, shared by the start and the kept region
        x = x + start_sigma * fixed_noise
        step_model, step_callback = model, callback
        if change is not None:
            step_model = _masked_model(model, guide, fixed_noise, change)
        if callback is not None:
            step_callback = _pass_callback(callback, k, steps_per_pass, int(repeats), guide, fixed_noise, change)
        x = sample(sampler, step_model, x, sigmas, noise, step_callback, **sampler_opts)
        if change is not None:
            x = torch.lerp(guide, x, change)  # weight 0 gives the guide bit for bit
    return x


def _masked_model(model: Model, guide, fixed_noise, change) -> Model:
    """Shows the model the kept region as the guide re-noised to sigma; reports the guide there as x0."""

    def masked(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        known = guide + _expand(sigma, x) * fixed_noise
        return torch.lerp(guide, model(torch.lerp(known, x, change), sigma), change)

    return masked


def _pass_callback(callback, k: int, steps_per_pass: int, repeats: int, guide, fixed_noise, change):
    def report(info: dict):
        x = info["x"]
        if change is not None:  # preview what the model sees, not the sampler's unused state in the kept region
            x = torch.lerp(guide + info["sigma"] * fixed_noise, x, change)
        callback({**info, "i": k * steps_per_pass + info["i"], "total": repeats * steps_per_pass, "x": x})

    return report


def _prepare_mask(mask: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    mask = mask.to(device=guide.device, dtype=guide.dtype)
    try:
        shape = torch.broadcast_shapes(mask.shape, guide.shape)
    except RuntimeError:
        shape = None
    if shape != guide.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit the guide {tuple(guide.shape)}: give [B,1,H,W] "
            "(or [1,1,H,W]) at the guide's resolution, 1 where the image may change"
        )
    return mask.clamp(0.0, 1.0)


def _expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _check_t0(t0) -> float:
    try:
        value = float(t0)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"t0 must be in (0, 1] (how far to re-noise the guide along the schedule), got {t0!r}")
    return value
