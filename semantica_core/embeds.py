"""The condition a pair-conditioned model sees: an image encoder's tokens and pooled vector."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Embeds:
    """Output of a frozen image encoder for a batch of images.

    tokens: [B, N, D_tokens] (cross-attention input); pooled: [B, D_pooled] (added to the time embedding);
    encoder_id: identity string of the encoder that produced them, checked against a model's encoder.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    encoder_id: str

    def __post_init__(self):
        if self.tokens.ndim != 3 or self.pooled.ndim != 2 or self.tokens.shape[0] != self.pooled.shape[0]:
            raise ValueError(
                f"Embeds need tokens [B,N,D] and pooled [B,D] with the same B; got {tuple(self.tokens.shape)} "
                f"and {tuple(self.pooled.shape)}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device=None, dtype=None) -> "Embeds":
        return Embeds(self.tokens.to(device=device, dtype=dtype), self.pooled.to(device=device, dtype=dtype), self.encoder_id)

    def select(self, index) -> "Embeds":
        """Rows by index (int, slice, list or tensor); keeps the batch dimension."""
        if isinstance(index, int):
            index = [index]
        return Embeds(self.tokens[index], self.pooled[index], self.encoder_id)

    def repeat_to(self, batch: int) -> "Embeds":
        """Cycles the rows to fill `batch` (one condition for many variations)."""
        index = torch.arange(batch) % len(self)
        return self.select(index)

    @staticmethod
    def cat(items: list["Embeds"]) -> "Embeds":
        ids = {e.encoder_id for e in items}
        if len(ids) != 1:
            raise ValueError(f"cannot concatenate embeds from different encoders: {sorted(ids)}")
        return Embeds(torch.cat([e.tokens for e in items]), torch.cat([e.pooled for e in items]), items[0].encoder_id)

    @staticmethod
    def mix(a: "Embeds", b: "Embeds", weight_b: float) -> "Embeds":
        """Linear interpolation (1 - w) * a + w * b; batches broadcast when one side has one row."""
        if a.encoder_id != b.encoder_id:
            raise ValueError(f"cannot mix embeds of encoder '{a.encoder_id}' with embeds of encoder '{b.encoder_id}'")
        if a.tokens.shape[1:] != b.tokens.shape[1:]:
            raise ValueError(f"cannot mix embeds of shapes {tuple(a.tokens.shape)} and {tuple(b.tokens.shape)}")
        n = max(len(a), len(b))
        a, b = a.repeat_to(n), b.repeat_to(n)
        w = float(weight_b)
        return Embeds(torch.lerp(a.tokens, b.tokens, w), torch.lerp(a.pooled, b.pooled, w), a.encoder_id)
