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
from torch.utils.checkpoint import checkpoint

from .blocks import Downsample, ResBlock, TimestepEmbedder, Upsample, group_norm, run_block_check, zero_module
from .unet import config_from_dict, config_to_dict


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


class PatchUNet(nn.Module):
    """net(x, c_noise, tokens=None, pooled=None, drop_cond=None) -> out; the condition arguments are ignored."""

    def __init__(self, config: PatchUNetConfig):
        super().__init__()
        self.config = config
        base = config.base_channels
        emb_dim = 4 * base
        self.time_embed = TimestepEmbedder(base, emb_dim)

        self.conv_in = nn.Conv2d(config.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base]
        channels = base
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(ResBlock(channels, base * mult, emb_dim, config.dropout))
                channels = base * mult
                skip_channels.append(channels)
            if level != len(config.channel_mult) - 1:
                self.down.append(Downsample(channels))
                skip_channels.append(channels)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(ResBlock(channels + skip_channels.pop(), base * mult, emb_dim, config.dropout))
                channels = base * mult
            if level != 0:
                self.up.append(Upsample(channels))

        self.norm_out = group_norm(channels)
        self.conv_out = zero_module(nn.Conv2d(channels, config.out_channels, 3, padding=1))

    def required_multiple(self) -> int:
        """H and W must be multiples of this (one halving per extra level)."""
        return 2 ** (len(self.config.channel_mult) - 1)

    def receptive_field(self) -> int:
        """Width in pixels of the input window that one output pixel depends on through the convolutions.

        Measured, not derived: see `measure_receptive_field`. GroupNorm's per-image statistics also couple every
        pixel to the whole image, weakly (through one mean and variance per group); that is not counted here.
        """
        return measure_receptive_field(self.config)

    def _run(self, layer: nn.Module, h, emb):
        run_block_check()
        if isinstance(layer, (Downsample, Upsample)):
            return layer(h)
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, h, emb, use_reentrant=False)
        return layer(h, emb)

    def forward(self, x, c_noise, tokens=None, pooled=None, drop_cond=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"PatchUNet expects x [B, {self.config.in_channels}, H, W]; got {tuple(x.shape)}")
        batch, _, height, width = x.shape
        m = self.required_multiple()
        if height % m or width % m:
            raise ValueError(
                f"PatchUNet needs H and W to be multiples of {m} (2**(len(channel_mult)-1)); got {height}x{width}"
            )
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(batch)
        if c_noise.shape != (batch,):
            raise ValueError(f"c_noise must have shape [{batch}] (one per row) or []; got {tuple(c_noise.shape)}")
        dtype = self.conv_in.weight.dtype
        emb = F.silu(self.time_embed(c_noise))  # activated once, not in every ResBlock

        h = self.conv_in(x.to(dtype))
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            skips.append(h)
        for layer in self.up:
            if not isinstance(layer, Upsample):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def _remove_group_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, nn.Identity())
        else:
            _remove_group_norms(child)


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
    _remove_group_norms(probe)
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
