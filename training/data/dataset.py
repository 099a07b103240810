"""Pairs of images of one page, streamed: split by process (rank) and dataloader worker, resumable, and robust to
bad files (skipped and counted, see stats.py).

A sample is a target image and the condition for it: another image of the same page (`pairing="pairs"`) or the
target itself (`pairing="reconstruct"`, the paper's baseline). The condition travels as pixels at the encoder's
input size (embedded on the training device) or, with an embedding cache, as tokens and pooled vectors; with a
cache, pairs are also filtered here by the cosine similarity of their pooled embeddings.

Order: each epoch the units (pages, or tar shards) are shuffled with (seed, epoch), split by rank, then by worker.
Everything random about a page (which pair, crop, flip) is drawn from (seed, epoch, page key), so a resumed run
reproduces the samples an uninterrupted one would have seen. A sample's position is (epoch, unit index in this
worker's list, page offset in the unit, sample index in the page); resuming skips every position up to the last
consumed one.
"""
from __future__ import annotations

import itertools
import zlib
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .images import BadImage, decode_image, fit_square
from .sources import DataError, Page
from .stats import DataStats

PAIRINGS = ("pairs", "reconstruct")
MAX_PAIR_TRIES = 256  # candidate pairs examined per page before giving up on it


def assign_units(
    num_units: int, epoch: int, seed: int, rank: int, world_size: int, worker: int, num_workers: int,
    shuffle: bool = True, pad_to_world: bool = False,
) -> list[int]:
    """The unit indices one worker of one rank reads in `epoch`: a permutation of all units split by rank
    (`perm[rank::world]`), then by worker. With pad_to_world the permutation is padded by wrapping around so every
    rank gets the same count (pages: a rank must never run dry before the others); shards are never padded, so each
    shard is read exactly once per epoch."""
    order = list(range(num_units))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_units).tolist()
    if pad_to_world and num_units % world_size:
        extra = world_size - num_units % world_size
        order += (order * (extra // num_units + 1))[:extra]
    return order[rank::world_size][worker::num_workers]


def page_seed(seed: int, epoch: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode("utf-8"))])


class PairDataset(IterableDataset):
    def __init__(
        self,
        source,
        *,
        resolution: int,
        pairing: str = "pairs",
        cond_size: Optional[int] = None,
        cond_crop: str = "center",
        cache=None,
        pairs_per_page: int = 1,
        min_image_size: int = 32,
        crop: str = "random",
        flip: bool = True,
        filter_min_similarity: Optional[float] = None,
        filter_max_similarity: Optional[float] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        exclude_pages: Iterable[str] = (),
        epochs: Optional[int] = None,
        shuffle: bool = True,
    ):
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing '{pairing}': use one of {', '.join(PAIRINGS)}")
        if cache is None and cond_size is None:
            raise ValueError("a PairDataset needs cond_size (condition pixels) or an embedding cache")
        if source.kind == "shards" and source.num_units < world_size:
            raise DataError(
                f"{source.num_units} tar shard(s) cannot be split between {world_size} processes: write at least "
                f"{world_size} shards (ideally a multiple of processes x dataloader workers)"
            )
        self.source, self.cache = source, cache
        self.resolution, self.cond_size, self.cond_crop, self.pairing = resolution, cond_size, cond_crop, pairing
        self.pairs_per_page, self.min_image_size = pairs_per_page, min_image_size
        self.crop, self.flip = crop, flip
        self.filter_min, self.filter_max = filter_min_similarity, filter_max_similarity
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.exclude_pages = frozenset(exclude_pages)
        self.epochs, self.shuffle = epochs, shuffle
        self.resume_positions: dict[int, tuple] = {}
        self.resume_epoch = 0

    @property
    def filters_pairs(self) -> bool:
        return self.cache is not None and self.pairing == "pairs" and (
            self.filter_min is not None or self.filter_max is not None
        )

    def set_resume_state(self, state: Optional[dict], num_workers: int, log=print) -> None:
        """Continue after the positions in `state` (from DataPosition.state()). A state saved with another number
        of processes or workers cannot be mapped exactly: the data restarts at the next epoch instead."""
        self.resume_positions, self.resume_epoch = {}, 0
        if not state or not state.get("positions"):
            return
        positions = {int(w): tuple(p) for w, p in state["positions"].items()}
        if state.get("world_size") == self.world_size and state.get("num_workers") == max(num_workers, 1):
            self.resume_positions = positions
        else:
            self.resume_epoch = max(p[0] for p in positions.values()) + 1
            log(
                f"[data] the checkpoint's data position was saved with {state.get('world_size')} process(es) x "
                f"{state.get('num_workers')} worker(s), this run has {self.world_size} x {max(num_workers, 1)}: "
                f"the data restarts at epoch {self.resume_epoch}"
            )

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.iter_samples(worker, num_workers, DataStats())

    def iter_samples(self, worker: int, num_workers: int, stats: DataStats) -> Iterator[dict]:
        resume = self.resume_positions.get(worker)
        start_epoch = resume[0] if resume else self.resume_epoch
        for epoch in itertools.count(start_epoch):
            if self.epochs is not None and epoch >= self.epochs:
                break
            units = assign_units(
                self.source.num_units, epoch, self.seed, self.rank, self.world_size, worker, num_workers,
                shuffle=self.shuffle, pad_to_world=self.source.kind == "pages",
            )
            if not units:
                break  # more workers than units: this worker has nothing to read
            resuming_epoch = resume is not None and epoch == resume[0]
            produced = 0
            for unit_pos, unit in enumerate(units):
                if resuming_epoch and unit_pos < resume[1]:
                    continue
                resuming_unit = resuming_epoch and unit_pos == resume[1]
                for page_pos, page in enumerate(self.source.iter_unit(unit, stats)):
                    if resuming_unit and page_pos < resume[2]:
                        continue
                    if page.key in self.exclude_pages:
                        continue
                    resuming_page = resuming_unit and page_pos == resume[2]
                    for index, sample in enumerate(self.page_samples(page, epoch, stats)):
                        if resuming_page and index <= resume[3]:
                            continue
                        delta = stats.take_delta()
                        if resuming_page:
                            delta = {"counts": {"pairs_used": 1}}  # the page's other counts were reported already
                            resuming_page = False
                        sample.update(position=(epoch, unit_pos, page_pos, index), worker=worker, stats=delta)
                        produced += 1
                        yield sample
                    if resuming_page:
                        stats.take_delta()  # the page's counts went into the checkpoint with its consumed samples
            if produced == 0 and not resuming_epoch:
                break  # a whole epoch of this worker's share gave no pair: stop rather than spin forever
        # The counts of the pages after the last sample still reach the consumer (an empty sample carries them).
        yield {"empty": True, "worker": worker, "stats": stats.take_delta()}

    # -- one page ------------------------------------------------------------------------------------------------
    def page_samples(self, page: Page, epoch: int, stats: DataStats) -> Iterator[dict]:
        """Up to pairs_per_page samples of one page; counts what it skips."""
        stats.add("pages_seen")
        rng = page_seed(self.seed, epoch, page.key)
        images = list({image.id: image for image in page.images}.values())
        if self.pairing == "pairs" and len(images) < 2:
            stats.add("pages_one_image")
            return
        if self.cache is not None:
            missing = [image for image in images if image.id not in self.cache]
            for image in missing:
                stats.missing_from_cache(image.id, self.cache.skipped.get(image.id, "never embedded"))
            images = [image for image in images if image.id in self.cache]
        decoded: dict[int, Optional[object]] = {}

        def load(i: int):
            if i not in decoded:
                try:
                    decoded[i] = decode_image(images[i].read(), self.min_image_size)
                    stats.add("images_loaded")
                except BadImage as bad:
                    decoded[i] = None
                    stats.bad_image(images[i].id, bad.reason, str(bad).split(": ", 1)[-1])
            return decoded[i]

        made = 0
        for cond_i, target_i in self._candidates(len(images), rng):
            if made >= self.pairs_per_page:
                break
            if decoded.get(cond_i, 0) is None or decoded.get(target_i, 0) is None:
                continue
            if self.filters_pairs and cond_i != target_i:
                verdict = self._similarity_verdict(images[cond_i].id, images[target_i].id)
                if verdict:
                    stats.add(verdict)
                    continue
            target_img = load(target_i)
            cond_img = target_img if cond_i == target_i else load(cond_i) if self.cache is None else True
            if target_img is None or cond_img is None:
                continue
            flip = self.flip and bool(rng.random() < 0.5)
            # Not in place: fit_square may return a view of the decoded image, which the condition can share.
            sample = {"target": fit_square(target_img, self.resolution, self.crop, flip, rng).mul(2).sub(1),
                      "page": page.key}
            if self.cache is not None:
                tokens, pooled = self.cache.get(images[cond_i].id)
                sample.update(tokens=tokens, pooled=pooled)
            else:
                sample["cond"] = fit_square(cond_img, self.cond_size, self.cond_crop)
            stats.add("pairs_used")
            made += 1
            yield sample
        if made == 0:
            stats.add("pages_without_pair")

    def _candidates(self, n: int, rng: np.random.Generator) -> Iterator[tuple[int, int]]:
        """(condition, target) index pairs in random order: distinct images for pairs, the same for reconstruct."""
        if n == 0:
            return
        if self.pairing == "reconstruct":
            for i in rng.permutation(n).tolist():
                yield i, i
            return
        if n * (n - 1) <= MAX_PAIR_TRIES:
            pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
            for k in rng.permutation(len(pairs)).tolist():
                yield pairs[k]
            return
        tried = set()
        for _ in range(MAX_PAIR_TRIES):
            i, j = rng.choice(n, size=2, replace=False).tolist()
            if (i, j) not in tried:
                tried.add((i, j))
                yield i, j

    def _similarity_verdict(self, cond_id: str, target_id: str) -> Optional[str]:
        a = self.cache.pooled(cond_id).float()
        b = self.cache.pooled(target_id).float()
        similarity = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        return pair_verdict(similarity, self.filter_min, self.filter_max)


def pair_verdict(similarity: float, min_similarity: Optional[float], max_similarity: Optional[float]) -> Optional[str]:
    """None for a pair to keep, else the stats counter that says why it is dropped."""
    if max_similarity is not None and similarity > max_similarity:
        return "pairs_near_duplicate"
    if min_similarity is not None and similarity < min_similarity:
        return "pairs_unrelated"
    return None


def collate_pairs(items: list[dict]) -> dict:
    """Stacks a batch (all samples come from one worker) and merges their stats deltas. A batch of only the empty
    sample that ends a worker's stream is {"empty": True, "worker", "stats"}."""
    stats = DataStats.merged(s["stats"] for s in items).to_dict()
    samples = [s for s in items if not s.get("empty")]
    if not samples:
        return {"empty": True, "worker": items[0]["worker"], "stats": stats}
    batch = {"target": torch.stack([s["target"] for s in samples])}
    if "cond" in samples[0]:
        batch["cond"] = torch.stack([s["cond"] for s in samples])
    else:
        batch["tokens"] = torch.stack([s["tokens"] for s in samples])
        batch["pooled"] = torch.stack([s["pooled"] for s in samples])
    batch["pages"] = [s["page"] for s in samples]
    batch["worker"] = samples[0]["worker"]
    batch["position"] = samples[-1]["position"]
    batch["stats"] = stats
    return batch


class DataPosition:
    """Tracks, in the training process, what was consumed: the last position per worker and the data counts.
    Its state goes into checkpoints, so a resumed run neither repeats nor skips data, and its counts are totals."""

    def __init__(self, world_size: int, num_workers: int, state: Optional[dict] = None):
        self.world_size, self.num_workers = world_size, max(num_workers, 1)
        self.positions: dict[int, tuple] = {}
        self.stats = DataStats()
        if state:
            self.stats = DataStats.from_dict(state.get("stats"))
            if state.get("world_size") == world_size and state.get("num_workers") == self.num_workers:
                self.positions = {int(w): tuple(p) for w, p in state.get("positions", {}).items()}

    def update(self, batch: dict) -> None:
        if not batch.get("empty"):
            self.positions[batch["worker"]] = batch["position"]
        self.stats.merge(batch["stats"])

    def state(self) -> dict:
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "positions": {str(w): list(p) for w, p in self.positions.items()},
            "stats": self.stats.to_dict(),
        }


def make_loader(dataset: PairDataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_pairs,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
