"""Preconditioning apart from architecture: wraps any network into `x0 = D(x, sigma)` in the sigma form.

The network call is the one every Semantica network follows:
`network(c_in * x, c_noise, tokens=..., pooled=..., drop_cond=...) -> raw prediction`, where the raw prediction is
eps, v or x0 as the DiffusionConfig says. With alpha = 1/sqrt(1 + sigma^2) and sigma_vp = sigma * alpha the
network's view is x_vp = alpha * x = alpha * x0 + sigma_vp * eps for every schedule kind, so
`v = alpha * eps - sigma_vp * x0` and `x0 = alpha^2 * x - sigma_vp * v` (VE uses the same normalized v).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from semantica_core.config import from_dict as config_from_dict, to_dict as config_to_dict
from semantica_core.embeds import Embeds
from semantica_core.precision import Precision, resolve_precision

from .model_sampling import ModelSampling
from .schedules import ScheduleConfig

PREDICTIONS = ("eps", "v", "x0")


@dataclass
class DiffusionConfig:
    """Schedule plus what the network predicts; stored as JSON in checkpoints."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: str = "eps"

    def __post_init__(self):
        if isinstance(self.schedule, dict):
            self.schedule = ScheduleConfig.from_dict(self.schedule)
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{self.prediction}'; valid: {', '.join(PREDICTIONS)}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        return config_from_dict(cls, d)


class Denoiser(nn.Module):
    """`forward(x, sigma, embeds, guidance_scale) -> x0`, with classifier-free guidance as one batched forward.

    precision: "auto" (None), "bf16", "fp32" or a resolved `Precision` (see semantica_core.precision): the network's
    forward runs under its autocast and memory format; x0 and the loss are computed in float32. A name is resolved
    for the device of the first call, which also puts the network's weights into that memory format; assign
    `denoiser.precision` to change it.
    """

    def __init__(self, network: nn.Module, config: DiffusionConfig, precision: str | Precision | None = None):
        super().__init__()
        self.network = network
        self.config = config
        self.precision = precision
        # The network's input scale, time input and x0 formula; ComfyUI's samplers call the same object.
        self.model_sampling = ModelSampling(config)
        self.schedule = self.model_sampling.schedule

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        embeds: Embeds | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Denoised x0 for x [B,C,H,W] at noise level sigma (float or [B]).

        embeds None: one unconditional forward (tokens=None), guidance_scale ignored. embeds with 1 or B rows and
        guidance_scale 1: one conditional forward. Otherwise one forward of 2B rows, x0 = null + s * (cond - null).
        """
        sigma = _sigma_batch(sigma, x)
        if embeds is None:
            return self._denoise(x, sigma, None, None, None)
        embeds = _embeds_for_batch(embeds, x)
        if guidance_scale == 1.0:
            return self._denoise(x, sigma, embeds.tokens, embeds.pooled, None)
        # Guidance: cond rows and null rows share one forward; x0 is affine in the raw output, so guiding x0
        # equals guiding eps or v.
        b = x.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        both = self._denoise(
            torch.cat([x, x]),
            torch.cat([sigma, sigma]),
            torch.cat([embeds.tokens, embeds.tokens]),
            torch.cat([embeds.pooled, embeds.pooled]),
            drop,
        )
        cond, null = both[:b], both[b:]
        return null + guidance_scale * (cond - null)

    def loss(
        self,
        x0: torch.Tensor,
        embeds: Embeds | None = None,
        cond_drop_prob: float = 0.1,
        generator: torch.Generator | None = None,
        sigma: float | torch.Tensor | None = None,
        min_snr_gamma: float = 0.0,
    ) -> torch.Tensor:
        """Mean squared error on the raw prediction target (eps, v or x0), unweighted unless min_snr_gamma > 0.

        Unweighted MSE is DDPM's simple loss for eps and the "simple diffusion" loss for v; for x0 it equals the eps
        loss weighted by sigma^2 (SinFusion-style), which favours high noise levels. min_snr_gamma > 0 weights each
        row so that its loss equals the x0 error weighted by min(SNR, gamma) (Min-SNR, arXiv 2303.09556), whatever
        the prediction: the nearly clean levels stop dominating.
        sigma defaults to the schedule's training distribution. Each row's condition is dropped (learned null
        condition) with probability cond_drop_prob so the model also learns the unconditional score for guidance.
        All randomness comes from `generator` (its device) when given.
        """
        b, device = x0.shape[0], x0.device
        gen_device = generator.device if generator is not None else device
        if sigma is None:
            sigma = self.schedule.sample_training_sigmas(b, generator, device=device)
        else:
            sigma = _sigma_batch(sigma, x0)
        eps = torch.randn(x0.shape, generator=generator, device=gen_device).to(device=device, dtype=x0.dtype)
        s = _expand(sigma, x0)
        x = x0 + s * eps

        tokens = pooled = drop = None
        if embeds is not None:
            embeds = _embeds_for_batch(embeds, x0)
            tokens, pooled = embeds.tokens, embeds.pooled
            drop = (torch.rand(b, generator=generator, device=gen_device) < cond_drop_prob).to(device)
        out = self._network(x, sigma, tokens, pooled, drop)

        if self.config.prediction == "eps":
            target = eps
        elif self.config.prediction == "x0":
            target = x0
        else:
            alpha = torch.rsqrt(1.0 + s * s)
            target = alpha * eps - (s * alpha) * x0
        if min_snr_gamma <= 0:
            return F.mse_loss(out.float(), target.float())
        per_row = (out.float() - target.float()).square().flatten(1).mean(1)
        return (per_row * min_snr_weight(sigma, self.config.prediction, min_snr_gamma)).mean()

    @property
    def precision(self) -> str | Precision | None:
        return self._precision

    @precision.setter
    def precision(self, value: str | Precision | None) -> None:
        self._precision = value
        self._resolved: dict[str, Precision] = {}  # resolved again, and the layout applied, at the next call

    def resolved_precision(self, device: torch.device) -> Precision:
        """What `precision` means on `device`; the first time, the network's weights take its memory format."""
        resolved = self._resolved
        if device.type not in resolved:
            precision = self._precision
            if not isinstance(precision, Precision):
                precision = resolve_precision(precision, device)
            precision.prepare(self.network)
            resolved[device.type] = precision
        return resolved[device.type]

    def _network(self, x, sigma, tokens, pooled, drop) -> torch.Tensor:
        sampling = self.model_sampling
        precision = self.resolved_precision(x.device)
        with precision.autocast():
            out = self.network(
                precision.input(sampling.calculate_input(sigma, x)), sampling.timestep(sigma), tokens=tokens,
                pooled=pooled, drop_cond=drop,
            )
        if precision.channels_last:
            out = out.contiguous()  # the sampler's state stays in the default layout
        if out.shape != x.shape:
            raise ValueError(
                f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}; a denoiser network "
                "must predict one value per input value (check the network's out_channels)"
            )
        return out

    def _denoise(self, x, sigma, tokens, pooled, drop) -> torch.Tensor:
        def denoise(x, sigma, tokens, pooled, drop):
            return self.model_sampling.calculate_denoised(sigma, self._network(x, sigma, tokens, pooled, drop), x)

        return in_cpu_calls(denoise, x, sigma, tokens, pooled, drop)


# A CPU runs a network call fastest per pixel near 32K pixels (32 images of 32x32, 8 of 64x64): larger calls spill
# the caches, 16.5 against 11.5 ms per guided 32 px image at 200 images on a 2-core EPYC (docs/speed.md). GPUs take
# any batch.
CPU_PIXELS_PER_CALL = 32 * 32 * 32


def rows_per_call(x: torch.Tensor) -> int:
    """How many rows of x one inference call of the network takes on x's device."""
    if x.device.type != "cpu":
        return x.shape[0]
    return max(1, CPU_PIXELS_PER_CALL // (x.shape[-2] * x.shape[-1]))


def in_cpu_calls(run, x: torch.Tensor, *rows: torch.Tensor | None) -> torch.Tensor:
    """run(x, *rows) for inference, in calls of `rows_per_call(x)` rows of x and of each per-row tensor (None
    passes through). Rows are independent (per-image seeds and normalization), so the result is the batch's own."""
    step = rows_per_call(x)
    if step >= x.shape[0]:
        return run(x, *rows)
    return torch.cat([run(*(t if t is None else t[start:start + step] for t in (x, *rows)))
                      for start in range(0, x.shape[0], step)])


def min_snr_weight(sigma: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """The weight on a prediction's MSE that makes it min(SNR, gamma) times the x0 MSE, SNR = 1 / sigma^2: the eps
    MSE is SNR times the x0 MSE, the v MSE (SNR + 1) times."""
    snr = sigma.float().square().reciprocal()
    capped = snr.clamp(max=gamma)
    return {"eps": capped / snr, "v": capped / (snr + 1), "x0": capped}[prediction]


def _sigma_batch(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma as a [B] float32 tensor on x's device (a number or one value is broadcast to the batch)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32).to(x.device).reshape(-1)
    if sigma.numel() == 1:
        return sigma.expand(x.shape[0]).clone()
    if sigma.numel() != x.shape[0]:
        raise ValueError(f"sigma has {sigma.numel()} values for a batch of {x.shape[0]}")
    return sigma


def _expand(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def _embeds_for_batch(embeds: Embeds, x: torch.Tensor) -> Embeds:
    """Embeds on x's device, one row per image (a single row is repeated for the whole batch)."""
    b = x.shape[0]
    if len(embeds) == 1 and b > 1:
        embeds = embeds.repeat_to(b)
    elif len(embeds) != b:
        raise ValueError(f"embeds have {len(embeds)} rows for a batch of {b} images; give 1 or {b} rows")
    return embeds.to(device=x.device)
