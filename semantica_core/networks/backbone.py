"""The ADM UNet skeleton both networks are built on: input convolution, levels of blocks going down with a skip after
each, an optional middle, levels going up that each take a skip back, then GroupNorm, SiLU and the output convolution.

A network says what one block is (a ResBlock for SinDiffusion, a ResBlock with attention for Semantica) and makes its
own embeddings; the skeleton does the rest. Its attribute names (conv_in, down, middle, up, norm_out, conv_out) are
the tensor names in every checkpoint written so far: they must not change.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import Downsample, Upsample, group_norm, run_block_check, zero_module

# block(in_channels, out_channels, level) -> a module called as block(h, emb, *context)
BlockFactory = Callable[[int, int, int], nn.Module]


class UNetBackbone(nn.Module):
    """Base class; the subclass sets `self.config` (channels, channel_mult, num_res_blocks, gradient_checkpointing)
    and calls `_build_backbone` in its __init__, after making the layers that must be initialised first."""

    config: object

    def _build_backbone(self, block: BlockFactory,
                        middle: Optional[Callable[[int], list[nn.Module]]] = None) -> None:
        cfg = self.config
        base = cfg.base_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base]
        channels = base
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(channels, base * mult, level))
                channels = base * mult
                skip_channels.append(channels)
            if level != last:
                self.down.append(Downsample(channels))
                skip_channels.append(channels)

        self.middle = nn.ModuleList(middle(channels) if middle is not None else [])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(block(channels + skip_channels.pop(), base * mult, level))
                channels = base * mult
            if level != 0:
                self.up.append(Upsample(channels))

        self.norm_out = group_norm(channels)
        self.conv_out = zero_module(nn.Conv2d(channels, cfg.out_channels, 3, padding=1))

    def required_multiple(self) -> int:
        """H and W must be multiples of this (one halving per extra level)."""
        return 2 ** (len(self.config.channel_mult) - 1)

    def _check_input(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """Refuses a wrong input shape with the network's name; returns c_noise as one value per row."""
        name, channels = type(self).__name__, self.config.in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} expects x [B, {channels}, H, W]; got {tuple(x.shape)}")
        batch, _, height, width = x.shape
        m = self.required_multiple()
        if height % m or width % m:
            raise ValueError(
                f"{name} needs H and W to be multiples of {m} (2**(len(channel_mult)-1)); got {height}x{width}"
            )
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(batch)
        if c_noise.shape != (batch,):
            raise ValueError(f"c_noise must have shape [{batch}] (one per row) or []; got {tuple(c_noise.shape)}")
        return c_noise

    def _run(self, layer: nn.Module, h, emb, context):
        run_block_check()
        if isinstance(layer, (Downsample, Upsample)):
            return layer(h)
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, h, emb, *context, use_reentrant=False)
        return layer(h, emb, *context)

    def _backbone(self, x: torch.Tensor, emb: torch.Tensor, *context) -> torch.Tensor:
        """x through the skeleton; every block gets the activated embedding `emb` and `context` (if any)."""
        h = self.conv_in(x.to(self.conv_in.weight.dtype))
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, context)
            skips.append(h)
        for layer in self.middle:
            h = self._run(layer, h, emb, context)
        for layer in self.up:
            if not isinstance(layer, Upsample):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb, context)
        return self.conv_out(F.silu(self.norm_out(h)))
