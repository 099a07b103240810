"""CLIP vision towers in Hugging Face's layout (what ComfyUI's CLIPVisionLoader holds) seen as open_clip's.

An encoder id hashes a tower's weights under open_clip's tensor names, so the same weights must give the same
names whichever layout they were loaded in: `open_clip_visual_tensors` renames a Hugging Face vision state dict
(`vision_model.*`, `visual_projection.weight`) to open_clip's VisionTransformer names, the inverse of ComfyUI's
conversion. `open_clip_tokens` and `pooled_vector` turn the tower's outputs into what open_clip's encoders give.
Pure torch and dicts: nodes/clip_vision.py adapts ComfyUI's objects to these.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Callable, Optional

import torch

HF_VISION = "vision_model."
# Per transformer layer: Hugging Face name -> open_clip name (q, k and v are concatenated separately).
_LAYER_RENAMES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                  "self_attn.out_proj": "attn.out_proj"}
# open_clip architectures a ComfyUI CLIP vision config can be (clip_vision_config_*.json).
OPEN_CLIP_CANDIDATES = (
    "ViT-L-14-quickgelu", "ViT-L-14", "ViT-L-14-336-quickgelu", "ViT-L-14-336",
    "ViT-H-14", "ViT-H-14-quickgelu", "ViT-bigG-14", "ViT-bigG-14-quickgelu",
)


class Float32Tensors(Mapping):
    """name -> tensor made on access as contiguous float32 on the CPU: hashing 300M+ weights one at a time."""

    def __init__(self, makers: dict[str, Callable[[], torch.Tensor]]):
        self._makers = makers

    def __getitem__(self, name):
        return self._makers[name]().detach().to(device="cpu", dtype=torch.float32).contiguous()

    def __iter__(self):
        return iter(self._makers)

    def __len__(self):
        return len(self._makers)


def float32_tensors(state_dict: Mapping[str, torch.Tensor]) -> Float32Tensors:
    """Every tensor of `state_dict` under its own name, as float32 on access."""
    return Float32Tensors({k: (lambda k=k: state_dict[k]) for k in state_dict})


def vision_layers(state_dict: Mapping[str, torch.Tensor]) -> int:
    """How many transformer layers a Hugging Face vision state dict holds."""
    found = [re.match(rf"{re.escape(HF_VISION)}encoder\.layers\.(\d+)\.", k) for k in state_dict]
    return 1 + max((int(m.group(1)) for m in found if m), default=-1)


def open_clip_visual_tensors(state_dict: Mapping[str, torch.Tensor]) -> Float32Tensors:
    """A Hugging Face CLIP vision tower's weights under open_clip's VisionTransformer names (as `model.visual`
    names them, without the `visual.` prefix), float32 on access."""
    sd, v = state_dict, HF_VISION
    makers = {
        "class_embedding": lambda: sd[v + "embeddings.class_embedding"],
        "conv1.weight": lambda: sd[v + "embeddings.patch_embedding.weight"],
        "positional_embedding": lambda: sd[v + "embeddings.position_embedding.weight"],
        "ln_pre.weight": lambda: sd[v + "pre_layrnorm.weight"],
        "ln_pre.bias": lambda: sd[v + "pre_layrnorm.bias"],
        "ln_post.weight": lambda: sd[v + "post_layernorm.weight"],
        "ln_post.bias": lambda: sd[v + "post_layernorm.bias"],
        "proj": lambda: sd["visual_projection.weight"].t(),  # open_clip multiplies x @ proj, nn.Linear x @ W.T
    }
    for i in range(vision_layers(sd)):
        src, dst = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for old, new in _LAYER_RENAMES.items():
            for kind in ("weight", "bias"):
                makers[f"{dst}{new}.{kind}"] = (lambda key=f"{src}{old}.{kind}": sd[key])
        for kind in ("weight", "bias"):  # open_clip's attention keeps q, k and v in one in_proj, in that order
            keys = [f"{src}self_attn.{p}_proj.{kind}" for p in "qkv"]
            makers[f"{dst}attn.in_proj_{kind}"] = (lambda keys=keys: torch.cat([sd[k] for k in keys]))
    return Float32Tensors(makers)


def open_clip_arch(tower: dict) -> Optional[str]:
    """The open_clip architecture whose image tower computes what `tower` does, or None.

    tower: type ("clip", "siglip", "dinov2"), width, layers, heads, mlp, patch, image_size, embed_dim, quick_gelu.
    """
    if tower["type"] != "clip" or tower.get("embed_dim") is None:
        return None
    import open_clip

    for arch in OPEN_CLIP_CANDIDATES:
        config = open_clip.get_model_config(arch)
        if config is None:
            continue
        vision = config["vision_cfg"]
        width = vision["width"]
        if (
            width == tower["width"] and vision["layers"] == tower["layers"]
            and vision["patch_size"] == tower["patch"] and vision["image_size"] == tower["image_size"]
            and width // vision.get("head_width", 64) == tower["heads"]
            and int(width * vision.get("mlp_ratio", 4.0)) == tower["mlp"]
            and config["embed_dim"] == tower["embed_dim"]
            and bool(config.get("quick_gelu", False)) == tower["quick_gelu"]
        ):
            return arch
    return None


def open_clip_tokens(last_hidden_state: torch.Tensor, final_norm: Callable) -> torch.Tensor:
    """open_clip's output tokens from a Hugging Face tower's last_hidden_state [B, 1 + N, D]: the final LayerNorm
    (Hugging Face applies it to the class token only) on every token, class token dropped -> [B, N, D]."""
    return final_norm(last_hidden_state)[:, 1:]


def pooled_vector(image_embeds: torch.Tensor) -> torch.Tensor:
    """[B, D] pooled embedding; SigLIP in ComfyUI has no pooling head, its "image_embeds" are per token [B, N, D] and
    are averaged."""
    return image_embeds.mean(dim=1) if image_embeds.ndim == 3 else image_embeds
