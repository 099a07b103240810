"""The pair-conditioned UNet of Semantica: an ADM UNet whose condition is a frozen image encoder's output.

The pooled vector (through an MLP) is added to the timestep embedding and reaches every ResBlock by scale-shift;
the token sequence (through a linear projection and a LayerNorm) is the cross-attention context at the attention
resolutions and in the middle block. With `token_layout` the network also learns where each token sits: a position
embedding per token for cross-attention, and the whole projected grid (flattened, through an MLP) beside the pooled
vector in the global embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_dict as config_from_dict, to_dict as config_to_dict
from .backbone import UNetBackbone
from .blocks import AttentionBlock, LayerNorm32, ResBlock, TimestepEmbedder


@dataclass
class UNetConfig:
    """Architecture of `PairConditionedUNet`.

    attention_resolutions are feature-map sizes in pixels at the native `resolution`: level i of channel_mult works at
    resolution / 2**i, and gets attention when that size is listed. The middle block always has attention. The
    architecture is fixed by `resolution`; the network still runs on any H, W that are multiples of
    `required_multiple()`.
    num_heads is used when head_dim is None; otherwise each attention layer has channels // head_dim heads.
    cond_drop_prob is stored here for training (classifier-free guidance dropout); the network does not read it.
    token_layout: read the tokens as a grid, not as an unordered set. A CNN's pooled vector and a bag of its
    tokens lose where each feature is, which is what tells a 3 from a 5 (on the demo digits: nearest neighbours
    find the class 0.91 of the time from the pooled vector, 0.97 from the token grid). Needs `num_tokens`, the
    encoder's token count (training fills it from the encoder); every condition must then have exactly that many.
    """

    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 64
    base_channels: int = 128
    channel_mult: tuple = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (32, 16, 8)
    num_heads: int = 4
    head_dim: Optional[int] = 64
    dropout: float = 0.0
    token_dim: int = 768
    pooled_dim: int = 768
    cond_drop_prob: float = 0.1
    token_layout: bool = False
    num_tokens: int = 0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if not self.channel_mult:
            raise ValueError("UNetConfig.channel_mult must list at least one level")
        level_sizes = [self.resolution // 2**i for i in range(len(self.channel_mult))]
        if self.resolution % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"UNetConfig.resolution={self.resolution} is not divisible by 2**{len(self.channel_mult) - 1} "
                f"(one halving per extra level of channel_mult={self.channel_mult})"
            )
        stray = [r for r in self.attention_resolutions if r not in level_sizes]
        if stray:
            raise ValueError(
                f"UNetConfig.attention_resolutions {stray} match no level; at resolution {self.resolution} the levels "
                f"work at {level_sizes} px"
            )
        if self.token_layout and self.num_tokens < 1:
            raise ValueError("UNetConfig.token_layout needs num_tokens, the encoder's token count (for example 49)")
        for mult in self.channel_mult:
            channels = self.base_channels * mult
            heads = channels // self.head_dim if self.head_dim else self.num_heads
            if heads < 1 or channels % heads or (self.head_dim and channels % self.head_dim):
                raise ValueError(
                    f"UNetConfig: {channels} channels cannot be split into heads "
                    f"(num_heads={self.num_heads}, head_dim={self.head_dim})"
                )

    def heads(self, channels: int) -> int:
        return channels // self.head_dim if self.head_dim else self.num_heads

    @property
    def context_dim(self) -> int:
        """Width the tokens are projected to: the widest level's channels."""
        return self.base_channels * max(self.channel_mult)

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        return config_from_dict(cls, data)


class ResAttnBlock(nn.Module):
    """A ResBlock, followed by an AttentionBlock at the attention resolutions."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, attention: bool):
        super().__init__()
        emb_dim = 4 * config.base_channels
        self.res = ResBlock(in_channels, out_channels, emb_dim, config.dropout)
        self.attn = (
            AttentionBlock(out_channels, config.heads(out_channels), config.context_dim) if attention else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context)


class PairConditionedUNet(UNetBackbone):
    """net(x, c_noise, tokens=None, pooled=None, drop_cond=None) -> out; see docs/design.md.

    Null condition: one learned token [1, 1, D_tok] and one learned pooled vector [1, D_pool]. With tokens=None the
    whole batch attends to that single token. In a mixed batch each dropped row's N tokens are all replaced by the
    null token: attention over N identical keys equals attention over that one key, so a dropped row gives the same
    output as a tokens=None call, for any N, with no attention mask (masks would push SDPA off its fast kernels).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        base = config.base_channels
        emb_dim = 4 * base

        self.time_embed = TimestepEmbedder(base, emb_dim)
        self.pooled_embed = nn.Sequential(
            nn.Linear(config.pooled_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.token_proj = nn.Linear(config.token_dim, config.context_dim)
        self.token_norm = LayerNorm32(config.context_dim)
        self.null_tokens = nn.Parameter(torch.randn(1, 1, config.token_dim) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(1, config.pooled_dim) * 0.02)
        if config.token_layout:
            self.token_positions = nn.Parameter(torch.zeros(1, config.num_tokens, config.context_dim))
            self.layout_embed = nn.Sequential(
                nn.Linear(config.num_tokens * config.context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )

        def block(in_channels: int, out_channels: int, level: int) -> ResAttnBlock:
            attention = config.resolution // 2**level in config.attention_resolutions
            return ResAttnBlock(in_channels, out_channels, config, attention)

        self._build_backbone(block, middle=lambda channels: [
            ResAttnBlock(channels, channels, config, attention=True), ResAttnBlock(channels, channels, config, False),
        ])

    def _condition(self, tokens, pooled, drop_cond, batch: int, dtype: torch.dtype):
        """(context [B, N, context_dim], pooled embedding [B, emb_dim]) with null rows substituted."""
        cfg = self.config
        if tokens is None:
            if pooled is not None:
                raise ValueError("PairConditionedUNet: pooled was given without tokens; pass both or neither")
            # One null token, or one per grid position: the same output as a batch whose rows are all dropped.
            tokens = self.null_tokens.expand(batch, cfg.num_tokens if cfg.token_layout else 1, cfg.token_dim)
            pooled = self.null_pooled.expand(batch, cfg.pooled_dim)
        else:
            if pooled is None:
                raise ValueError("PairConditionedUNet: tokens were given without pooled; pass both or neither")
            if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != cfg.token_dim:
                raise ValueError(
                    f"PairConditionedUNet expects tokens [{batch}, N, {cfg.token_dim}]; got {tuple(tokens.shape)} "
                    "(was the model trained with another encoder?)"
                )
            if cfg.token_layout and tokens.shape[1] != cfg.num_tokens:
                raise ValueError(
                    f"PairConditionedUNet reads a grid of {cfg.num_tokens} tokens; got {tokens.shape[1]} (was the model "
                    "trained with another encoder, or the encoder run at another image size?)"
                )
            if pooled.shape != (batch, cfg.pooled_dim):
                raise ValueError(
                    f"PairConditionedUNet expects pooled [{batch}, {cfg.pooled_dim}]; got {tuple(pooled.shape)}"
                )
            tokens, pooled = tokens.to(dtype), pooled.to(dtype)
            if drop_cond is not None:
                drop = drop_cond.to(device=tokens.device, dtype=torch.bool).reshape(batch)
                tokens = torch.where(drop[:, None, None], self.null_tokens.to(dtype), tokens)
                pooled = torch.where(drop[:, None], self.null_pooled.to(dtype), pooled)
        context = self.token_norm(self.token_proj(tokens))
        global_emb = self.pooled_embed(pooled)
        if cfg.token_layout:
            context = context + self.token_positions.to(context.dtype)
            global_emb = global_emb + self.layout_embed(context.flatten(1))
        return context, global_emb

    def forward(self, x, c_noise, tokens=None, pooled=None, drop_cond=None) -> torch.Tensor:
        c_noise = self._check_input(x, c_noise)
        context, pooled_emb = self._condition(tokens, pooled, drop_cond, x.shape[0], self.conv_in.weight.dtype)
        # SiLU once here rather than at the start of every ResBlock's embedding projection.
        emb = F.silu(self.time_embed(c_noise) + pooled_emb)
        return self._backbone(x, emb, context)
