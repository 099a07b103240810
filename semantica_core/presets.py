"""Model presets: named network configurations and the diffusion config each is trained with.

Pair-conditioned (`PairConditionedUNet`, kind "pair_conditioned"):
  tiny     32 px, base 32, mult (1,2,2), 1 res block, attention at 16 and 8 px; ~1.9M parameters, CPU.
  base64   64 px, base 128, mult (1,2,2,4), 2 res blocks, attention at 32, 16, 8 px; ~117M parameters, GPU.
  base256  256 px, base 128, mult (1,1,2,2,4,4), 2 res blocks, attention at 32, 16, 8 px; ~179M parameters, GPU.
Single image (`PatchUNet`, kind "single_image"):
  sindiffusion       SinDiffusion's network: base 64, mult (1,2,4), 1 res block; receptive field 101 px, 7.7M.
  sindiffusion_tiny  base 32, mult (1,2); receptive field 45 px, 0.5M, for CPUs and tests.
Heads are 32 (tiny) or 64 channels wide. Parameter counts move a little with the encoder's token and pooled widths.
The single-image presets match semantica_core.single_image_train.PRESETS.
"""
from __future__ import annotations

from typing import Optional, Union

from .diffusion import DiffusionConfig, ScheduleConfig
from .networks import PatchUNetConfig, UNetConfig

# name -> (network kind, config fields). Pair-conditioned presets get token_dim / pooled_dim from the encoder.
_NETWORK_PRESETS = {
    "tiny": (
        "pair_conditioned",
        dict(resolution=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
             attention_resolutions=(16, 8), head_dim=32),
    ),
    "base64": (
        "pair_conditioned",
        dict(resolution=64, base_channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
             attention_resolutions=(32, 16, 8), head_dim=64),
    ),
    "base256": (
        "pair_conditioned",
        dict(resolution=256, base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
             attention_resolutions=(32, 16, 8), head_dim=64),
    ),
    "sindiffusion": ("single_image", dict(base_channels=64, channel_mult=(1, 2, 4), num_res_blocks=1)),
    "sindiffusion_tiny": ("single_image", dict(base_channels=32, channel_mult=(1, 2), num_res_blocks=1)),
}

PRESETS = tuple(_NETWORK_PRESETS)
DEFAULT_TOKEN_DIM = 768
DEFAULT_POOLED_DIM = 768


def _check(name: str) -> None:
    if name not in _NETWORK_PRESETS:
        raise ValueError(f"unknown network preset {name!r}; presets: {', '.join(PRESETS)}")


def preset_kind(name: str) -> str:
    """The network kind of a preset, as `build_network` takes it: "pair_conditioned" or "single_image"."""
    _check(name)
    return _NETWORK_PRESETS[name][0]


def network_preset(
    name: str, token_dim: Optional[int] = None, pooled_dim: Optional[int] = None
) -> Union[UNetConfig, PatchUNetConfig]:
    """A fresh network config for preset `name`.

    token_dim / pooled_dim are the image encoder's widths (default 768 each); single-image presets ignore them.
    """
    _check(name)
    kind, fields = _NETWORK_PRESETS[name]
    if kind == "single_image":
        return PatchUNetConfig(**fields)
    return UNetConfig(
        **fields,
        token_dim=DEFAULT_TOKEN_DIM if token_dim is None else int(token_dim),
        pooled_dim=DEFAULT_POOLED_DIM if pooled_dim is None else int(pooled_dim),
    )


# Pair-conditioned preset -> (schedule kind, prediction). v prediction keeps the target's scale even at the noisiest
# levels; at 256 px the cosine schedule is shifted towards more noise ("simple diffusion"), relative to 64 px.
# (The single-image presets' diffusion is SinDiffusion's: semantica_core.single_image_train.)
DIFFUSION_DEFAULTS = {
    "tiny": ("vp_cosine", "v"),
    "base64": ("vp_cosine", "v"),
    "base256": ("vp_shifted_cosine", "v"),
}


def default_diffusion_config(preset: str, resolution: Optional[int] = None) -> DiffusionConfig:
    """The diffusion config a pair-conditioned preset is trained with; `resolution` feeds the shifted schedule.

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
