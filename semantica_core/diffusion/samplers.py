"""Samplers: one plain function per algorithm, all in the sigma form `x = x0 + sigma * eps`.

Every sampler is `sample_<name>(model, x, sigmas, noise=None, callback=None, **opts) -> x` where
`model(x, sigma_batch [B]) -> x0` (a closure over the Denoiser, its condition and guidance), `x` starts at
`sigmas[0]` (for a fresh sample `initial_noise(noise, shape, sigmas[0])`), and `sigmas` is descending, normally
ending with 0 (`schedules.get_sigmas`). Stochastic samplers draw only from `noise` (a BatchNoise, one stream per
image), never from the global RNG. `callback({"i", "total", "x", "sigma", "denoised"})` runs once per step with x
before the step; raising from it interrupts sampling.

In the sigma form the DDPM posterior, DDIM with eta and k-diffusion's Euler ancestral step are the same update
(DDPM = DDIM(eta=1) = Euler ancestral(eta=1)); each keeps the form of its paper so it can be checked against it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .noise import BatchNoise

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None] | None


def initial_noise(
    noise: BatchNoise, shape_per_image: Sequence[int], sigma: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The starting point of a fresh sample: noise.randn(shape_per_image) * sigma, [B, *shape_per_image]."""
    return noise.randn(shape_per_image, dtype) * float(sigma)


@torch.no_grad()
def sample_ddpm(model: Model, x, sigmas, noise: BatchNoise | None = None, callback: Callback = None) -> torch.Tensor:
    """Ancestral sampling with the DDPM posterior q(x_next | x, x0) between consecutive sigmas.

    For vp_linear with `ddpm_sigmas()` this is DDPM's sampler exactly (posterior variance, "fixedsmall"); on any
    other sigmas it is the posterior between those levels, which in the sigma form is
    mean = x0 + (s'/s)^2 (x - x0), variance = s'^2 (1 - (s'/s)^2).
    """
    _require_noise(noise, sigmas, "ddpm")

    def step(x, denoised, sigma, sigma_next):
        ratio = (sigma_next / sigma) ** 2
        return denoised + ratio * (x - denoised) + sigma_next * math.sqrt(1.0 - ratio) * noise.randn_like(x)

    return _run(model, x, sigmas, callback, step)


@torch.no_grad()
def sample_ddim(
    model: Model, x, sigmas, noise: BatchNoise | None = None, callback: Callback = None, eta: float = 0.0
) -> torch.Tensor:
    """DDIM: x_next = x0 + sqrt(s'^2 - s_up^2) * eps_hat + s_up * z with s_up = eta * s' sqrt(1 - (s'/s)^2).

    eta = 0 is deterministic (the probability-flow ODE's exponential-integrator step, equal to Euler in this form);
    eta = 1 is the DDPM posterior.
    """
    if eta > 0:
        _require_noise(noise, sigmas, "ddim with eta > 0")

    def step(x, denoised, sigma, sigma_next):
        eps = (x - denoised) / sigma
        sigma_up = _sigma_up(sigma, sigma_next, eta)
        x = denoised + math.sqrt(sigma_next**2 - sigma_up**2) * eps
        return x + sigma_up * noise.randn_like(x) if sigma_up > 0 else x

    return _run(model, x, sigmas, callback, step)


@torch.no_grad()
def sample_euler(model: Model, x, sigmas, noise: BatchNoise | None = None, callback: Callback = None) -> torch.Tensor:
    """Euler steps of the probability-flow ODE dx/dsigma = (x - x0) / sigma. Deterministic; `noise` is unused."""

    def step(x, denoised, sigma, sigma_next):
        return x + (x - denoised) / sigma * (sigma_next - sigma)

    return _run(model, x, sigmas, callback, step)


@torch.no_grad()
def sample_euler_ancestral(
    model: Model, x, sigmas, noise: BatchNoise | None = None, callback: Callback = None, eta: float = 1.0
) -> torch.Tensor:
    """Euler step down to sigma_down, then fresh noise of std sigma_up, with sigma_down^2 + sigma_up^2 = s'^2."""
    if eta > 0:
        _require_noise(noise, sigmas, "euler_ancestral with eta > 0")

    def step(x, denoised, sigma, sigma_next):
        sigma_up = _sigma_up(sigma, sigma_next, eta)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        return x + sigma_up * noise.randn_like(x) if sigma_up > 0 else x

    return _run(model, x, sigmas, callback, step)


@torch.no_grad()
def sample_heun(model: Model, x, sigmas, noise: BatchNoise | None = None, callback: Callback = None) -> torch.Tensor:
    """Heun's second-order ODE steps (EDM, Algorithm 1 without churn): 2 model calls a step, 1 for the last to 0
    (where the trapezoid would divide by zero and Euler lands on x0)."""

    def step(x, denoised, sigma, sigma_next):
        slope = (x - denoised) / sigma
        x_euler = x + slope * (sigma_next - sigma)
        slope_next = (x_euler - _denoise(model, x_euler, sigma_next)) / sigma_next
        return x + 0.5 * (slope + slope_next) * (sigma_next - sigma)

    return _run(model, x, sigmas, callback, step)


@torch.no_grad()
def sample_dpmpp_2m(
    model: Model, x, sigmas, noise: BatchNoise | None = None, callback: Callback = None
) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in lambda = -log sigma, reusing the previous x0 (1 call a step)."""
    previous = None  # (denoised, step size h) of the last step

    def step(x, denoised, sigma, sigma_next):
        nonlocal previous
        h = math.log(sigma / sigma_next)
        if h == 0:  # a repeated level: nothing to integrate
            return x
        estimate = denoised
        if previous is not None:
            old_denoised, h_last = previous
            r = h_last / h
            estimate = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * old_denoised
        previous = (denoised, h)
        return (sigma_next / sigma) * x - math.expm1(-h) * estimate

    return _run(model, x, sigmas, callback, step)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


def sample(
    name: str,
    model: Model,
    x: torch.Tensor,
    sigmas,
    noise: BatchNoise | None = None,
    callback: Callback = None,
    **opts,
) -> torch.Tensor:
    """Runs the sampler called `name` (a key of SAMPLERS); opts go to it (eta for ddim and euler_ancestral)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; valid samplers: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](model, x, sigmas, noise=noise, callback=callback, **opts)


def _levels(sigmas) -> list[float]:
    """sigmas as Python floats, checked: one-dimensional, non-negative, non-increasing."""
    levels = [float(s) for s in (sigmas.reshape(-1).tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if any(not s >= 0 for s in levels):
        raise ValueError(f"sigmas must be non-negative numbers, got {levels}")
    if any(b > a for a, b in zip(levels, levels[1:])):
        raise ValueError("sigmas must be in descending order (noise is removed step by step)")
    if any(a == 0 and b == 0 for a, b in zip(levels, levels[1:])):
        raise ValueError("sigmas may contain 0 only as the last level")
    return levels


def _run(model: Model, x, sigmas, callback: Callback, step) -> torch.Tensor:
    """The loop all samplers share: at each level denoise, report, then x = step(x, denoised, sigma, sigma_next).
    Every sampler's step to sigma 0 lands on the denoised estimate, so that step is taken here."""
    levels = _levels(sigmas)
    total = len(levels) - 1
    for i in range(total):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = _denoise(model, x, sigma)
        _report(callback, i, total, x, sigma, denoised)
        x = denoised if sigma_next == 0 else step(x, denoised, sigma, sigma_next)
    return x


def _sigma_up(sigma: float, sigma_next: float, eta: float) -> float:
    """The std of the fresh noise of an ancestral step (0 for eta = 0; the DDPM posterior's for eta = 1)."""
    return min(sigma_next, eta * sigma_next * math.sqrt(1.0 - (sigma_next / sigma) ** 2))


def _denoise(model: Model, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return model(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32))


def _report(callback: Callback, i: int, total: int, x, sigma: float, denoised):
    if callback is not None:
        callback({"i": i, "total": total, "x": x, "sigma": sigma, "denoised": denoised})


def _require_noise(noise, sigmas, what: str):
    if noise is None and any(s > 0 for s in _levels(sigmas)[1:]):
        raise ValueError(f"{what} is stochastic and draws only from `noise`: pass noise=BatchNoise(seeds, device)")
