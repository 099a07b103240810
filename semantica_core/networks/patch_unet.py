"""The single-image network of SinDiffusion: a shallow ADM UNet with a patch-sized receptive field.

No attention and no middle block, and only two halvings, so every output pixel sees a window of about 100 px of the
input: the model learns the statistics of patches of one image rather than the image as a whole.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_dict as config_from_dict, to_dict as config_to_dict
from .backbone import UNetBackbone
from .blocks import ResBlock, TimestepEmbedder


@dataclass
class PatchUNetConfig:
    """Architecture of `PatchUNet`. Each extra level of channel_mult halves H and W once."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple = (1, 2, 4)
    num_res_blocks: int = 1
    dropout: float = 0.0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        if not self.channel_mult:
            raise ValueError("PatchUNetConfig.channel_mult must list at least one level")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PatchUNetConfig":
        return config_from_dict(cls, data)


class PatchUNet(UNetBackbone):
    """net(x, c_noise, tokens=None, pooled=None, drop_cond=None) -> out; the condition arguments are ignored."""

    def __init__(self, config: PatchUNetConfig):
        super().__init__()
        self.config = config
        emb_dim = 4 * config.base_channels
        self.time_embed = TimestepEmbedder(config.base_channels, emb_dim)
        self._build_backbone(lambda cin, cout, level: ResBlock(cin, cout, emb_dim, config.dropout))

    def receptive_field(self) -> int:
        """Width in pixels of the input window that one output pixel depends on through the convolutions.

        Measured, not derived: see `measure_receptive_field`. GroupNorm's per-image statistics also couple every
        pixel to the whole image, weakly (through one mean and variance per group); that is not counted here.
        """
        return measure_receptive_field(self.config)

    def forward(self, x, c_noise, tokens=None, pooled=None, drop_cond=None) -> torch.Tensor:
        c_noise = self._check_input(x, c_noise)
        return self._backbone(x, F.silu(self.time_embed(c_noise)))  # activated once, not in every ResBlock


def remove_group_norms(module: nn.Module) -> None:
    """Replaces every GroupNorm by the identity, in place: what is left is local (convolutions and pointwise)."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.Identity())
        else:
            remove_group_norms(child)


def measure_receptive_field(config: PatchUNetConfig) -> int:
    """Receptive field in pixels of the architecture `config` describes, measured by backpropagation.

    A narrow copy (same layers, kernels and strides; 2 channels per unit of channel_mult; GroupNorm removed, see
    `PatchUNet.receptive_field`) runs in float64 on a blank strip one down-sampling period wide; the rows of input
    pixels with a non-zero gradient of one output pixel form the window. Kernels are square, so the height of the
    window is also its width, and a strip keeps the cost linear in the window size. The probe's weights are small and
    random: random so that the zero-initialised convolutions do not hide paths, small so that every activation stays
    near 0 where SiLU's slope is 1/2 (large ones would saturate SiLU and underflow the gradient to exactly zero).
    The widest window over the alignments of the output pixel to the down-sampling grid is the answer.
    """
    return _measure_receptive_field(json.dumps(config.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=16)
def _measure_receptive_field(config_json: str) -> int:
    cfg = PatchUNetConfig.from_dict(json.loads(config_json))
    probe = PatchUNet(replace(cfg, in_channels=1, out_channels=1, base_channels=2, dropout=0.0))
    remove_group_norms(probe)
    probe = probe.double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.05)

    period = probe.required_multiple()
    size = 32 * period
    while True:
        widest = 0
        touches_border = False
        for phase in range(period):
            x = torch.zeros(1, 1, size, period, dtype=torch.float64, requires_grad=True)
            out = probe(x, torch.zeros(1, dtype=torch.float64))
            (grad,) = torch.autograd.grad(out[0, 0, size // 2 + phase, 0], x)
            rows = torch.nonzero(grad[0, 0].abs().sum(1)).flatten()
            first, last = int(rows[0]), int(rows[-1])
            touches_border |= first == 0 or last == size - 1
            widest = max(widest, last - first + 1)
        if not touches_border:
            return widest
        size *= 2
