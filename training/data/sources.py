"""Where pages (groups of related images) come from: a folder per page, a JSONL/CSV manifest, or tar shards.

Every source is a sequence of *units* that the dataset splits between processes and workers: a page for the
folder and manifest sources (the whole list is known up front), a shard for the tar source (pages are streamed
out of it). `iter_unit(i)` yields the unit's pages in a fixed order, so a position (unit, page offset) can be
resumed.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator, Optional

from semantica_core.image_files import is_image_name

TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")


class DataError(Exception):
    """A data set that cannot be used at all (missing path, empty, malformed manifest): says what to fix."""


@dataclass(frozen=True)
class ImageRef:
    """One image of a page. `id` is stable across runs (the key of the embedding cache); the bytes come from
    `data` (tar members, already read from the stream) or from the file at `path`."""

    id: str
    path: Optional[str] = None
    data: Optional[bytes] = field(default=None, repr=False, compare=False)

    def read(self):
        """What `decode_image` takes: the bytes, or the path (read there, so an unreadable file is a BadImage)."""
        return self.data if self.data is not None else self.path


@dataclass
class Page:
    key: str
    images: list[ImageRef]


class PageListSource:
    """Pages known up front; one unit per page."""

    kind = "pages"

    def __init__(self, pages: list[Page], description: str):
        self.pages = sorted(pages, key=lambda p: p.key)
        self.description = description
        if not self.pages:
            raise DataError(f"{description}: no pages with images found")

    def __len__(self) -> int:
        return len(self.pages)

    @property
    def num_units(self) -> int:
        return len(self.pages)

    def unit_name(self, index: int) -> str:
        return self.pages[index].key

    def iter_unit(self, index: int, stats=None) -> Iterator[Page]:
        yield self.pages[index]

    def iter_pages(self, stats=None) -> Iterator[Page]:
        yield from self.pages


class FolderSource(PageListSource):
    """`root/<page>/<image>.jpg|jpeg|png|webp`: each subfolder is a page; image ids are `<page>/<file>`."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DataError(f"data folder '{root}' does not exist")
        pages = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            files = sorted(f.name for f in os.scandir(entry.path) if f.is_file() and is_image_name(f.name))
            if files:
                images = [ImageRef(f"{entry.name}/{name}", os.path.join(entry.path, name)) for name in files]
                pages.append(Page(entry.name, images))
        super().__init__(pages, f"folder '{root}' (expected one subfolder of images per page)")


_PAGE_COLUMNS = ("page", "page_id", "page_key")
_PATH_COLUMNS = ("path", "image", "file")


def _pick(row: dict, names: tuple, where: str) -> str:
    for name in names:
        if row.get(name) not in (None, ""):
            return str(row[name])
    raise DataError(f"{where}: needs a column/field named one of {', '.join(names)}; got {', '.join(row)}")


class ManifestSource(PageListSource):
    """A JSONL file (`{"page": ..., "path": ...}` per line) or a CSV file with a header (`page,path`).

    Relative paths are relative to the manifest's folder; image ids are the paths as written.
    """

    def __init__(self, manifest: str):
        if not os.path.isfile(manifest):
            raise DataError(f"manifest '{manifest}' does not exist")
        base = os.path.dirname(os.path.abspath(manifest))
        rows = list(self._rows(manifest))
        by_page: dict[str, list[ImageRef]] = {}
        for where, page, path in rows:
            full = path if os.path.isabs(path) else os.path.join(base, path)
            by_page.setdefault(page, []).append(ImageRef(path, full))
        pages = [Page(key, images) for key, images in by_page.items()]
        super().__init__(pages, f"manifest '{manifest}'")

    @staticmethod
    def _rows(manifest: str):
        if manifest.lower().endswith(".csv"):
            with open(manifest, newline="", encoding="utf-8") as f:
                for line, row in enumerate(csv.DictReader(f), start=2):
                    where = f"{manifest}:{line}"
                    yield where, _pick(row, _PAGE_COLUMNS, where), _pick(row, _PATH_COLUMNS, where)
            return
        with open(manifest, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = f"{manifest}:{line}"
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as error:
                    raise DataError(f"{where}: not a JSON object ({error})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object with 'page' and 'path'")
                yield where, _pick(row, _PAGE_COLUMNS, where), _pick(row, _PATH_COLUMNS, where)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the sample key is the member path up to the first dot of its base name."""
    directory, base = os.path.split(name)
    stem, dot, rest = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), rest


class TarShardSource:
    """WebDataset-style tar shards, streamed; one unit per shard.

    A sample is the run of consecutive members sharing a key (`page42.0.jpg`, `page42.1.jpg`, `page42.json`): its
    image members are images of one page. The page key is the sample key, or the `page` field of the sample's
    `json` member when there is one; consecutive samples with the same page key are one page (so one image per
    sample works too). With `page_from="dir"` the page is the member's folder (`page42/0.jpg`) instead.
    Image ids are `<shard file name>/<member name>`.
    """

    kind = "shards"

    def __init__(self, shards: list[str], page_from: str = "key"):
        if not shards:
            raise DataError("no tar shards found")
        missing = [s for s in shards if not os.path.isfile(s)]
        if missing:
            raise DataError(f"tar shard(s) not found: {', '.join(missing[:5])}")
        if page_from not in ("key", "dir"):
            raise DataError(f"unknown tar page grouping '{page_from}': use 'key' or 'dir'")
        self.shards = list(shards)
        self.page_from = page_from
        self.description = f"{len(shards)} tar shard(s)"

    @property
    def num_units(self) -> int:
        return len(self.shards)

    def unit_name(self, index: int) -> str:
        return os.path.basename(self.shards[index])

    def iter_pages(self, stats=None) -> Iterator[Page]:
        for index in range(len(self.shards)):
            yield from self.iter_unit(index, stats)

    def iter_unit(self, index: int, stats=None) -> Iterator[Page]:
        shard = self.shards[index]
        shard_name = os.path.basename(shard)
        current_key, current_images = None, []
        for page_key, images in self._samples(shard, shard_name, stats):
            if page_key != current_key:
                if current_images:
                    yield Page(current_key, current_images)
                current_key, current_images = page_key, []
            current_images.extend(images)
        if current_images:
            yield Page(current_key, current_images)

    def _samples(self, shard: str, shard_name: str, stats):
        """(page key, [ImageRef]) per WebDataset sample, in shard order."""
        sample_key, images, meta = None, [], None

        def finish():
            page = sample_key
            if self.page_from == "key" and meta is not None:
                try:
                    page = str(json.loads(meta)["page"])
                except (ValueError, KeyError, TypeError):
                    pass
            return page, images

        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    if self.page_from == "dir":
                        if is_image_name(member.name):
                            page = os.path.dirname(member.name) or os.path.splitext(member.name)[0]
                            yield page, [ImageRef(f"{shard_name}/{member.name}", data=tar.extractfile(member).read())]
                        continue
                    key, suffix = _split_key(member.name)
                    if key != sample_key:
                        if sample_key is not None and images:
                            yield finish()
                        sample_key, images, meta = key, [], None
                    if is_image_name(member.name):
                        images.append(ImageRef(f"{shard_name}/{member.name}", data=tar.extractfile(member).read()))
                    elif suffix == "json":
                        meta = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as error:
            # A damaged shard loses its remaining pages, not the run.
            if stats is not None:
                stats.bad_shard(shard_name, f"{type(error).__name__}: {error}")
        if sample_key is not None and images:
            yield finish()


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec: str) -> list[str]:
    """`shards-{0000..0099}.tar` (WebDataset brace range), a glob, a directory of tars, or one tar file."""
    match = _BRACES.search(spec)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = len(lo)
        out = []
        for i in range(int(lo), int(hi) + 1):
            out.extend(expand_shards(spec[: match.start()] + str(i).zfill(width) + spec[match.end():]))
        return out
    if any(c in spec for c in "*?["):
        return sorted(glob.glob(spec))
    if os.path.isdir(spec):
        return sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(TAR_EXTENSIONS))
    return [spec]


def open_source(spec: str, format: str = "auto", tar_page_from: str = "key"):
    """The page source for `spec`: format 'folder', 'jsonl', 'csv', 'tar' or 'auto' (from the path)."""
    if format == "auto":
        lower = spec.lower()
        if lower.endswith(".jsonl") or lower.endswith(".json"):
            format = "jsonl"
        elif lower.endswith(".csv"):
            format = "csv"
        elif lower.endswith(TAR_EXTENSIONS) or _BRACES.search(spec) or any(c in spec for c in "*?["):
            format = "tar"
        elif os.path.isdir(spec):
            has_tars = any(n.lower().endswith(TAR_EXTENSIONS) for n in os.listdir(spec))
            has_dirs = any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(spec))
            format = "tar" if has_tars and not has_dirs else "folder"
        else:
            raise DataError(f"data '{spec}' does not exist (expected a folder, a .jsonl/.csv manifest or tar shards)")
    if format == "folder":
        return FolderSource(spec)
    if format in ("jsonl", "csv", "manifest"):
        return ManifestSource(spec)
    if format == "tar":
        return TarShardSource(expand_shards(spec), page_from=tar_page_from)
    raise DataError(f"unknown data format '{format}': use auto, folder, jsonl, csv or tar")
