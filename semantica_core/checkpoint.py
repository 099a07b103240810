"""Semantica model checkpoints: one safetensors file holding the weights and the configs as JSON metadata.

Layout: tensors `model.<name>` (raw weights) and optionally `ema.<name>`; metadata (every value a JSON string)
`semantica_format` (int), `kind`, `network`, `diffusion`, `encoder` (or null) and `training` (or null).
Only safetensors is read: nothing here ever unpickles, so a checkpoint from a stranger cannot run code.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .atomic import atomic_path

FORMAT_VERSION = 1
KINDS = ("pair_conditioned", "single_image")
ENCODER_INFO_KEYS = ("encoder_id", "token_dim", "pooled_dim", "num_tokens")
ENCODER_FILE_KEY = "semantica_encoder_format"  # marks an encoder file (semantica_core.encoders), not a model

_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


class CheckpointError(ValueError):
    """A model or encoder file that cannot be used; the message names the file and what to do."""


class EncoderMismatchError(ValueError):
    """Embeds (or an encoder) that do not belong to the model they are given to."""


# ----------------------------------------------------------------------------------------------------------------
# Reading safetensors files safely (shared with the encoder files)


def read_safetensors_header(path, what: str = "checkpoint") -> tuple[dict[str, dict], dict[str, str]]:
    """Reads and checks a safetensors header without loading tensors: ({name: {dtype, shape, data_offsets}}, metadata).

    Raises CheckpointError for a missing file, a PyTorch pickle, a corrupt header or a truncated file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
        if not (len(head) == 9 and head[8:9] == b"{" and header_len <= min(size - 8, _MAX_HEADER_BYTES)):
            if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
                # torch.save writes a zip archive (new format) or a bare pickle stream (protocol byte 0x80).
                raise CheckpointError(
                    f"{what} {path} looks like a PyTorch pickle (.pt/.ckpt/.pth); Semantica loads only safetensors "
                    f"and never unpickles files. Convert it to safetensors (safetensors.torch.save_file on its state "
                    f"dict, in a session you trust) or re-export it with the semantica CLI."
                )
            if len(head) < 9:
                raise CheckpointError(
                    f"{what} {path} is empty or truncated ({size} bytes); re-download or re-export it"
                )
            raise CheckpointError(
                f"{what} {path} is not a safetensors file or is truncated (its first bytes are not a safetensors "
                f"header); re-download or re-export it"
            )
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        end = 0
        for name, info in header.items():
            start, stop = info["data_offsets"]
            if not isinstance(info["dtype"], str) or not isinstance(info["shape"], list) or stop < start:
                raise ValueError(f"bad entry for tensor {name!r}")
            end = max(end, stop)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{what} {path} has a corrupt safetensors header ({e}); re-download or re-export it"
        ) from e
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{what} {path} is truncated: its header describes {8 + header_len + end} bytes but the file has {size}; "
            f"re-download or re-export it"
        )
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{what} {path} has corrupt safetensors metadata; re-download or re-export it")
    return header, metadata


def load_safetensors_tensors(path, names=None, device="cpu", what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Loads tensors (all, or those in `names`) from a file whose header was checked; errors become CheckpointError."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {name: f.get_tensor(name) for name in (names if names is not None else f.keys())}
    except Exception as e:  # the safetensors library raises its own error types
        raise CheckpointError(f"{what} {path} could not be read ({e}); re-download or re-export it") from e


def write_safetensors_atomic(path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Writes a safetensors file through a temporary file in the same folder (semantica_core.atomic), so a crash
    never leaves half a file; the file's mode follows the umask."""
    path = Path(path)
    seen_storage = set()
    prepared = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen_storage and tensor.numel() > 0:
            tensor = tensor.clone()  # safetensors refuses tensors that share memory (tied weights)
        seen_storage.add(tensor.untyped_storage().data_ptr())
        prepared[name] = tensor
    with atomic_path(path) as tmp:
        try:
            save_file(prepared, str(tmp), metadata=dict(metadata))
        except Exception as e:  # the safetensors library reports a full disk as its own error type
            code = re.search(r"os error (\d+)|code: (\d+)", str(e))
            if code is None:
                raise
            number = int(code.group(1) or code.group(2))
            raise OSError(number, os.strerror(number), str(path)) from e
    return path


# ----------------------------------------------------------------------------------------------------------------
# Metadata


def _as_dict(config) -> dict:
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"a config must be a dict or have to_dict(); got {type(config).__name__}")
    return dict(config)


def validate_encoder_info(info, where: str) -> dict:
    """Checks an encoder_info dict (encoder_id, token_dim, pooled_dim, num_tokens) and returns it."""
    if not isinstance(info, Mapping):
        raise CheckpointError(f"{where}: encoder info must be a dict with {', '.join(ENCODER_INFO_KEYS)}; got {info!r}")
    missing = [k for k in ENCODER_INFO_KEYS if k not in info]
    if missing:
        raise CheckpointError(f"{where}: encoder info lacks {', '.join(missing)} (has {sorted(info)})")
    if not isinstance(info["encoder_id"], str) or not info["encoder_id"]:
        raise CheckpointError(f"{where}: encoder_id must be a non-empty string; got {info['encoder_id']!r}")
    for key in ("token_dim", "pooled_dim", "num_tokens"):
        if not isinstance(info[key], int) or isinstance(info[key], bool) or info[key] <= 0:
            raise CheckpointError(f"{where}: encoder {key} must be a positive int; got {info[key]!r}")
    return dict(info)


def _parse_metadata(path, metadata: Mapping[str, str]) -> dict:
    """Decodes and validates checkpoint metadata.

    Returns {semantica_format, kind, network, diffusion, encoder, training}."""
    if "semantica_format" not in metadata:
        if ENCODER_FILE_KEY in metadata:
            raise CheckpointError(
                f"{path} is a Semantica encoder file, not a model checkpoint; load it as an encoder "
                f"(semantica_core.encoders.load_encoder) and give a model checkpoint here"
            )
        raise CheckpointError(
            f"{path} is a safetensors file but not a Semantica checkpoint (no 'semantica_format' metadata); "
            f"create checkpoints with `semantica init` / `semantica train`, or re-save it with save_checkpoint"
        )
    decoded = {}
    for key in ("semantica_format", "kind", "network", "diffusion", "encoder", "training"):
        if key not in metadata:
            raise CheckpointError(f"checkpoint {path} lacks the '{key}' metadata; re-save it with save_checkpoint")
        try:
            decoded[key] = json.loads(metadata[key])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"checkpoint {path}: metadata '{key}' is not valid JSON ({e}); re-save it") from e
    version = decoded["semantica_format"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint {path}: invalid semantica_format {version!r}; re-save it")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version} but this code reads up to {FORMAT_VERSION}: "
            f"update semantica (the ComfyUI node pack / the semantica-variations package)"
        )
    if decoded["kind"] not in KINDS:
        raise CheckpointError(f"checkpoint {path}: unknown model kind {decoded['kind']!r}; expected one of {KINDS}")
    for key in ("network", "diffusion"):
        if not isinstance(decoded[key], dict):
            raise CheckpointError(f"checkpoint {path}: metadata '{key}' must be a JSON object; re-save it")
    if decoded["kind"] == "pair_conditioned":
        if decoded["encoder"] is None:
            raise CheckpointError(
                f"checkpoint {path} is a pair-conditioned model but names no encoder (metadata 'encoder' is null); "
                f"re-save it with encoder_info from the encoder it was trained with"
            )
        decoded["encoder"] = validate_encoder_info(decoded["encoder"], f"checkpoint {path}")
        for key in ("token_dim", "pooled_dim"):
            if key in decoded["network"] and decoded["network"][key] != decoded["encoder"][key]:
                raise CheckpointError(
                    f"checkpoint {path}: the network takes {key}={decoded['network'][key]} but its encoder "
                    f"{decoded['encoder']['encoder_id']} gives {decoded['encoder'][key]}; the file is inconsistent, "
                    f"re-create it with `semantica init --encoder ...`"
                )
    if decoded["training"] is not None and not isinstance(decoded["training"], dict):
        raise CheckpointError(f"checkpoint {path}: metadata 'training' must be a JSON object or null")
    return decoded


# ----------------------------------------------------------------------------------------------------------------
# Save / inspect / load


def save_checkpoint(
    path,
    *,
    kind: str,
    network_config,
    diffusion_config,
    state_dict: Mapping[str, torch.Tensor],
    ema_state_dict: Mapping[str, torch.Tensor] | None = None,
    encoder_info: Mapping[str, Any] | None = None,
    training_info: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a checkpoint atomically. Configs may be dicts or dataclasses with to_dict(). Returns the path."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    if kind == "pair_conditioned":
        if encoder_info is None:
            raise ValueError(
                "a pair-conditioned checkpoint needs encoder_info (encoder_id, token_dim, pooled_dim, num_tokens)"
            )
        encoder_info = validate_encoder_info(encoder_info, f"saving {path}")
    elif encoder_info is not None:
        encoder_info = validate_encoder_info(encoder_info, f"saving {path}")
    if ema_state_dict is not None and set(ema_state_dict) != set(state_dict):
        raise ValueError("ema_state_dict must have the same keys as state_dict")
    tensors = {f"model.{k}": v for k, v in state_dict.items()}
    if ema_state_dict is not None:
        tensors.update({f"ema.{k}": v for k, v in ema_state_dict.items()})
    metadata = {
        "semantica_format": json.dumps(FORMAT_VERSION),
        "kind": json.dumps(kind),
        "network": json.dumps(_as_dict(network_config)),
        "diffusion": json.dumps(_as_dict(diffusion_config)),
        "encoder": json.dumps(encoder_info),
        "training": json.dumps(dict(training_info) if training_info is not None else None),
    }
    return write_safetensors_atomic(path, tensors, metadata)


def read_checkpoint_metadata(path) -> dict:
    """Cheap inspection (no tensor is loaded): the decoded metadata plus tensor counts, parameters and has_ema."""
    header, metadata = read_safetensors_header(path, "checkpoint")
    info = _parse_metadata(path, metadata)
    model_keys = [k for k in header if k.startswith("model.")]
    ema_keys = [k for k in header if k.startswith("ema.")]
    info["num_tensors"] = {"model": len(model_keys), "ema": len(ema_keys)}
    numel = 0
    for k in model_keys:
        n = 1
        for d in header[k]["shape"]:
            n *= d
        numel += n
    info["parameters"] = numel  # parameters and buffers of the raw weights
    info["has_ema"] = bool(ema_keys)
    return info


def _first_config_value(config: Mapping, names, default=None):
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


@dataclass
class SemanticaModel:
    """A loaded checkpoint: the network (eval mode) wrapped by its denoiser, and what the file says about it."""

    network: nn.Module
    denoiser: Any  # semantica_core.diffusion.Denoiser
    kind: str
    network_config: dict
    diffusion_config: dict
    encoder_info: dict | None
    resolution: int | None  # training resolution: the network config's, else training_info's (None if neither says)
    channels: int
    path: str
    weights: str = "ema"  # which weights were loaded: "ema" or "raw"
    training_info: dict | None = None

    def check_embeds(self, embeds_or_encoder) -> None:
        check_embeds_match(self, embeds_or_encoder)


def load_checkpoint(path, weights: str = "ema", device="cpu") -> SemanticaModel:
    """Loads and validates a checkpoint. weights="ema" falls back to the raw weights (with a warning) when the file
    holds no EMA, as an untrained `semantica init` checkpoint does."""
    # Imported here so the file checks above (shared with the encoders) do not need the networks.
    from semantica_core.diffusion import Denoiser, DiffusionConfig
    from semantica_core.networks import build_network

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw'; got {weights!r}")
    header, metadata = read_safetensors_header(path, "checkpoint")
    meta = _parse_metadata(path, metadata)
    prefix = "ema." if weights == "ema" else "model."
    if weights == "ema" and not any(k.startswith("ema.") for k in header):
        warnings.warn(f"checkpoint {path} has no EMA weights; using the raw weights", stacklevel=2)
        prefix, weights = "model.", "raw"

    try:
        network = build_network(meta["kind"], meta["network"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path}: its network config cannot be built ({type(e).__name__}: {e}); the file was written "
            f"by an incompatible version or edited by hand; re-save it"
        ) from e
    expected = network.state_dict()
    stored = {k[len(prefix):]: k for k in header if k.startswith(prefix)}
    for name, tensor in expected.items():
        if name not in stored:
            raise CheckpointError(
                f"checkpoint {path}: tensor '{prefix}{name}' is missing; the weights do not match the network config "
                f"in the file ({len(stored)} stored, {len(expected)} expected); re-save the checkpoint"
            )
        shape = tuple(header[stored[name]]["shape"])
        if shape != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path}: tensor '{prefix}{name}' has shape {shape} in the file but the network config "
                f"expects {tuple(tensor.shape)}; the weights do not match the config; re-save the checkpoint"
            )
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise CheckpointError(
            f"checkpoint {path}: tensor '{prefix}{extra[0]}' (and {len(extra) - 1} more) is not part of the network "
            f"its config builds; the weights do not match the config; re-save the checkpoint"
        )
    tensors = load_safetensors_tensors(path, list(stored.values()), "cpu", "checkpoint")
    network.load_state_dict({name: tensors[key] for name, key in stored.items()}, strict=True)
    network.to(device).eval().requires_grad_(False)

    try:
        diffusion_config = DiffusionConfig.from_dict(meta["diffusion"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path}: invalid diffusion config ({type(e).__name__}: {e}); re-save it"
        ) from e
    net_cfg = meta["network"]
    return SemanticaModel(
        network=network,
        denoiser=Denoiser(network, diffusion_config),
        kind=meta["kind"],
        network_config=net_cfg,
        diffusion_config=meta["diffusion"],
        encoder_info=meta["encoder"],
        resolution=_first_config_value({**(meta["training"] or {}), **net_cfg}, ("resolution", "image_size")),
        channels=_first_config_value(net_cfg, ("out_channels", "channels"), 3),
        path=str(path),
        weights=weights,
        training_info=meta["training"],
    )


def check_embeds_match(model, embeds_or_encoder) -> None:
    """Raises EncoderMismatchError unless embeds (or an encoder) come from the encoder the model was trained with.

    `model` is a SemanticaModel or an encoder_info dict; `embeds_or_encoder` anything with `encoder_id`
    (Embeds, ImageEncoder)."""
    info = model if isinstance(model, Mapping) or model is None else model.encoder_info
    name = getattr(model, "path", None) or "the model"
    if info is None:
        raise EncoderMismatchError(f"{name} is not image-conditioned (no encoder); it takes no embeds")
    given = getattr(embeds_or_encoder, "encoder_id", None)
    if given != info["encoder_id"]:
        raise EncoderMismatchError(
            f"the embeds come from encoder '{given}' but {name} was trained with encoder '{info['encoder_id']}'; "
            f"encode the images with that encoder (its file is the one `semantica init --encoder` was given)"
        )
    tokens = getattr(embeds_or_encoder, "tokens", None)
    if tokens is not None and tokens.shape[-1] != info["token_dim"]:
        raise EncoderMismatchError(
            f"embeds of encoder '{given}' have token dim {tokens.shape[-1]} but {name} expects {info['token_dim']}"
        )
