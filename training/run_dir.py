"""The run folder of `semantica train pairs`: its lock, its log, and its training-state checkpoints.

  config.json                      the resolved training config
  train.lock                       held while a run trains here (pid, host, start): a second run stops at once
  train.log                        what the run printed
  checkpoints/step-00001000/       the training state, written to .tmp-step-00001000/ and renamed when complete:
      state.safetensors            semantica_core.train_state: network, EMA, optimizer, random streams, step, config,
                                   data position (process 0)
      state-rank<r>.safetensors    process r > 0: its random streams and data position (and its EMA shard under FSDP)
  samples/step-00001000.png        variations of fixed held-out conditions (also in TensorBoard)
  tensorboard/                     scalars: loss, learning rate, images/s, gradient norm
  model.safetensors                the export (semantica_core.checkpoint format: raw + EMA weights)
  summary.json                     steps, time, and the data counts (what was used and skipped)

FSDP: the sharded optimizer state cannot be written as safetensors here, so FSDP runs need --fsdp-pickled-state,
which adds accelerate's own (pickled) files to each checkpoint folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
from typing import Optional

from semantica_core.atomic import fsync_dir
from semantica_core.checkpoint import CheckpointError
from semantica_core.config import ConfigError
from semantica_core.train_state import check_train_state

CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
LOCK_NAME = "train.lock"
STATE_NAME = "state.safetensors"


def state_file(checkpoint: str, rank: int) -> str:
    return os.path.join(checkpoint, STATE_NAME if rank == 0 else f"state-rank{rank}.safetensors")


# -- lock -----------------------------------------------------------------------------------------------------------

_LOCKS: dict[str, int] = {}  # locks this process holds, by folder: a lock lives as long as its process


def lock(output: str) -> None:
    """Takes output/train.lock for this process, or raises ConfigError naming the run that holds it.

    An flock: the kernel drops it when the process ends however it ends (SIGKILL too), so there is no stale lock to
    clean up. Only where fcntl exists (not on Windows)."""
    try:
        import fcntl
    except ImportError:
        return
    key = os.path.realpath(output)
    if key in _LOCKS:
        return
    os.makedirs(output, exist_ok=True)
    fd = os.open(os.path.join(output, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        raise ConfigError(
            f"{output} is in use by another training run (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')}); wait for it to end or stop it, or "
            f"give another --output"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    _LOCKS[key] = fd


def unlock(output: str) -> None:
    fd = _LOCKS.pop(os.path.realpath(output), None)
    if fd is not None:
        os.close(fd)


def prepare(output: str) -> None:
    """Locks the folder (first: nothing in it is touched while another run owns it), creates its subfolders and
    removes the temporary checkpoint folders of a run killed while saving."""
    lock(output)
    root = os.path.join(output, "checkpoints")
    os.makedirs(root, exist_ok=True)
    os.makedirs(os.path.join(output, "samples"), exist_ok=True)
    for name in os.listdir(root):
        if name.startswith(".tmp-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


# -- log ------------------------------------------------------------------------------------------------------------


class RunLog:
    """Prints a line (above the progress bar) and appends it to output/train.log; silent on processes other than 0."""

    def __init__(self, output: str, is_main: bool):
        self.path, self.is_main = os.path.join(output, "train.log"), is_main

    def __call__(self, message: str) -> None:
        if not self.is_main:
            return
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


# -- checkpoints ----------------------------------------------------------------------------------------------------


def checkpoint_dirs(output: str) -> list[tuple[int, str]]:
    """The checkpoint folders (step, path) of a run folder, oldest first: the complete ones (renamed from their
    temporary folder) and those of older versions, which `check_checkpoint` refuses with a message."""
    root = os.path.join(output, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = CHECKPOINT_NAME.match(name)
        path = os.path.join(root, name)
        if match and any(os.path.isfile(os.path.join(path, f)) for f in (STATE_NAME, "trainer_state.json")):
            found.append((int(match.group(1)), path))
    return sorted(found)


def check_checkpoint(path: str, pickled_ok: bool = False) -> dict:
    """The metadata of process 0's state file of a complete, readable checkpoint; ConfigError saying what is wrong
    otherwise. Every state file is checked from its header (a truncated file fails), no tensor is loaded."""
    if not os.path.isfile(state_file(path, 0)):
        raise ConfigError(
            "written by an older version of semantica (model.safetensors, optimizer.safetensors, trainer_state.json), "
            "which this version cannot resume; its weights are in the run's model.safetensors export: start a new run "
            "in another --output, or finish this one with the version that wrote it"
        )
    try:
        metadata = check_train_state(state_file(path, 0), "training-state file")
        info = json.loads(metadata.get("info", "{}"))
        if info.get("state") == "accelerate" and not pickled_ok:
            raise ConfigError("saved in accelerate's pickled FSDP format: resume it with --fsdp-pickled-state")
        for rank in range(1, int(info.get("world_size", 1))):
            check_train_state(state_file(path, rank), "training-state file")
        return metadata
    except (OSError, ValueError, CheckpointError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"incomplete or corrupt ({error})") from None


def find_resume_dir(resume: str, output: str, log=print, pickled_ok: bool = False) -> Optional[str]:
    """`latest` -> the newest usable checkpoint of `output` (None when there is none; unusable ones are skipped
    with a message); else a checkpoint folder, or a run folder whose newest usable checkpoint is taken."""
    if resume != "latest" and any(os.path.isfile(os.path.join(resume, f)) for f in (STATE_NAME, "trainer_state.json")):
        try:
            check_checkpoint(resume, pickled_ok)
        except ConfigError as error:
            raise ConfigError(f"--resume {resume}: the checkpoint is {error}") from None
        return resume
    folder = output if resume == "latest" else resume
    found = checkpoint_dirs(folder)
    if not found:
        if resume == "latest":
            return None
        raise ConfigError(f"--resume {resume}: no training checkpoint there (expected checkpoints/step-N/)")
    problems = []
    for _, path in reversed(found):
        try:
            check_checkpoint(path, pickled_ok)
            return path
        except ConfigError as error:
            log(f"[train] skipping checkpoint {path}: {error}")
            problems.append(f"{path}: {error}")
    raise ConfigError(
        f"no usable training checkpoint in {folder}/checkpoints ({'; '.join(problems)}); delete them to start over, "
        f"or resume from another folder"
    )


def stored_config(checkpoint: str) -> dict:
    """The training config a checkpoint was written with."""
    return json.loads(check_checkpoint(checkpoint, pickled_ok=True)["config"])


def temporary_checkpoint(output: str, step: int, create: bool) -> str:
    """The temporary folder of the checkpoint of `step`, made fresh with `create` (process 0 creates it, every
    process writes into it)."""
    tmp = os.path.join(output, "checkpoints", f".tmp-step-{step:08d}")
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    return tmp


def commit_checkpoint(output: str, step: int, keep: int) -> str:
    """Renames the finished temporary folder of `step` onto its name (a kill or a full disk before this leaves the
    earlier checkpoints as they were) and deletes all but the `keep` newest checkpoints."""
    root = os.path.join(output, "checkpoints")
    tmp, final = os.path.join(root, f".tmp-step-{step:08d}"), os.path.join(root, f"step-{step:08d}")
    fsync_dir(tmp)
    if os.path.isdir(final):  # a checkpoint of this step from an earlier attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for _, old in checkpoint_dirs(output)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def discard_checkpoint(output: str, step: int) -> None:
    shutil.rmtree(os.path.join(output, "checkpoints", f".tmp-step-{step:08d}"), ignore_errors=True)
