"""Precomputed embeddings (training caches): Embeds looked up by image id or row index instead of computed from pixels.

File: one safetensors file with `tokens` [N, T, D_tok] and `pooled` [N, D_pool]; metadata
`semantica_precomputed_format` (int), `encoder` (the producing encoder's spec, so the ids and dims carry over) and
`ids` (JSON list of N image ids, or null for index-only lookup). Rows are read lazily from the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open

from semantica_core.checkpoint import read_safetensors_header, write_safetensors_atomic
from semantica_core.embeds import Embeds
from semantica_core.encoders.base import EncoderFileError, EncoderSpec, ImageEncoder

PRECOMPUTED_FORMAT_VERSION = 1
PRECOMPUTED_KEY = "semantica_precomputed_format"


def save_precomputed(
    path, embeds: Embeds, encoder: ImageEncoder | EncoderSpec, ids: Sequence[str] | None = None
) -> Path:
    """Writes embeds (rows in order) made by `encoder`, optionally with one unique image id per row."""
    spec = encoder.spec if isinstance(encoder, ImageEncoder) else encoder
    if embeds.encoder_id != spec.encoder_id:
        raise ValueError(f"embeds come from encoder '{embeds.encoder_id}', not from '{spec.encoder_id}'")
    if ids is not None:
        ids = [str(i) for i in ids]
        if len(ids) != len(embeds) or len(set(ids)) != len(ids):
            raise ValueError(
                f"ids must be {len(embeds)} unique strings, one per row; got {len(ids)} ({len(set(ids))} unique)"
            )
    metadata = {
        PRECOMPUTED_KEY: json.dumps(PRECOMPUTED_FORMAT_VERSION),
        "encoder": json.dumps(spec.to_dict()),
        "ids": json.dumps(ids),
    }
    return write_safetensors_atomic(path, {"tokens": embeds.tokens, "pooled": embeds.pooled}, metadata)


class PrecomputedEncoder(ImageEncoder):
    """Looks up rows of a precomputed embeddings file; `forward(keys)` takes image ids (str) or row indices (int or
    an integer tensor), not pixels. Its encoder_id and dims are those of the encoder that produced the file."""

    def __init__(self, path):
        path = Path(path)
        header, metadata = read_safetensors_header(path, "precomputed embeddings file")
        try:
            version = json.loads(metadata[PRECOMPUTED_KEY])
            spec = EncoderSpec.from_dict(json.loads(metadata["encoder"]))
            ids = json.loads(metadata["ids"])
        except (KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
            raise EncoderFileError(
                f"{path} is not a valid precomputed embeddings file ({type(e).__name__}: {e}); "
                f"write it with semantica_core.encoders.save_precomputed"
            ) from e
        if not isinstance(version, int) or version > PRECOMPUTED_FORMAT_VERSION:
            raise EncoderFileError(f"precomputed embeddings file {path} has format {version!r}: update semantica")
        shapes = {k: tuple(header.get(k, {}).get("shape", ())) for k in ("tokens", "pooled")}
        n = shapes["tokens"][0] if shapes["tokens"] else 0
        if shapes["tokens"] != (n, spec.num_tokens, spec.token_dim) or shapes["pooled"] != (n, spec.pooled_dim):
            raise EncoderFileError(
                f"precomputed embeddings file {path}: tokens {shapes['tokens']} and pooled {shapes['pooled']} do not "
                f"match its encoder {spec.encoder_id} (tokens [N, {spec.num_tokens}, {spec.token_dim}], "
                f"pooled [N, {spec.pooled_dim}]); rewrite it"
            )
        if ids is not None and len(ids) != n:
            raise EncoderFileError(f"precomputed embeddings file {path}: {len(ids)} ids for {n} rows; rewrite it")
        super().__init__(spec)
        self.path = path
        self.ids = ids
        self._row_of = {image_id: row for row, image_id in enumerate(ids)} if ids is not None else None
        self._length = n
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)
        self._freeze()

    def __len__(self) -> int:
        return self._length

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def rows(self, keys) -> list[int]:
        if isinstance(keys, torch.Tensor):
            if keys.is_floating_point():
                raise ValueError(
                    "precomputed embeddings are looked up by image id or row index, not computed from pixels; "
                    "use the encoder file for images"
                )
            keys = keys.reshape(-1).tolist()
        rows = []
        for key in keys:
            if isinstance(key, str):
                if self._row_of is None:
                    raise KeyError(f"{self.path} stores no image ids; look rows up by index")
                if key not in self._row_of:
                    raise KeyError(f"image id {key!r} is not in {self.path}")
                rows.append(self._row_of[key])
            else:
                row = int(key)
                if not -self._length <= row < self._length:
                    raise IndexError(f"row {row} out of range for {self.path} ({self._length} rows)")
                rows.append(row % self._length)
        return rows

    @torch.no_grad()
    def forward(self, keys) -> Embeds:
        rows = self.rows(keys)
        if not rows:
            raise ValueError("no image ids or row indices given")
        with safe_open(str(self.path), framework="pt") as f:
            tokens_file, pooled_file = f.get_slice("tokens"), f.get_slice("pooled")
            tokens = torch.cat([tokens_file[r : r + 1] for r in rows])
            pooled = torch.cat([pooled_file[r : r + 1] for r in rows])
        return Embeds(tokens.to(self.device).float(), pooled.to(self.device).float(), self.encoder_id)

    def save(self, path):
        raise TypeError("a precomputed embeddings file is not an encoder file; copy the file instead")
