"""Per-image random streams, so image i of a batch is the same whether it is sampled alone or in a batch."""
from __future__ import annotations

from typing import Sequence

import torch


class BatchNoise:
    """One CPU `torch.Generator` per image; draws are made on the CPU and then moved to `device`.

    Drawing on the CPU makes the numbers identical on every device (CUDA, MPS and CPU generators differ), and one
    generator per image makes image i depend only on `seeds[i]`: a batch of 8 and a batch of 1 with the same seed
    give the same image i, provided every draw asks each generator for the same per-image shape.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        if len(seeds) == 0:
            raise ValueError("BatchNoise needs at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in self.seeds]

    @classmethod
    def from_seed(cls, seed: int, count: int, device: torch.device | str = "cpu") -> "BatchNoise":
        """The streams of a request of `count` images from one seed: image i uses seed + i, so each image can be
        made again alone. Every sampling entry point draws its noise here."""
        seed, count = int(seed), int(count)
        # torch generators take seeds up to 2**64 - 1
        if seed < 0 or seed + count - 1 > 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"seed must be in 0..2**64-1 for all {count} images (seed + i); got {seed}")
        return cls([seed + i for i in range(count)], device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape_per_image: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise [B, *shape_per_image], drawn in float32 then cast: dtype never changes a draw."""
        return self._draw(shape_per_image).to(device=self.device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Noise shaped like x [B, ...], on x's device and dtype; x's batch must match the number of seeds."""
        if x.shape[0] != len(self):
            raise ValueError(f"BatchNoise has {len(self)} seeds but the tensor has batch {x.shape[0]}")
        return self._draw(x.shape[1:]).to(device=x.device, dtype=x.dtype)

    def _draw(self, shape_per_image: Sequence[int]) -> torch.Tensor:
        shape = tuple(int(s) for s in shape_per_image)
        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators])
