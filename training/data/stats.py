"""Counts of what the data pipeline used and skipped, mergeable across dataloader workers and processes."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Optional

# Every counter, in report order, with what it means.
COUNTERS = {
    "pages_seen": "pages read (held-out pages excluded)",
    "pages_one_image": "pages skipped: only one image, no pair possible",
    "pages_without_pair": "pages skipped: fewer than two usable images, or every pair filtered out",
    "images_loaded": "images decoded",
    "images_unreadable": "image reads skipped: unreadable or truncated file",
    "images_too_small": "image reads skipped: shorter side below data.min_image_size",
    "images_missing_from_cache": "images skipped: not in the embedding cache",
    "pairs_near_duplicate": "pairs filtered: cosine similarity above data.filter_max_similarity",
    "pairs_unrelated": "pairs filtered: cosine similarity below data.filter_min_similarity",
    "pairs_used": "pairs trained on",
    "shards_damaged": "tar shards cut short by a read error",
}
MAX_LISTED = 200  # bad files listed by name in a summary


class DataStats:
    """Counters plus the names of bad files (each listed once). `take_delta()` hands the changes since the last
    call to whoever consumes samples, so counts travel with the batches out of worker processes."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.bad_files: dict[str, str] = {}
        self._delta_counts: Counter = Counter()
        self._delta_bad: dict[str, str] = {}

    def add(self, key: str, n: int = 1):
        if key not in COUNTERS:
            raise KeyError(f"unknown data counter '{key}'")
        self.counts[key] += n
        self._delta_counts[key] += n

    def bad_image(self, image_id: str, reason: str, detail: str = ""):
        self.add(f"images_{reason}")
        self._note_bad(image_id, f"{reason} ({detail})" if detail else reason)

    def missing_from_cache(self, image_id: str, reason: str):
        self.add("images_missing_from_cache")
        self._note_bad(image_id, f"not in the embedding cache ({reason})")

    def bad_shard(self, shard: str, detail: str):
        self.add("shards_damaged")
        self._note_bad(shard, f"damaged shard ({detail})")

    def _note_bad(self, name: str, reason: str):
        if name not in self.bad_files:
            self.bad_files[name] = reason
            self._delta_bad[name] = reason

    def take_delta(self) -> dict:
        delta = {"counts": dict(self._delta_counts), "bad_files": dict(self._delta_bad)}
        self._delta_counts.clear()
        self._delta_bad.clear()
        return delta

    def merge(self, delta: dict) -> "DataStats":
        """Adds a delta (from take_delta or to_dict of another DataStats)."""
        for key, n in delta.get("counts", {}).items():
            self.counts[key] += n
        for name, reason in delta.get("bad_files", {}).items():
            self.bad_files.setdefault(name, reason)
        return self

    @staticmethod
    def merged(items: Iterable[dict]) -> "DataStats":
        out = DataStats()
        for item in items:
            out.merge(item)
        return out

    def to_dict(self) -> dict:
        return {"counts": {k: int(self.counts.get(k, 0)) for k in COUNTERS}, "bad_files": dict(self.bad_files)}

    @staticmethod
    def from_dict(data: Optional[dict]) -> "DataStats":
        return DataStats().merge(data or {})

    def report(self) -> str:
        """Human-readable lines: non-zero counters, then bad files by name (at most MAX_LISTED)."""
        lines = [f"  {key}: {self.counts[key]}  ({COUNTERS[key]})" for key in COUNTERS if self.counts.get(key)]
        if self.bad_files:
            lines.append(f"  bad files ({len(self.bad_files)}):")
            for name, reason in list(sorted(self.bad_files.items()))[:MAX_LISTED]:
                lines.append(f"    {name}: {reason}")
            if len(self.bad_files) > MAX_LISTED:
                lines.append(f"    ... and {len(self.bad_files) - MAX_LISTED} more")
        return "\n".join(lines) if lines else "  (nothing read yet)"
