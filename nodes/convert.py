"""The one place where ComfyUI's IMAGE and MASK meet the core's tensors.

ComfyUI: IMAGE [B, H, W, C] in [0, 1]; MASK [B, H, W] or [H, W], 1 = the area to change.
Core: images [B, 3, H, W] in [0, 1]; masks [B, 1, H, W] in [0, 1].
Pure torch, so it is testable without a host; the nodes move tensors between devices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from semantica_core.imageops import to_rgb


def image_to_core(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] (C = 1 gray, 3 RGB or 4 RGBA, composited over white) -> [B, 3, H, W] float32."""
    if image.ndim == 3:  # a single [H, W, C] image some nodes pass along
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE [batch, height, width, channels], got shape {tuple(image.shape)}")
    return to_rgb(image.movedim(-1, 1).float())


def core_to_image(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> IMAGE [B, H, W, C] float32, clamped, contiguous."""
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    return images.float().clamp(0, 1).movedim(1, -1).contiguous()


def mask_to_core(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """MASK [B, H', W'] or [H', W'] -> [batch, 1, height, width] in [0, 1], resized bilinearly to the image.

    One mask applies to every image of the batch; otherwise the mask batch must equal the image batch.
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"expected a MASK [batch, height, width] or [height, width], got shape {tuple(mask.shape)}")
    if mask.shape[0] not in (1, batch):
        raise ValueError(
            f"the mask batch ({mask.shape[0]}) does not match the image batch ({batch}): "
            f"give one mask for all images or one mask per image"
        )
    mask = mask.float().unsqueeze(1)
    if mask.shape[-2:] != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    return mask.clamp(0, 1).expand(batch, -1, -1, -1).contiguous()


def core_to_mask(masks: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] -> MASK [B, H, W] float32."""
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"expected masks [B, 1, H, W], got shape {tuple(masks.shape)}")
    return masks[:, 0].float().clamp(0, 1).contiguous()
