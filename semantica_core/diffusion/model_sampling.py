"""A diffusion config in the interface host samplers call: ComfyUI's `model_sampling` object, in pure torch.

ComfyUI's samplers and schedulers never see a network's parameterization directly; they ask a `model_sampling`
object for the noise levels (`sigmas`, `sigma_min`, `sigma_max`), the network's input and time
(`calculate_input`, `timestep`) and the x0 estimate from the raw output (`calculate_denoised`). `ModelSampling` is
that object for our schedules (VP linear, cosine, shifted cosine, VE) and predictions (eps, v, x0), computed by
`NoiseSchedule` itself, so ComfyUI's sigmas and timesteps are ours to float precision rather than the nearest
built-in schedule (ComfyUI's `linear` beta schedule is SD's scaled-linear, not DDPM's). The Denoiser runs through
the same object, so our samplers and ComfyUI's share one path from network output to x0.

The `sigmas` table holds the levels at t = (i + 1) / T, i = 0..T-1 (for vp_linear exactly the DDPM levels), so
ComfyUI's "simple" scheduler with steps dividing T gives our "uniform" spacing, and `sigma_min` / `sigma_max` are
the schedule's, so ComfyUI's "karras" gives our "karras".
"""
from __future__ import annotations

import torch
from torch import nn

from .schedules import NoiseSchedule


def _shaped(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """One sigma as a scalar, or one per row [B, 1, 1, ...] (as ComfyUI passes them)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if sigma.numel() == 1:
        return sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


class ModelSampling(nn.Module):
    """Schedule and prediction of a DiffusionConfig as ComfyUI's `model_sampling` (duck-typed, no ComfyUI import).

    clamp_denoised: clamp x0 to the image range [-1, 1], as SinDiffusion's sampler does (see
    single_image.clipped_denoiser); off for pair-conditioned models, whose guided x0 is not clamped.
    """

    sigma_data = 1.0  # ComfyUI's EPS/V formulas read it; the sigma form here has unit data scale

    def __init__(self, config, clamp_denoised: bool = False):
        super().__init__()
        self.config = config
        self.schedule = NoiseSchedule(config.schedule)
        self.prediction = config.prediction
        self.clamp_denoised = clamp_denoised
        steps = self.schedule.timesteps
        levels = self.schedule.t_to_sigma(torch.arange(1, steps + 1, dtype=torch.float64) / steps)
        # Buffers move with the model, as ComfyUI's own model_sampling does; not part of any checkpoint.
        self.register_buffer("sigmas", levels.float(), persistent=False)
        self.register_buffer("log_sigmas", levels.log().float(), persistent=False)
        self.register_buffer("_sigma_min", torch.tensor(self.schedule.sigma_min, dtype=torch.float32), persistent=False)
        self.register_buffer("_sigma_max", torch.tensor(self.schedule.sigma_max, dtype=torch.float32), persistent=False)

    @property
    def sigma_min(self) -> torch.Tensor:
        """The schedule's smallest noise level (t = 0; vp_linear: DDPM timestep 0)."""
        return self._sigma_min

    @property
    def sigma_max(self) -> torch.Tensor:
        """The schedule's largest noise level (t = 1), where sampling from noise starts."""
        return self._sigma_max

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time input for sigma: the schedule's c_noise (continuous, not rounded to a table index)."""
        return self.schedule.c_noise(torch.as_tensor(sigma, dtype=torch.float32))

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Inverse of `timestep`."""
        offset = 1.0 if self.schedule.kind == "vp_linear" else 0.0
        timestep = torch.as_tensor(timestep, dtype=torch.float32)
        return self.schedule.t_to_sigma((timestep + offset) / self.schedule.timesteps)

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's start/end percentages: 0 is the start of sampling (t = 1), 1 its end (sigma 0)."""
        if percent <= 0.0:
            return 999999999.9  # ComfyUI's own value for "before the first step"
        if percent >= 1.0:
            return 0.0
        return float(self.schedule.t_to_sigma(1.0 - float(percent)))

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: c_in(sigma) * x (x_vp for VP schedules, x itself for VE)."""
        return x * self.schedule.c_in(_shaped(sigma, x.ndim).to(x.device)).to(x.dtype)

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 from the network's raw output (eps, v or x0) at x; computed in float32, returned in x's dtype."""
        out, xf = output.float(), x.float()
        s = _shaped(sigma, x.ndim).to(x.device)
        if self.prediction == "eps":
            x0 = xf - s * out
        elif self.prediction == "x0":
            x0 = out
        else:  # v, normalized as in denoiser.py: x0 = alpha^2 x - sigma alpha v
            alpha_sq = 1.0 / (1.0 + s * s)
            x0 = alpha_sq * xf - (s * alpha_sq.sqrt()) * out
        if self.clamp_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        return x0.to(x.dtype)

    def noise_scaling(self, sigma, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False):
        """The start of sampling: latent + sigma * noise, as our samplers start (`initial_noise`).

        max_denoise is ignored: ComfyUI would scale pure noise by sqrt(1 + sigma^2), a VP-prior start that our
        models were not sampled with (at sigma_max the two differ by under 1e-4 relative).
        """
        return latent_image + _shaped(sigma, noise.ndim).to(noise.device, noise.dtype) * noise

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        return latent
