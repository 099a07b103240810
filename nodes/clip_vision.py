"""ComfyUI's CLIP vision models as a Semantica condition: which encoder they are, and their outputs as Embeds.

ComfyUI loads CLIP ViT-L/H/bigG, SigLIP and DINOv2 towers (`comfy.clip_vision`) and keeps their weights in its own
layout (Hugging Face names, usually float16). Semantica models are trained with encoder files whose id is
`open_clip:<arch>:<weights hash>` (semantica_core.encoders). This module derives that id from the tower ComfyUI
holds, so a model trained with the open_clip encoder of the same weights accepts ComfyUI's CLIP vision outputs.

The rule, for tokens="open_clip" on a CLIP tower:
  encoder_id = "open_clip:<arch>:<weights_hash of the tower in open_clip's tensor names, as float32>"
  arch: the open_clip architecture that computes what ComfyUI computes, e.g. ComfyUI's ViT-L/14 runs quick-GELU,
  so it is "ViT-L-14-quickgelu" ("ViT-L-14-336-quickgelu", "ViT-H-14", "ViT-bigG-14" for the others).
This equals the id `semantica encoder export open_clip:<arch> --weights FILE` gives when FILE holds the values
ComfyUI holds: export from the same file ComfyUI loads (an open_clip-layout file with `visual.` names, which
ComfyUI's CLIPVisionLoader reads too). ComfyUI stores CLIP vision weights in float16 by default: a float32 file
whose values are not float16-exact gets a different hash there (round the file to float16, or start ComfyUI with
--fp32-text-enc). The tokens are then open_clip's too: ComfyUI's last_hidden_state through the tower's final
LayerNorm, without the class token; pooled = image_embeds, the projected class token.

tokens="last_hidden_state" / "penultimate_hidden_states" pass ComfyUI's hidden states on unchanged (class token
included, no final LayerNorm); no encoder file computes those, so their id says so:
  "comfy_clip_vision:<arch>:<weights hash>:<tokens>", matched only by models trained on this node's embeddings.
"""
from __future__ import annotations

import torch

from semantica_core.encoders.clip_weights import (
    float32_tensors,
    open_clip_arch,
    open_clip_tokens,
    open_clip_visual_tensors,
    pooled_vector,
)

TOKEN_SOURCES = ("open_clip", "last_hidden_state", "penultimate_hidden_states")


def describe_tower(clip_vision) -> dict:
    """The architecture of a ComfyUI ClipVisionModel: type, width, layers, heads, mlp width, patch, size, activation."""
    import comfy.clip_model

    model = clip_vision.model
    vision = getattr(model, "vision_model", None)
    if vision is None:  # DINOv2 (comfy.image_encoders.dino2) names its parts like Hugging Face's Dinov2Model
        width = model.embeddings.patch_embeddings.projection.out_channels
        return {"type": "dinov2", "width": width, "layers": len(model.encoder.layer),
                "image_size": int(clip_vision.image_size)}
    first = vision.encoder.layers[0]
    projection = getattr(model, "visual_projection", None)
    return {
        "type": "clip" if vision.embeddings.class_embedding is not None else "siglip",
        "width": vision.embeddings.patch_embedding.out_channels,
        "layers": len(vision.encoder.layers),
        "heads": first.self_attn.heads,
        "mlp": first.mlp.fc1.out_features,
        "patch": vision.embeddings.patch_embedding.kernel_size[0],
        "image_size": int(clip_vision.image_size),
        "embed_dim": projection.out_features if isinstance(projection, torch.nn.Module) else None,
        "quick_gelu": first.mlp.activation is comfy.clip_model.ACTIVATIONS["quick_gelu"],
    }


def _fallback_arch(tower: dict) -> str:
    parts = [tower["type"], f"w{tower['width']}", f"l{tower['layers']}"]
    if "patch" in tower:
        parts.append(f"p{tower['patch']}")
    return "-".join(parts + [str(tower["image_size"])])


def encoder_id(clip_vision, tokens: str) -> str:
    """The encoder_id of Embeds made from this tower's outputs with the given token source (see the module doc).

    Hashing the weights takes a few seconds for a ViT-L: the ids are kept on the loaded model object."""
    from semantica_core.encoders.base import weights_hash

    cached = getattr(clip_vision, "_semantica_identity", None)
    if cached is None:
        tower = describe_tower(clip_vision)
        arch = open_clip_arch(tower)
        if arch is not None:
            tag = weights_hash(open_clip_visual_tensors(clip_vision.model.state_dict()))
        else:
            tag = weights_hash(float32_tensors(clip_vision.model.state_dict()))
        cached = {"arch": arch or _fallback_arch(tower), "tag": tag, "open_clip": arch is not None}
        clip_vision._semantica_identity = cached
    if tokens == "open_clip":
        if not cached["open_clip"]:
            raise ValueError(
                f"tokens 'open_clip' need a CLIP ViT tower that open_clip has (ViT-L/14, ViT-H/14, ViT-bigG/14); "
                f"this CLIP vision model is {cached['arch']}. Pick tokens 'last_hidden_state' or "
                f"'penultimate_hidden_states' (and a model trained on those embeddings)"
            )
        return f"open_clip:{cached['arch']}:{cached['tag']}"
    return f"comfy_clip_vision:{cached['arch']}:{cached['tag']}:{tokens}"


def clip_vision_embeds(clip_vision, output, tokens: str):
    """CLIP_VISION_OUTPUT -> semantica Embeds (tokens [B,N,D], pooled [B,D]) with the id of `encoder_id`."""
    from semantica_core.embeds import Embeds

    if tokens not in TOKEN_SOURCES:
        raise ValueError(f"tokens '{tokens}' is not one of: {', '.join(TOKEN_SOURCES)}")
    identity = encoder_id(clip_vision, tokens)
    if tokens == "open_clip":
        with torch.no_grad():
            hidden = open_clip_tokens(output["last_hidden_state"], clip_vision.model.vision_model.post_layernorm)
    else:
        hidden = output[tokens]
    pooled = pooled_vector(output["image_embeds"])
    return Embeds(hidden.float().contiguous(), pooled.float().contiguous(), identity)
