"""The frozen image encoder interface, its preprocessing, and the encoder file format.

An encoder file is one safetensors file: the backbone's weights (its own state-dict names) and two metadata entries,
`semantica_encoder_format` (int, JSON) and `encoder` (the EncoderSpec as JSON). Everything needed to rebuild the
backbone is in the spec, so loading never fetches anything and never unpickles.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import kornia
import torch
from torch import nn

from semantica_core.checkpoint import (
    ENCODER_FILE_KEY,
    CheckpointError,
    load_safetensors_tensors,
    read_safetensors_header,
    write_safetensors_atomic,
)
from semantica_core.config import from_dict as config_from_dict, to_dict as config_to_dict
from semantica_core.embeds import Embeds

ENCODER_FORMAT_VERSION = 1
# backend name -> "module:class"; imported on demand so a missing optional package disables one backend only.
BACKENDS = {
    "timm": "semantica_core.encoders.timm_backend:TimmEncoder",
    "open_clip": "semantica_core.encoders.open_clip_backend:OpenClipEncoder",
}


class EncoderFileError(CheckpointError):
    """An encoder file that cannot be used; the message names the file and what to do."""


@dataclass
class Preprocess:
    """How pixels in [0, 1] become the encoder's input: resize, crop to a square of image_size, normalize.

    crop="center": the shorter side goes to image_size / crop_pct, then the central square is cut;
    crop="squash": the whole image is resized to image_size x image_size, ignoring the aspect ratio.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop: str = "center"
    crop_pct: float = 1.0

    def __post_init__(self):
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB); got {self.mean}, {self.std}")
        if self.crop not in ("center", "squash"):
            raise ValueError(f"crop must be 'center' or 'squash'; got {self.crop!r}")
        if self.interpolation not in ("nearest", "bilinear", "bicubic", "area"):
            raise ValueError(f"unsupported interpolation {self.interpolation!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1]; got {self.crop_pct}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return config_from_dict(cls, d)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if self.crop == "center":
            short = round(size / self.crop_pct)
            if min(images.shape[-2:]) != short:
                images = kornia.geometry.transform.resize(
                    images, short, interpolation=self.interpolation, side="short", antialias=True
                )
            h, w = images.shape[-2:]
            top, left = (h - size) // 2, (w - size) // 2
            images = images[..., top : top + size, left : left + size]
        elif tuple(images.shape[-2:]) != (size, size):
            images = kornia.geometry.transform.resize(
                images, (size, size), interpolation=self.interpolation, antialias=True
            )
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype)
        return kornia.enhance.normalize(images, mean, std)


@dataclass
class EncoderSpec:
    """Everything that identifies an encoder and rebuilds it; stored as JSON in the encoder file."""

    backend: str  # "timm" | "open_clip" | "precomputed"
    arch: str
    weights_tag: str  # "random-<seed>-<hash>" or a short hash of the weights
    preprocess: Preprocess | None
    token_dim: int
    pooled_dim: int
    num_tokens: int
    backend_config: dict = field(default_factory=dict)  # what the backend needs to build the module
    source: str = ""  # where the weights came from, for people

    @property
    def encoder_id(self) -> str:
        return f"{self.backend}:{self.arch}:{self.weights_tag}"

    def info(self) -> dict:
        """The encoder_info a checkpoint stores."""
        return {
            "encoder_id": self.encoder_id,
            "token_dim": self.token_dim,
            "pooled_dim": self.pooled_dim,
            "num_tokens": self.num_tokens,
        }

    def to_dict(self) -> dict:
        return {**config_to_dict(self), "encoder_id": self.encoder_id}  # the id: redundant, for people reading it

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        return config_from_dict(cls, {k: v for k, v in d.items() if k != "encoder_id"})


def weights_hash(state_dict) -> str:
    """Short content hash of a state dict (names, dtypes, shapes and bytes), so different weights get different ids."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


class ImageEncoder(nn.Module):
    """A frozen image encoder: images [B,3,H,W] in [0, 1], any H and W -> Embeds (float32).

    Subclasses pass `module` (the backbone whose weights the encoder file stores) and implement
    `encode_preprocessed(x) -> (tokens [B,N,D_tok], pooled [B,D_pool])` on preprocessed input.
    """

    def __init__(self, spec: EncoderSpec, module: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        if module is not None:
            self.module = module

    # identity ---------------------------------------------------------------------------------------------------
    @property
    def encoder_id(self) -> str:
        return self.spec.encoder_id

    @property
    def token_dim(self) -> int:
        return self.spec.token_dim

    @property
    def pooled_dim(self) -> int:
        return self.spec.pooled_dim

    @property
    def num_tokens(self) -> int:
        return self.spec.num_tokens

    @property
    def image_size(self) -> int | None:
        return self.spec.preprocess.image_size if self.spec.preprocess is not None else None

    def info(self) -> dict:
        return self.spec.info()

    @classmethod
    def measured(cls, spec: EncoderSpec, module: nn.Module) -> "ImageEncoder":
        """The frozen encoder of `module` under `spec`, whose token and pooled dims are filled in from one forward
        pass (a new export does not know them before)."""
        encoder = cls(spec, module)._freeze()
        size = spec.preprocess.image_size
        with torch.no_grad():
            tokens, pooled = encoder.encode_preprocessed(torch.zeros(1, 3, size, size))
        spec.num_tokens, spec.token_dim, spec.pooled_dim = tokens.shape[1], tokens.shape[2], pooled.shape[1]
        return encoder

    def _freeze(self) -> "ImageEncoder":
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "ImageEncoder":
        # Frozen: BatchNorm statistics and dropout must never switch to training behaviour.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            return t.dtype
        return torch.float32

    # encoding ---------------------------------------------------------------------------------------------------
    def encode_preprocessed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"encoder {self.encoder_id} takes RGB images [B, 3, H, W] with values in 0..1; got {shape}. "
                f"Convert grayscale or RGBA images to RGB and channels-last images to channels-first first."
            )
        if not images.is_floating_point():
            raise ValueError(
                f"encoder {self.encoder_id} takes float images in 0..1; got dtype {images.dtype} (divide by 255)"
            )
        if images.shape[0] == 0 or min(images.shape[-2:]) < 1:
            raise ValueError(f"encoder {self.encoder_id} got an empty batch or image: {tuple(images.shape)}")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Embeds:
        self.check_images(images)
        lo, hi = images.aminmax()
        if lo < -0.5 or hi > 1.5:
            raise ValueError(
                f"encoder {self.encoder_id} takes images in 0..1; got values in {lo.item():.3g}..{hi.item():.3g} "
                f"(images in -1..1 need (x + 1) / 2, images in 0..255 need x / 255)"
            )
        x = images.to(device=self.device, dtype=torch.float32).clamp(0, 1)
        x = self.spec.preprocess(x).to(self.dtype)
        tokens, pooled = self.encode_preprocessed(x)
        expected = (self.num_tokens, self.token_dim)
        if tuple(tokens.shape[1:]) != expected or pooled.shape[1] != self.pooled_dim:
            raise EncoderFileError(
                f"encoder {self.encoder_id} produced tokens {tuple(tokens.shape[1:])} and pooled {pooled.shape[1]} "
                f"but its file promises tokens {expected} and pooled {self.pooled_dim}; re-export the encoder"
            )
        return Embeds(tokens.float(), pooled.float(), self.encoder_id)

    # files ------------------------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Writes the encoder file (weights + spec), atomically."""
        metadata = {ENCODER_FILE_KEY: json.dumps(ENCODER_FORMAT_VERSION), "encoder": json.dumps(self.spec.to_dict())}
        return write_safetensors_atomic(path, self.module.state_dict(), metadata)


def backend_class(name: str) -> type[ImageEncoder]:
    if name not in BACKENDS:
        raise ValueError(f"unknown encoder backend {name!r}; known: {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def read_encoder_spec(path) -> EncoderSpec:
    """Reads and validates an encoder file's spec without loading the weights."""
    return _read_encoder_file(path)[0]


def _read_encoder_file(path) -> tuple[EncoderSpec, dict]:
    header, metadata = read_safetensors_header(path, "encoder file")
    if ENCODER_FILE_KEY not in metadata:
        if "semantica_format" in metadata:
            raise EncoderFileError(f"{path} is a Semantica model checkpoint, not an encoder file; give an encoder file")
        raise EncoderFileError(
            f"{path} is a safetensors file but not a Semantica encoder file (no '{ENCODER_FILE_KEY}' metadata); "
            f"create one with `semantica encoder export NAME --out FILE.safetensors`"
        )
    try:
        version = json.loads(metadata[ENCODER_FILE_KEY])
        spec_dict = json.loads(metadata["encoder"])
    except KeyError as e:
        raise EncoderFileError(f"encoder file {path} lacks the {e} metadata; re-export it") from e
    except json.JSONDecodeError as e:
        raise EncoderFileError(f"encoder file {path} has invalid metadata JSON ({e}); re-export it") from e
    if not isinstance(version, int) or version < 1:
        raise EncoderFileError(f"encoder file {path}: invalid format version {version!r}; re-export it")
    if version > ENCODER_FORMAT_VERSION:
        raise EncoderFileError(
            f"encoder file {path} has format version {version} but this code reads up to {ENCODER_FORMAT_VERSION}: "
            f"update semantica"
        )
    try:
        spec = EncoderSpec.from_dict(spec_dict)
    except (TypeError, ValueError, AttributeError) as e:
        raise EncoderFileError(f"encoder file {path} has an invalid encoder spec ({e}); re-export it") from e
    if spec.preprocess is None or spec.backend not in BACKENDS:
        raise EncoderFileError(
            f"encoder file {path}: backend {spec.backend!r} with preprocess {spec.preprocess} cannot encode images; "
            f"known backends: {sorted(BACKENDS)}"
        )
    return spec, header


def load_encoder(path, device="cpu", dtype: torch.dtype | None = None) -> ImageEncoder:
    """Loads an encoder file: frozen, eval mode, on `device` (optionally cast to `dtype`)."""
    spec, header = _read_encoder_file(path)
    encoder = backend_class(spec.backend).from_spec(spec)
    expected = encoder.module.state_dict()
    for name, tensor in expected.items():
        if name not in header:
            raise EncoderFileError(f"encoder file {path}: tensor '{name}' is missing; re-export the encoder")
        if tuple(header[name]["shape"]) != tuple(tensor.shape):
            raise EncoderFileError(
                f"encoder file {path}: tensor '{name}' has shape {tuple(header[name]['shape'])} in the file but "
                f"{spec.arch} expects {tuple(tensor.shape)}; re-export the encoder"
            )
    extra = sorted(set(header) - set(expected))
    if extra:
        raise EncoderFileError(f"encoder file {path}: unexpected tensor '{extra[0]}' for {spec.arch}; re-export it")
    state = load_safetensors_tensors(path, list(expected), "cpu", "encoder file")
    encoder.module.load_state_dict(state, strict=True)
    encoder.to(device=device, dtype=dtype)
    return encoder._freeze()
