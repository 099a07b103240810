"""Atomic file writes: the one way every Semantica file (checkpoints, state files, exports, caches, sample grids,
JSON reports) is written.

A file is written under a temporary name in its own folder and renamed onto its name once complete and synced, so
a crash, a kill or a full disk never leaves half a file under the real name; the temporary file is removed on any
error. The temporary file is created as a new file normally is (mode 0666 less the umask), not with
`tempfile.mkstemp`'s 0600: a model trained by one user must stay loadable by a ComfyUI that runs as another.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path) -> None:
    """Makes a rename in folder `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write the file to; on success it is synced and renamed onto `path`.

    The temporary file exists (empty, with the umask's mode) when the block starts; the writer may open or replace
    it (safetensors, PIL), the finished file gets that mode back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask, like open()
    mode = os.stat(tmp).st_mode & 0o777
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that replaced the file (safetensors does) made it 0600
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, data: Any, indent: int = 1, sort_keys: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


def check_writable(folder) -> None:
    """Creates `folder` if needed and proves a file can be written there, so a run fails at its start rather than at
    its first save (os.access cannot tell: root passes it on folders it then cannot write, e.g. read-only mounts)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{secrets.token_hex(4)}.tmp"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)
