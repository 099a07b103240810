"""Noise schedules in the sigma form `x = x0 + sigma * eps`, whatever the kind.

A VP schedule (`x_vp = alpha * x0 + sigma_vp * eps`, alpha^2 + sigma_vp^2 = 1) is the same process seen through the
scale `x = x_vp / alpha`, with `sigma = sigma_vp / alpha`; the network sees `c_in(sigma) * x = x_vp`. Samplers
therefore only handle sigmas, and `t` in [0, 1] is a schedule's own clock:

- `vp_cosine`: sigma(t) = tan(angle(t)), i.e. alpha_bar = cos^2, with logSNR = -2 log sigma clipped to
  [logsnr_min, logsnr_max] as in "simple diffusion" (angle interpolated between the two clip angles).
- `vp_shifted_cosine`: the same with logSNR shifted by 2 log(shift_base_resolution / resolution), so
  sigma is multiplied by resolution / shift_base_resolution (more noise for larger images).
- `vp_linear`: DDPM's discrete schedule, betas linear from beta_start to beta_end over `timesteps` steps
  (1e-4..0.02 over 1000: DDPM, SDEdit, SinDiffusion). DDPM timestep i (0-based) sits at t = (i + 1) / T and
  t = 0 is the clean image; between levels log sigma is interpolated linearly (below level 0, sigma itself).
- `ve`: log-linear between sigma_min and sigma_max (Song's SMLD/NCSN++ form). Defaults 0.002 / 80 as in EDM,
  which covers what a [-1, 1] image needs at both ends; Song's 0.01 / 50 (CIFAR-10) is a config away.

`c_noise` is what the network gets as its time input: `timesteps * t` for every kind, minus one for `vp_linear`
so a DDPM-trained network sees exactly its integer timestep indices. Using the same 0..1000 range for every kind
(rather than EDM's 0.25 ln sigma for VE) lets one network architecture and time embedding serve all schedules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from semantica_core.config import from_dict as config_from_dict, to_dict as config_to_dict

KINDS = ("vp_cosine", "vp_linear", "vp_shifted_cosine", "ve")
TRAINING_SIGMAS = ("uniform_t", "stratified_t", "lognormal")
SPACINGS = ("uniform", "karras")

Number = float | torch.Tensor


@dataclass
class ScheduleConfig:
    """Everything that defines a noise schedule; stored as JSON in checkpoints.

    training_sigmas: "uniform_t" draws t uniformly (integer DDPM timesteps for vp_linear, log-uniform sigma for ve);
    "stratified_t" the same distribution, but the n draws of a call spread evenly, t_i = (u + i / n) mod 1 with one
    uniform u (VDM's low-discrepancy sampler): every batch spans the range, so the loss's variance falls;
    "lognormal" draws ln sigma ~ N(lognormal_mean, lognormal_std^2) clamped to [sigma_min, sigma_max] (EDM).
    """

    kind: str = "vp_cosine"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift_base_resolution: int = 64
    resolution: int = 64
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    training_sigmas: str = "uniform_t"
    lognormal_mean: float = -1.2
    lognormal_std: float = 1.2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown schedule kind '{self.kind}'; valid kinds: {', '.join(KINDS)}")
        if self.training_sigmas not in TRAINING_SIGMAS:
            raise ValueError(
                f"unknown training_sigmas '{self.training_sigmas}'; valid: {', '.join(TRAINING_SIGMAS)}"
            )
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be at least 2, got {self.timesteps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")
        if self.shift_base_resolution <= 0 or self.resolution <= 0:
            raise ValueError("shift_base_resolution and resolution must be positive")
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.lognormal_std <= 0:
            raise ValueError(f"lognormal_std must be positive, got {self.lognormal_std}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        return config_from_dict(cls, d)


class NoiseSchedule:
    """Maps the schedule clock t in [0, 1] to sigma and back, and gives the network's input scale and time."""

    def __init__(self, config: ScheduleConfig):
        self.config = config
        self.kind = config.kind
        self.timesteps = int(config.timesteps)
        self._tables: dict = {}
        if self.kind == "vp_linear":
            betas = torch.linspace(config.beta_start, config.beta_end, self.timesteps, dtype=torch.float64)
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            self._discrete = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()  # ascending, index = DDPM timestep
            self._log_discrete = self._discrete.log()
        elif self.kind in ("vp_cosine", "vp_shifted_cosine"):
            shifted = self.kind == "vp_shifted_cosine"
            self._shift = config.resolution / config.shift_base_resolution if shifted else 1.0
            self._angle_min = math.atan(math.exp(-0.5 * config.logsnr_max))
            self._angle_max = math.atan(math.exp(-0.5 * config.logsnr_min))

    @property
    def is_vp(self) -> bool:
        return self.kind != "ve"

    @property
    def sigma_min(self) -> float:
        """Smallest nonzero noise level of the schedule (sigma at t = 0; for vp_linear DDPM timestep 0)."""
        if self.kind == "vp_linear":
            return float(self._discrete[0])
        if self.kind == "ve":
            return float(self.config.sigma_min)
        return self._shift * math.tan(self._angle_min)

    @property
    def sigma_max(self) -> float:
        """Noise level at t = 1, where sampling starts."""
        if self.kind == "vp_linear":
            return float(self._discrete[-1])
        if self.kind == "ve":
            return float(self.config.sigma_max)
        return self._shift * math.tan(self._angle_max)

    def t_to_sigma(self, t: Number) -> Number:
        """sigma(t); t is clamped to [0, 1]. A float gives a float, a tensor a tensor on its device."""
        return _elementwise(self._t_to_sigma, t)

    def sigma_to_t(self, sigma: Number) -> Number:
        """Inverse of t_to_sigma. Extrapolates outside [sigma_min, sigma_max] except for vp_linear (clamped)."""
        return _elementwise(self._sigma_to_t, sigma)

    def c_in(self, sigma: Number) -> Number:
        """Input scale: 1/sqrt(1 + sigma^2) for VP (the network sees x_vp), 1 for VE."""
        if self.is_vp:
            return _elementwise(lambda s: torch.rsqrt(1.0 + s * s), sigma)
        return _elementwise(torch.ones_like, sigma)

    def c_noise(self, sigma: Number) -> Number:
        """The network's time input: timesteps * t (vp_linear: timesteps * t - 1, the DDPM timestep index)."""
        offset = 1.0 if self.kind == "vp_linear" else 0.0
        return _elementwise(lambda s: self.timesteps * self._sigma_to_t(s) - offset, sigma)

    def sample_training_sigmas(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """n training noise levels [n] float32 (see ScheduleConfig.training_sigmas), drawn on the generator's device."""
        gen_device = generator.device if generator is not None else device
        if self.config.training_sigmas == "lognormal":
            z = torch.randn(n, generator=generator, device=gen_device)
            sigma = (self.config.lognormal_mean + self.config.lognormal_std * z).exp()
            sigma = sigma.clamp(self.sigma_min, self.sigma_max)
        elif self.config.training_sigmas == "stratified_t":
            offset = torch.rand(1, generator=generator, device=gen_device)
            sigma = self._uniform_t_sigmas((offset + torch.arange(n, device=gen_device) / n) % 1.0)
        elif self.kind == "vp_linear":
            # DDPM trains on the integer timesteps, uniformly.
            index = torch.randint(0, self.timesteps, (n,), generator=generator, device=gen_device)
            sigma = self._table("discrete", index.device, torch.float32)[index]
        else:
            sigma = self._uniform_t_sigmas(torch.rand(n, generator=generator, device=gen_device))
        return sigma.to(device=device if device is not None else sigma.device, dtype=torch.float32)

    def _uniform_t_sigmas(self, u: torch.Tensor) -> torch.Tensor:
        """The training levels of uniform draws u in [0, 1): vp_linear's integer timestep floor(u T), else sigma(u)."""
        if self.kind == "vp_linear":
            index = (u * self.timesteps).long().clamp(max=self.timesteps - 1)
            return self._table("discrete", index.device, torch.float32)[index]
        return self._t_to_sigma(u)

    def discrete_sigmas(self) -> torch.Tensor:
        """vp_linear only: the T DDPM noise levels [T] float32, ascending; index i = DDPM timestep i."""
        self._require_discrete("discrete_sigmas")
        return self._discrete.float()

    def ddpm_sigmas(self, t_start: float = 1.0) -> torch.Tensor:
        """vp_linear only: sigma(t_start), then every DDPM timestep level below it, then 0: [n+1] descending.

        One ancestral step per integer timestep, as SDEdit does (t_start=0.3 on T=1000: timesteps 299..0 then clean).
        When t_start falls between two timesteps its own level is prepended, so the result always starts at
        t_to_sigma(t_start).
        """
        self._require_discrete("ddpm_sigmas")
        t_start = _check_t_start(t_start)
        position = t_start * self.timesteps
        count = int(math.floor(position + 1e-6))  # timesteps i with (i + 1) / T <= t_start
        levels = self._discrete[:count].flip(0)
        if abs(position - count) > 1e-6:
            levels = torch.cat([torch.tensor([self.t_to_sigma(float(t_start))], dtype=torch.float64), levels])
        return torch.cat([levels, levels.new_zeros(1)]).float()

    # --- per kind ------------------------------------------------------------------------------------------

    def _t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(0.0, 1.0)
        if self.kind == "ve":
            lo, hi = math.log(self.config.sigma_min), math.log(self.config.sigma_max)
            return (lo + t * (hi - lo)).exp()
        if self.kind == "vp_linear":
            return self._linear_t_to_sigma(t)
        return self._shift * torch.tan(self._angle_min + t * (self._angle_max - self._angle_min))

    def _sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.kind == "ve":
            lo, hi = math.log(self.config.sigma_min), math.log(self.config.sigma_max)
            return (sigma.clamp_min(1e-20).log() - lo) / (hi - lo)
        if self.kind == "vp_linear":
            return self._linear_sigma_to_t(sigma)
        return (torch.atan(sigma / self._shift) - self._angle_min) / (self._angle_max - self._angle_min)

    def _linear_t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        log_levels = self._table("log_discrete", t.device, t.dtype)
        levels = self._table("discrete", t.device, t.dtype)
        position = t * self.timesteps  # level i sits at position i + 1
        low = position.floor().clamp(1, self.timesteps - 1).long()
        frac = (position - low).clamp(0.0, 1.0)
        between = (log_levels[low - 1] * (1.0 - frac) + log_levels[low] * frac).exp()
        below_first = levels[0] * position  # linear to sigma = 0 at t = 0: log sigma has no value there
        return torch.where(position >= 1.0, between, below_first)

    def _linear_sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_levels = self._table("log_discrete", sigma.device, sigma.dtype)
        levels = self._table("discrete", sigma.device, sigma.dtype)
        log_sigma = sigma.clamp_min(levels[0]).log()
        high = torch.searchsorted(log_levels, log_sigma.contiguous()).clamp(1, self.timesteps - 1)
        lo, hi = log_levels[high - 1], log_levels[high]
        frac = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
        position = torch.where(sigma >= levels[0], high + frac, (sigma / levels[0]).clamp_min(0.0))
        return position / self.timesteps

    def _table(self, name: str, device, dtype) -> torch.Tensor:
        key = (name, str(device), dtype)
        if key not in self._tables:
            self._tables[key] = getattr(self, "_" + name).to(dtype).to(device)  # cast first: MPS has no float64
        return self._tables[key]

    def _require_discrete(self, what: str):
        if self.kind != "vp_linear":
            raise ValueError(f"{what} needs a 'vp_linear' (DDPM) schedule; this one is '{self.kind}'")


def get_sigmas(
    schedule: NoiseSchedule, steps: int, spacing: str = "uniform", t_start: float = 1.0, rho: float = 7.0
) -> torch.Tensor:
    """Sampling noise levels [steps + 1] float32, descending, starting at t_to_sigma(t_start) and ending with 0.

    "uniform": equally spaced t = t_start * (steps - k) / steps for k = 0..steps-1, then 0 (ComfyUI's "simple";
    on vp_linear, steps = T * t_start gives exactly the DDPM timesteps below t_start). Not ending near sigma_min keeps
    DPM-Solver++'s step-size ratios even. "karras": Karras et al.'s rho-spacing from t_to_sigma(t_start) down to
    sigma_min (rho = 7).
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing '{spacing}'; valid spacings: {', '.join(SPACINGS)}")
    t_start = _check_t_start(t_start)
    steps = int(steps)
    if spacing == "uniform":
        t = t_start * torch.arange(steps, 0, -1, dtype=torch.float64) / steps
        sigmas = schedule.t_to_sigma(t)
    else:
        sigma_hi = schedule.t_to_sigma(float(t_start))
        sigma_lo = min(schedule.sigma_min, sigma_hi)
        ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        hi, lo = sigma_hi ** (1.0 / rho), sigma_lo ** (1.0 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def _check_t_start(t_start: float) -> float:
    try:
        value = float(t_start)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise ValueError(f"t_start must be in (0, 1], got {t_start!r}")
    return value


def _elementwise(fn: Callable[[torch.Tensor], torch.Tensor], value: Number) -> Number:
    """Computes in float64 for Python numbers (returned as float) and in the tensor's own float dtype otherwise."""
    if isinstance(value, torch.Tensor):
        dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        return fn(value.to(dtype))
    return float(fn(torch.tensor(float(value), dtype=torch.float64)))
