"""Building blocks shared by the pair-conditioned UNet and the patch UNet.

Pure torch. Every block works under bf16/fp16 autocast (normalisations run in float32), on channels_last inputs,
under torch.compile (no data-dependent Python branches) and under gradient checkpointing (no state between calls).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn


# A host's stop check, called between blocks and between attention chunks, so a cancel takes effect within one
# block rather than one whole network call (ComfyUI: throw_exception_if_processing_interrupted). A context
# variable, so each thread (ComfyUI runs prompts in a worker thread) sees only its own.
_block_check: contextvars.ContextVar[Optional[Callable[[], None]]] = contextvars.ContextVar(
    "semantica_block_check", default=None
)


@contextlib.contextmanager
def block_check(check: Optional[Callable[[], None]]) -> Iterator[None]:
    """While active, the networks call `check()` between their blocks; it stops the call by raising."""
    token = _block_check.set(check)
    try:
        yield
    finally:
        _block_check.reset(token)


def run_block_check() -> None:
    check = _block_check.get()
    if check is not None and not torch.compiler.is_compiling():
        check()


# Queries per attention call are capped so one call does about this much work (queries x keys): at large canvases
# a single call would otherwise run for minutes without a chance to stop. Each query's result is independent of
# the others, so chunking changes nothing; below 2**24 / keys queries (a 64 x 64 map) there is one call.
ATTENTION_CHUNK_WORK = 2**24


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`scaled_dot_product_attention` [B, heads, L, d], in float32 when a CPU trains in bf16.

    The CPU's bf16 attention backward runs 1.4x (256 tokens) to 4x (49 to 64 tokens) slower than its float32 one at
    head width 32, while the forward costs the same (docs/speed.md), so training upcasts; sampling stays bf16.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`attention` over query chunks [B, heads, Lq, d], with the block check between chunks."""
    chunk = max(64, ATTENTION_CHUNK_WORK // max(k.shape[-2], 1))
    if q.shape[-2] <= chunk:
        return attention(q, k, v)
    outs = []
    for start in range(0, q.shape[-2], chunk):
        run_block_check()
        outs.append(attention(q[..., start : start + chunk, :], k, v))
    return torch.cat(outs, dim=-2)


def timestep_embedding(c_noise: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of a float noise level c_noise [B] (any scale the schedule chooses).

    Frequencies go from 1 down to 1/max_period, so both c_noise in [0, 1000) (VP) and ln(sigma)/4 (VE) are resolved.
    Always computed in float32: bf16 cannot represent c_noise * freq precisely enough for the fast frequencies.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
    args = c_noise.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """ADM's 32 groups, or the largest divisor of 32 that divides `channels` (narrow test and CPU models)."""
    return math.gcd(max_groups, channels)


class _MemoryFormat(torch.autograd.Function):
    """`x` in `memory_format`, whose gradient goes back in x's own format (a gradient in a second format would
    make every later sum with it a slow mixed-format add)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        ctx.channels_last = _is_channels_last(x)
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return grad.contiguous(memory_format=memory_format), None


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics, returned in the input dtype (bf16/fp16 statistics are too coarse).

    Also right for a network cast to bf16/fp16 as a whole: the affine parameters are upcast too (a no-op in float32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        if x.device.type == "cpu" and x.dtype == torch.bfloat16:
            # The CPU's kernels take float32 statistics of a bf16 input themselves (no float32 copy needed). Their
            # channels-last form is the fastest forward on maps of 1024 pixels or more, but its backward runs 4 to
            # 8 times slower than NCHW's, it is slow on smaller maps, and it gets the variance less exactly (rstd
            # off by 3e-4 where a group's mean is 8 standard deviations, under bf16's rounding; 2e-7 in NCHW), so
            # training and small maps normalise in NCHW.
            channels_last = _is_channels_last(x)
            if channels_last and (torch.is_grad_enabled() or x.shape[-2] * x.shape[-1] < 1024):
                out = F.group_norm(_MemoryFormat.apply(x, torch.contiguous_format), self.num_groups, weight, bias,
                                   self.eps)
                return _MemoryFormat.apply(out, torch.channels_last)
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input dtype (see GroupNorm32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def group_norm(channels: int) -> GroupNorm32:
    return GroupNorm32(norm_groups(channels), channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the residual branch it ends starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimestepEmbedder(nn.Module):
    """c_noise [B] -> sinusoid -> MLP -> emb [B, emb_dim]."""

    def __init__(self, freq_dim: int, emb_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(c_noise, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """ADM residual block with scale-shift (FiLM) conditioning.

    `emb` must already be activated (SiLU): the networks apply the SiLU once instead of in every block, which is the
    same maths as ADM with fewer kernels.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then a 3x3 convolution (no checkerboard artefacts of transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class GEGLU(nn.Module):
    """Gated-GELU input layer of a transformer MLP (Shazeer 2020): better per parameter than a plain GELU MLP."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(in_features, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


def _split_heads(x: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """[B, L, parts*C] -> `parts` views [B, heads, L, C/heads] (no copy; SDPA accepts the strides)."""
    b, length, _ = x.shape
    return x.view(b, length, parts, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, L, d] -> [B, L, heads*d]."""
    b, heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, heads * d)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block on the pixels of a feature map: self-attention, cross-attention, GEGLU MLP.

    x [B, C, H, W]; context [B, N, context_dim] (encoder tokens already projected to the network's context width).
    Each sub-block ends in a zero-initialised projection, so a fresh block is the identity. Queries, keys and values
    of the self-attention come from one fused linear layer; attention is `scaled_dot_product_attention`, which keeps
    the softmax in float32 under autocast.
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int, mlp_ratio: int = 4):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention at {channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = LayerNorm32(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.self_out = zero_module(nn.Linear(channels, channels))
        self.norm2 = LayerNorm32(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.cross_out = zero_module(nn.Linear(channels, channels))
        self.norm3 = LayerNorm32(channels)
        self.mlp = nn.Sequential(
            GEGLU(channels, mlp_ratio * channels), zero_module(nn.Linear(mlp_ratio * channels, channels))
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        channels_last = _is_channels_last(x)
        # Pixels as tokens [B, HW, C], made contiguous once here (free for channels_last inputs): the token ops that
        # follow would otherwise each copy a strided view.
        h = x.permute(0, 2, 3, 1).reshape(b, height * width, c).contiguous()

        q, k, v = _split_heads(self.qkv(self.norm1(h)), 3, self.num_heads)
        h = h + self.self_out(_merge_heads(chunked_attention(q, k, v)))

        (q,) = _split_heads(self.q(self.norm2(h)), 1, self.num_heads)
        k, v = _split_heads(self.kv(context), 2, self.num_heads)
        h = h + self.cross_out(_merge_heads(attention(q, k, v)))

        h = h + self.mlp(self.norm3(h))
        # Back to [B, C, H, W] in the input's memory format (mixed formats downstream would cost more copies);
        # the residual is inside the token stream.
        out = h.reshape(b, height, width, c).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()
