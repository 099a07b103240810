"""Any timm architecture as a frozen encoder: tokens = the last feature map (CNN: flattened H*W positions; ViT: the
token sequence with its prefix tokens, or only the patch tokens where backend_config says "patch_tokens_only"); pooled = the model's pooled features (num_classes=0)."""
from __future__ import annotations

import timm
import torch
from torch import nn

from semantica_core.encoders.base import EncoderSpec, ImageEncoder, Preprocess


def create_timm_model(arch: str, **kwargs) -> nn.Module:
    """The headless timm model (num_classes=0), random weights; never fetches anything."""
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def timm_preprocess(model: nn.Module, image_size: int | None = None) -> Preprocess:
    """Preprocessing from the architecture's own pretrained config; the crop keeps the whole central square."""
    cfg = model.pretrained_cfg
    interpolation = cfg.get("interpolation")
    return Preprocess(
        image_size=int(image_size or cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bicubic",
        crop="center",
        crop_pct=1.0,  # the condition should see all of the central square, not the classifier's 87.5% crop
    )


def features_to_tokens(features: torch.Tensor, num_features: int) -> torch.Tensor:
    """[B,C,H,W], [B,H,W,C] or [B,N,C] features -> tokens [B,N,C]."""
    if features.ndim == 3:
        return features
    if features.ndim == 4:
        if features.shape[1] == num_features:
            return features.flatten(2).transpose(1, 2)
        if features.shape[-1] == num_features:  # channels-last models (Swin, ConvNeXt-style NHWC stages)
            return features.flatten(1, 2)
    raise ValueError(f"cannot turn features of shape {tuple(features.shape)} into tokens (num_features={num_features})")


class TimmEncoder(ImageEncoder):
    @classmethod
    def from_spec(cls, spec: EncoderSpec) -> "TimmEncoder":
        return cls(spec, create_timm_model(spec.arch, **spec.backend_config.get("kwargs", {})))

    def encode_preprocessed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.module.forward_features(x)
        pooled = self.module.forward_head(features)
        if self.spec.backend_config.get("patch_tokens_only"):
            features = features[:, self.module.num_prefix_tokens :]  # the class token is already the pooled vector
        return features_to_tokens(features, self.module.num_features), pooled


def build_timm_encoder(
    arch: str,
    module: nn.Module,
    weights_tag: str,
    image_size: int | None = None,
    kwargs=None,
    source: str = "",
    patch_tokens_only: bool = False,
) -> TimmEncoder:
    """Wraps a headless timm model; token and pooled dims are measured with one forward pass."""
    preprocess = timm_preprocess(module, image_size)
    backend_config = {"kwargs": dict(kwargs or {})}
    if patch_tokens_only:
        backend_config["patch_tokens_only"] = True
    probe = EncoderSpec("timm", arch, weights_tag, preprocess, 0, 0, 0, backend_config, source)
    return TimmEncoder.measured(probe, module)
