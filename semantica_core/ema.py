"""The exponential moving average of a network's weights that both trainers keep and the samplers load.

The shadow is float32 whatever the parameters are (bf16 cannot hold the small update a decay of 0.9999 makes).
Warm-up: update number n (0 for the first) uses decay min(decay, (1 + n) / (10 + n)), so a short run's average is
not stuck at its random initialisation (0.9999 alone needs ~10k updates to forget it). It averages the parameters
this process holds: the whole network, or its shard under FSDP (the average is elementwise).
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch


class EMA:
    def __init__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        named = [(name, p) for name, p in named_parameters if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.decay, self.warmup = decay, warmup
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """The decay of update number `update` (0-based)."""
        return min(self.decay, (1.0 + update) / (10.0 + update)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the current parameters; call it after each optimizer step."""
        weight = 1.0 - self.decay_at(self.updates)
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], weight)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The average in place of the parameters for the block (to read an EMA state dict, or sample with it)."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow by parameter name (CPU, float32)."""
        return {name: t.detach().cpu().contiguous() for name, t in zip(self.names, self.shadow)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = [n for n in self.names if n not in tensors]
        wrong = [n for n, t in zip(self.names, self.shadow) if n in tensors and tensors[n].shape != t.shape]
        if missing or wrong:
            raise ValueError(f"the saved EMA does not fit this network (missing {missing[:3]}, "
                             f"other shape {wrong[:3]})")
        for name, t in zip(self.names, self.shadow):
            t.copy_(tensors[name])
        self.updates = int(updates)
