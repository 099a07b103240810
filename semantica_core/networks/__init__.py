"""Denoising networks: the pair-conditioned UNet (Semantica) and the patch UNet (SinDiffusion). Pure torch."""
from __future__ import annotations

from torch import nn

from .blocks import block_check
from .patch_unet import PatchUNet, PatchUNetConfig
from .unet import PairConditionedUNet, UNetConfig

NETWORK_KINDS = {
    "pair_conditioned": (UNetConfig, PairConditionedUNet),
    "single_image": (PatchUNetConfig, PatchUNet),
}


def build_network(kind: str, config_dict) -> nn.Module:
    """A fresh network of `kind` ("pair_conditioned" or "single_image") from its config (a dict or the dataclass)."""
    if kind not in NETWORK_KINDS:
        raise ValueError(f"unknown network kind {kind!r}; expected one of {sorted(NETWORK_KINDS)}")
    config_cls, network_cls = NETWORK_KINDS[kind]
    if isinstance(config_dict, config_cls):
        config = config_dict
    elif isinstance(config_dict, dict):
        config = config_cls.from_dict(config_dict)
    else:
        raise TypeError(
            f"build_network({kind!r}) needs a dict or a {config_cls.__name__}; got {type(config_dict).__name__}"
        )
    return network_cls(config)


__all__ = [
    "NETWORK_KINDS",
    "PairConditionedUNet",
    "PatchUNet",
    "PatchUNetConfig",
    "UNetConfig",
    "block_check",
    "build_network",
]
