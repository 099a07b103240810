"""Frozen image encoders behind one interface: images [B,3,H,W] in [0, 1] -> Embeds (tokens, pooled, encoder_id)."""
from semantica_core.encoders.base import (
    EncoderFileError,
    EncoderSpec,
    ImageEncoder,
    Preprocess,
    load_encoder,
    read_encoder_spec,
)
from semantica_core.encoders.export import EncoderExportError, export_encoder
from semantica_core.encoders.precomputed import PrecomputedEncoder, save_precomputed

__all__ = [
    "EncoderExportError",
    "EncoderFileError",
    "EncoderSpec",
    "ImageEncoder",
    "PrecomputedEncoder",
    "Preprocess",
    "export_encoder",
    "load_encoder",
    "read_encoder_spec",
    "save_precomputed",
]
