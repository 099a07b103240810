"""The resume state of a training run, the same for both trainers: one safetensors file, written atomically, that
nothing needs to unpickle.

Tensors, by section: `network.<name>` (raw weights), `ema.<name>` (the float32 EMA, semantica_core.ema),
`optimizer.<param index>.<name>`, `rng.<stream>` (named torch generators, and with `global_rng` torch's CPU and CUDA
streams and numpy's), plus tensors of the trainer's own under names it picks. Metadata, JSON per key:
`semantica_train_state` (the format), `step`, `config`, `optimizer` (param groups and non-tensor state), `ema`
(updates, decay), `rng` (the generators' devices, numpy's and Python's state) and `info` (the trainer's own values).
Every section but step and config is optional: a process of a multi-process run stores only what it owns.
"""
from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .checkpoint import CheckpointError, load_safetensors_tensors, read_safetensors_header, write_safetensors_atomic
from .ema import EMA

FORMAT = 2  # 1: the single-image state files before this module (read too, see _upgrade_v1)
FORMAT_KEY = "semantica_train_state"
IMPLEMENTATION_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def adamw(params, device, **options) -> torch.optim.AdamW:
    """The trainers' AdamW, fused where torch has the kernel (CPU and CUDA): one kernel over all parameters instead
    of torch's default on a CPU, a loop of small ops per tensor (4.5x the optimizer's time for the tiny presets). The
    update is AdamW's to float32 rounding, and the state (step, two moments) has the same names and shapes."""
    return torch.optim.AdamW(params, fused=torch.device(device).type in ("cpu", "cuda"), **options)


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Gives every state tensor of the optimizer its parameter's strides (values unchanged). The fused AdamW walks a
    parameter, its gradient and its moments as flat memory, so channels-last weights with NCHW moments (a state read
    from a file, or a network put into channels-last after its optimizer had state) would pair the wrong elements."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_strided(param.shape, param.stride(), dtype=value.dtype,
                                                      device=value.device).copy_(value)


def save_train_state(
    path,
    *,
    step: int,
    config: dict,
    network: Optional[dict] = None,
    ema: Optional[EMA] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    generators: Optional[dict[str, torch.Generator]] = None,
    global_rng: bool = False,
    tensors: Optional[dict] = None,
    info: Optional[dict] = None,
) -> Path:
    """Writes the state to `path` atomically. `network` is a state dict; `tensors` and `info` are the trainer's own."""
    out = {k: v.detach().cpu().contiguous() for k, v in (tensors or {}).items()}
    metadata = {FORMAT_KEY: json.dumps(FORMAT), "step": json.dumps(int(step)), "config": json.dumps(config),
                "info": json.dumps(info or {})}
    for name, value in (network or {}).items():
        out[f"network.{name}"] = value.detach().cpu().contiguous()
    if ema is not None:
        out.update({f"ema.{name}": value for name, value in ema.state_dict().items()})
        metadata["ema"] = json.dumps({"updates": ema.updates, "decay": ema.decay})
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars = {}
        for index, values in state["state"].items():
            for name, value in values.items():
                if torch.is_tensor(value):
                    out[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}.{name}"] = value
        metadata["optimizer"] = json.dumps({"param_groups": state["param_groups"], "scalars": scalars})
    if generators or global_rng:
        rng: dict = {"generators": {}}
        for name, generator in (generators or {}).items():
            out[f"rng.{name}"] = generator.get_state()
            rng["generators"][name] = generator.device.type
        if global_rng:
            out["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                out["rng.cuda"] = torch.cuda.get_rng_state()
            kind, keys, pos, has_gauss, cached = np.random.get_state()
            out["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
            rng["numpy"] = [kind, int(pos), int(has_gauss), float(cached)]
            rng["python"] = random.getstate()
        metadata["rng"] = json.dumps(rng)
    return write_safetensors_atomic(path, out, metadata)


@dataclass
class TrainState:
    """A state file as read: its tensors and metadata, with the methods that put them back into a run."""

    path: Path
    step: int
    config: dict
    info: dict
    tensors: dict = field(repr=False)
    metadata: dict = field(repr=False)

    def section(self, name: str) -> dict:
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def has(self, name: str) -> bool:
        return name in self.metadata or any(k.startswith(name + ".") for k in self.tensors)

    def load_network(self, network: torch.nn.Module) -> None:
        network.load_state_dict(self.section("network"))

    def load_ema(self, ema: EMA) -> None:
        meta = json.loads(self.metadata.get("ema", "{}"))
        ema.load_state_dict(self.section("ema"), meta.get("updates", self.step))

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        meta = json.loads(self.metadata["optimizer"])
        state: dict = {}
        for key, value in list(self.section("optimizer").items()) + list(meta["scalars"].items()):
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        # The saved hyperparameters, run by this optimizer's implementation (fused or not is how this process runs,
        # not part of the run: a state saved before the fused AdamW, or on another device, resumes fused here).
        groups = [{**saved, **{key: current[key] for key in IMPLEMENTATION_OPTIONS if key in current}}
                  for saved, current in zip(meta["param_groups"], optimizer.param_groups)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        match_parameter_layouts(optimizer)

    def load_rng(self, generators: Optional[dict[str, torch.Generator]] = None, global_rng: bool = False) -> None:
        """Restores the named generators (one saved on another device type restarts from its seed, with a warning)
        and, with `global_rng`, torch's, numpy's and Python's global streams."""
        meta = json.loads(self.metadata.get("rng", "{}"))
        for name, generator in (generators or {}).items():
            if meta.get("generators", {}).get(name) == generator.device.type:
                generator.set_state(self.tensors[f"rng.{name}"])
            else:
                warnings.warn(f"{self.path}: random stream '{name}' was saved on another device type; it restarts "
                              "from the seed", stacklevel=2)
        if global_rng and "numpy" in meta:
            torch.set_rng_state(self.tensors["rng.torch"])
            if "rng.cuda" in self.tensors and torch.cuda.is_available():
                torch.cuda.set_rng_state(self.tensors["rng.cuda"])
            kind, pos, has_gauss, cached = meta["numpy"]
            np.random.set_state((kind, self.tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
            version, internal, gauss = meta["python"]
            random.setstate((version, tuple(internal), gauss))


def check_train_state(path, what: str = "training state") -> dict:
    """The metadata of a readable state file, from its header alone (a truncated file fails); CheckpointError
    naming what is wrong otherwise."""
    _, metadata = read_safetensors_header(path, what)
    if FORMAT_KEY not in metadata:
        raise CheckpointError(f"{path} is not a Semantica training state")
    version = json.loads(metadata[FORMAT_KEY])
    if version not in (1, FORMAT):
        raise CheckpointError(f"{path} is training-state format {version}; this version reads {FORMAT} (and 1)")
    return metadata


def read_train_state(path, what: str = "training state") -> TrainState:
    """A state file written by `save_train_state` (or a format-1 single-image state file)."""
    metadata = check_train_state(path, what)
    tensors = load_safetensors_tensors(path, what=what)
    if json.loads(metadata[FORMAT_KEY]) == 1:
        metadata = _upgrade_v1(metadata)
    return TrainState(Path(path), int(json.loads(metadata["step"])), json.loads(metadata["config"]),
                      json.loads(metadata.get("info", "{}")), tensors, metadata)


def _upgrade_v1(metadata: dict) -> dict:
    """Format 1 (single-image state files): every optimizer value a tensor, the two streams' devices and the source
    size as keys of their own, the EMA as a module state dict (its extra buffer keys are ignored)."""
    return {
        **metadata,
        "optimizer": json.dumps({"param_groups": json.loads(metadata["param_groups"]), "scalars": {}}),
        "rng": json.dumps({"generators": {"data": "cpu", "noise": json.loads(metadata["noise_device"])}}),
        "info": json.dumps({"source_size": json.loads(metadata["source_size"])}),
    }
