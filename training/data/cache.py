"""A precomputed embedding cache: one frozen encoder's tokens and pooled vectors per image id, in safetensors.

Layout of a cache folder (written by `semantica embed`, one process per shard):
  cache.json                                    encoder info (id, dims), number of shards, dtype
  embeds-00000-of-00004-0000.safetensors        tensors `tokens` [M, N, D] and `pooled` [M, D]
  embeds-00000-of-00004.index.json              the shard's files with the image ids of their rows, the
                                                images it skipped; written last, so it marks a complete shard
"""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from semantica_core import atomic

from .images import BadImage, condition_input, decode_image, fit_square
from .sources import DataError
from .stats import DataStats

CACHE_FORMAT = "semantica-embed-cache"
CACHE_VERSION = 1


def write_json_atomic(path: str, data) -> None:
    atomic.write_json_atomic(path, data, sort_keys=True)


def encoder_info(encoder) -> dict:
    """What a checkpoint records of the encoder: encoder_id, token_dim, pooled_dim, num_tokens."""
    return {
        "encoder_id": encoder.encoder_id,
        "token_dim": int(encoder.token_dim),
        "pooled_dim": int(encoder.pooled_dim),
        "num_tokens": int(encoder.num_tokens),
    }


def shard_prefix(shard: int, num_shards: int) -> str:
    return f"embeds-{shard:05d}-of-{num_shards:05d}"


class EmbedCache:
    """Reads a cache folder. Files are opened lazily in the process that reads (safe in dataloader workers)."""

    def __init__(self, root: str):
        self.root = root
        meta_path = os.path.join(root, "cache.json")
        if not os.path.isfile(meta_path):
            raise DataError(f"'{root}' is not an embedding cache (no cache.json): build one with `semantica embed`")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != CACHE_FORMAT:
            raise DataError(f"'{meta_path}' is not a Semantica embedding cache")
        self.info: dict = meta["encoder"]
        self.num_shards: int = meta["num_shards"]
        self.rows: dict[str, tuple[str, int]] = {}
        self.skipped: dict[str, str] = {}
        found = set()
        for index_path in sorted(glob.glob(os.path.join(root, "embeds-*.index.json"))):
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
            if index["num_shards"] != self.num_shards:
                continue  # left over from an earlier run with another shard count
            found.add(index["shard"])
            for entry in index["files"]:
                for row, image_id in enumerate(entry["ids"]):
                    self.rows[image_id] = (entry["file"], row)
            self.skipped.update(index.get("skipped", {}))
        self.missing_shards = sorted(set(range(self.num_shards)) - found)
        if not found:
            raise DataError(f"embedding cache '{root}' has no finished shard: run `semantica embed` to the end")
        self._handles: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.rows

    def _handle(self, file: str):
        handle = self._handles.get(file)
        if handle is None:
            handle = safe_open(os.path.join(self.root, file), framework="pt")
            self._handles[file] = handle
        return handle

    def get(self, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [N, D], pooled [D]) of one image, as stored (float16 or float32)."""
        file, row = self.rows[image_id]
        handle = self._handle(file)
        return handle.get_slice("tokens")[row], handle.get_slice("pooled")[row]

    def pooled(self, image_id: str) -> torch.Tensor:
        file, row = self.rows[image_id]
        return self._handle(file).get_slice("pooled")[row]


class _ImagesOfShard(IterableDataset):
    """Every image of the source's units for one cache shard, decoded at the encoder's input size."""

    def __init__(self, source, units: list[int], image_size: int, crop: str, min_image_size: int):
        self.source, self.units = source, units
        self.image_size, self.crop, self.min_image_size = image_size, crop, min_image_size

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        units = self.units if info is None else self.units[info.id :: info.num_workers]
        stats = DataStats()
        for unit in units:
            for page in self.source.iter_unit(unit, stats):
                for image in page.images:
                    try:
                        img = decode_image(image.read(), self.min_image_size)
                        yield image.id, fit_square(img, self.image_size, self.crop), None, stats.take_delta()
                    except BadImage as bad:
                        yield image.id, None, str(bad), stats.take_delta()
        delta = stats.take_delta()
        if delta["counts"]:
            yield None, None, None, delta


def _collate(items):
    return items


def embed_dataset(
    source,
    encoder,
    out_dir: str,
    shard: int = 0, num_shards: int = 1,  # one slice of the units: several processes embed one source
    batch_size: int = 32,
    device: str = "cpu",
    dtype: str = "float16",
    images_per_file: int = 50_000,
    num_workers: int = 2,
    min_image_size: int = 32,
    progress: bool = True,
    log=print,
) -> dict:
    """Embeds the images of `source` units u with u % num_shards == shard into `out_dir`; returns a summary."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard must be in 0..{num_shards - 1}; got {shard}")
    store_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    os.makedirs(out_dir, exist_ok=True)
    info = encoder_info(encoder)
    meta_path = os.path.join(out_dir, "cache.json")
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "encoder": info, "num_shards": num_shards, "dtype": dtype}
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("encoder") != info or old.get("num_shards") != num_shards:
            raise DataError(
                f"'{out_dir}' holds a cache of another encoder or shard count ({old.get('encoder', {}).get('encoder_id')}, "
                f"{old.get('num_shards')} shards): write to an empty folder"
            )
    write_json_atomic(meta_path, meta)  # every shard writes the same content; atomic, so concurrent writers are safe

    prefix = shard_prefix(shard, num_shards)
    units = [u for u in range(source.num_units) if u % num_shards == shard]
    cond_size, cond_crop = condition_input(encoder)
    images = _ImagesOfShard(source, units, cond_size, cond_crop, min_image_size)
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    encoder = encoder.to(device).eval()
    stats = DataStats()
    files, skipped, seen = [], {}, set()
    pending_ids, pending_tokens, pending_pooled = [], [], []
    start = time.time()

    def flush():
        if not pending_ids:
            return
        name = f"{prefix}-{len(files):04d}.safetensors"
        tensors = {"tokens": torch.cat(pending_tokens).contiguous(), "pooled": torch.cat(pending_pooled).contiguous()}
        with atomic.atomic_path(os.path.join(out_dir, name)) as tmp:
            save_file(tensors, str(tmp), metadata={"encoder_id": info["encoder_id"]})
        files.append({"file": name, "ids": list(pending_ids)})
        pending_ids.clear(), pending_tokens.clear(), pending_pooled.clear()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"embed shard {shard}/{num_shards}", unit="img")
    with torch.no_grad():
        for batch in loader:
            ids, pixels = [], []
            for image_id, tensor, error, delta in batch:
                stats.merge(delta)
                if image_id is None or image_id in seen:
                    continue
                seen.add(image_id)
                if tensor is None:
                    skipped[image_id] = error
                else:
                    ids.append(image_id)
                    pixels.append(tensor)
            if pixels:
                embeds = encoder(torch.stack(pixels).to(device))
                pending_ids.extend(ids)
                pending_tokens.append(embeds.tokens.to("cpu", store_dtype))
                pending_pooled.append(embeds.pooled.to("cpu", store_dtype))
                if bar is not None:
                    bar.update(len(ids))
            if len(pending_ids) >= images_per_file:
                flush()
    flush()
    if bar is not None:
        bar.close()
    embedded = sum(len(f["ids"]) for f in files)
    index = {"shard": shard, "num_shards": num_shards, "files": files, "skipped": skipped, "stats": stats.to_dict()}
    write_json_atomic(os.path.join(out_dir, f"{prefix}.index.json"), index)
    seconds = time.time() - start
    summary = {"shard": shard, "num_shards": num_shards, "embedded": embedded, "skipped": len(skipped), "seconds": seconds}
    log(f"[embed] shard {shard}/{num_shards}: {embedded} images embedded, {len(skipped)} skipped, {seconds:.1f} s -> {out_dir}")
    for image_id, reason in list(skipped.items())[:20]:
        log(f"[embed]   skipped {image_id}: {reason}")
    return summary
