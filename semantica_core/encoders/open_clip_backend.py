"""The image tower of any open_clip architecture as a frozen encoder.

Only the vision tower is built and stored (no text tower). tokens = the vision transformer's token output
(`output_tokens`), or for ResNet / timm towers the last feature map flattened; pooled = the projected image
embedding (what CLIP compares with text).
"""
from __future__ import annotations

import copy

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import _build_vision_tower
from open_clip.transformer import VisionTransformer
from torch import nn

from semantica_core.encoders.base import EncoderSpec, ImageEncoder, Preprocess


def vision_backend_config(model_cfg: dict, image_size: int | None = None) -> dict:
    """The part of an open_clip model config that builds the image tower."""
    vision_cfg = copy.deepcopy(model_cfg["vision_cfg"])
    vision_cfg["timm_model_pretrained"] = False  # a timm tower must not fetch its ImageNet weights
    vision_cfg.pop("output_tokens", None)
    if image_size is not None:
        vision_cfg["image_size"] = image_size
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    return {"embed_dim": model_cfg["embed_dim"], "vision_cfg": vision_cfg, "quick_gelu": quick_gelu}


def create_vision_tower(backend_config: dict) -> nn.Module:
    visual = _build_vision_tower(
        backend_config["embed_dim"], dict(backend_config["vision_cfg"]), quick_gelu=backend_config["quick_gelu"]
    )
    if isinstance(visual, VisionTransformer):
        visual.output_tokens = True
    return visual


def open_clip_preprocess(backend_config: dict, preprocess_cfg: dict | None = None) -> Preprocess:
    """open_clip's defaults (OpenAI mean/std, bicubic, shortest-side resize + center crop), overridden by the
    `preprocess_cfg` of an open_clip_config.json."""
    cfg = dict(preprocess_cfg or {})
    size = cfg.get("size", backend_config["vision_cfg"].get("image_size", 224))
    size = size if isinstance(size, int) else size[-1]
    return Preprocess(
        image_size=int(size),
        mean=tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", OPENAI_DATASET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop="squash" if cfg.get("resize_mode") == "squash" else "center",
        crop_pct=1.0,
    )


class OpenClipEncoder(ImageEncoder):
    @classmethod
    def from_spec(cls, spec: EncoderSpec) -> "OpenClipEncoder":
        return cls(spec, create_vision_tower(spec.backend_config))

    def encode_preprocessed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.module, VisionTransformer):
            pooled, tokens = self.module(x)
            return tokens, pooled
        out = self.module.forward_intermediates(x, indices=1, output_fmt="NCHW")
        features = out["image_intermediates"][-1]
        return features.flatten(2).transpose(1, 2), out["image_features"]


def open_clip_model_config(arch: str) -> dict | None:
    return open_clip.get_model_config(arch)


def build_open_clip_encoder(
    arch: str, backend_config: dict, visual: nn.Module, weights_tag: str, preprocess_cfg=None, source: str = ""
) -> OpenClipEncoder:
    """Wraps a built image tower; token and pooled dims are measured with one forward pass."""
    preprocess = open_clip_preprocess(backend_config, preprocess_cfg)
    probe = EncoderSpec("open_clip", arch, weights_tag, preprocess, 0, 0, 0, backend_config, source)
    return OpenClipEncoder.measured(probe, visual)
