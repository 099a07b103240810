"""Diffusion defaults per network preset (the network side is semantica_core.presets.network_preset)."""
from __future__ import annotations

from semantica_core.diffusion import DiffusionConfig, ScheduleConfig

# preset -> (schedule kind, prediction). v prediction keeps the target's scale even at the noisiest levels;
# at 256 px the cosine schedule is shifted towards more noise ("simple diffusion"), relative to 64 px.
DIFFUSION_DEFAULTS = {
    "tiny": ("vp_cosine", "v"),
    "base64": ("vp_cosine", "v"),
    "base256": ("vp_shifted_cosine", "v"),
}


def default_diffusion_config(preset: str, resolution: int | None = None) -> DiffusionConfig:
    """The diffusion config `semantica init` pairs with a network preset; `resolution` feeds the shifted schedule.

    A preset without an entry gets the rule behind the table: v prediction, cosine up to 64 px, shifted above."""
    if preset in DIFFUSION_DEFAULTS:
        kind, prediction = DIFFUSION_DEFAULTS[preset]
    elif resolution is not None:
        kind, prediction = ("vp_cosine" if resolution <= 64 else "vp_shifted_cosine"), "v"
    else:
        raise ValueError(
            f"no diffusion defaults for preset {preset!r} and no resolution given; known presets: "
            f"{', '.join(DIFFUSION_DEFAULTS)}"
        )
    schedule = ScheduleConfig(kind=kind, shift_base_resolution=64, resolution=resolution or 64)
    return DiffusionConfig(schedule=schedule, prediction=prediction)
