"""Data for pair-conditioned training: page sources, image decoding, pairing and filtering, embedding cache."""
from .cache import EmbedCache, embed_dataset, encoder_info
from .dataset import DataPosition, PairDataset, assign_units, collate_pairs, make_loader, pair_verdict
from .images import BadImage, condition_input, decode_image, fit_square
from .sources import DataError, FolderSource, ImageRef, ManifestSource, Page, TarShardSource, expand_shards, open_source
from .stats import DataStats

__all__ = [
    "BadImage", "DataError", "DataPosition", "DataStats", "EmbedCache", "FolderSource", "ImageRef", "ManifestSource",
    "Page", "PairDataset", "TarShardSource", "assign_units", "collate_pairs", "condition_input", "decode_image", "embed_dataset",
    "encoder_info", "expand_shards", "fit_square", "make_loader", "open_source", "pair_verdict",
]
