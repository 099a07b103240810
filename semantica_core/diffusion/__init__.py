"""Diffusion in the sigma form `x = x0 + sigma * eps`: schedules, the denoiser with guidance, samplers, SDEdit."""
from .denoiser import PREDICTIONS, DiffusionConfig, Denoiser
from .model_sampling import ModelSampling
from .noise import BatchNoise
from .samplers import (
    SAMPLERS,
    initial_noise,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from .schedules import KINDS, SPACINGS, NoiseSchedule, ScheduleConfig, get_sigmas
from .sdedit import sdedit, sdedit_sigmas

__all__ = [
    "BatchNoise",
    "DiffusionConfig",
    "Denoiser",
    "KINDS",
    "ModelSampling",
    "NoiseSchedule",
    "PREDICTIONS",
    "SAMPLERS",
    "SPACINGS",
    "ScheduleConfig",
    "get_sigmas",
    "initial_noise",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sdedit",
    "sdedit_sigmas",
]
