"""Writing page data sets in the other formats: a manifest (JSONL/CSV) or WebDataset-style tar shards from
any source. Used to convert a folder data set, and by tests."""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile

from semantica_core.atomic import atomic_path

from .sources import ImageRef


def _image_bytes(image: ImageRef) -> bytes:
    if image.data is not None:
        return image.data
    with open(image.path, "rb") as f:
        return f.read()


def write_manifest(source, path: str) -> str:
    """One (page, path) row per image; paths relative to the manifest's folder when the images are under it."""
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    for page in source.iter_pages():
        for image in page.images:
            if image.path is None:
                raise ValueError("write_manifest needs images on disk (a folder or manifest source)")
            rows.append((page.key, os.path.relpath(os.path.abspath(image.path), base)))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        if path.lower().endswith(".csv"):
            writer = csv.writer(f)
            writer.writerow(["page", "path"])
            writer.writerows(rows)
        else:
            for page, image_path in rows:
                f.write(json.dumps({"page": page, "path": image_path}) + "\n")
    return path


def write_tar_shards(source, out_dir: str, num_shards: int, prefix: str = "pages") -> list[str]:
    """Pages dealt round-robin into num_shards tars; page `k`'s images become members `<k>.<i>.<ext>` (one
    WebDataset sample per page). Page keys with dots or slashes are stored in a `json` member instead."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{prefix}-{i:05d}.tar") for i in range(num_shards)]
    tars = [tarfile.open(p + ".tmp", "w") for p in paths]
    try:
        for n, page in enumerate(source.iter_pages()):
            tar = tars[n % num_shards]
            safe = page.key.replace(".", "_").replace("/", "_")
            key = safe if safe == page.key else f"{safe}_{n:08d}"

            def add(name: str, data: bytes):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

            for i, image in enumerate(page.images):
                ext = os.path.splitext(image.id)[1].lower() or ".jpg"
                add(f"{key}.{i:04d}{ext}", _image_bytes(image))
            if key != page.key:
                add(f"{key}.json", json.dumps({"page": page.key}).encode("utf-8"))
    finally:
        for tar in tars:
            tar.close()
    for path in paths:
        os.replace(path + ".tmp", path)
    return paths
