"""Diversity of a set of samples: the mean distance over all pairs (LPIPS when its weights are supplied)."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

PIXEL_L1_LABEL = "mean absolute pixel difference in [0, 1] (substitute for LPIPS, not comparable to published figures)"
LPIPS_LABEL = "LPIPS (AlexNet)"

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pixel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair mean absolute difference of [N,3,H,W] images in [0, 1]; returns [N]."""
    return (a - b).abs().flatten(1).mean(1)


def pixel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair root mean square difference; returns [N]."""
    return (a - b).square().flatten(1).mean(1).sqrt()


class LPIPS(nn.Module):
    """LPIPS with the AlexNet backbone (Zhang et al. 2018): unit-normalised features of five ReLU layers, weighted by
    learned 1x1 convs, averaged over space and summed. Input [N,3,H,W] in [0, 1]."""

    label = LPIPS_LABEL
    _slices = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
    _channels = (64, 192, 384, 256, 256)

    def __init__(self):
        super().__init__()
        from torchvision.models import alexnet

        self.features = alexnet(weights=None).features[:12]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self._channels)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        xa, xb = (((x * 2 - 1) - self.shift) / self.scale for x in (a, b))
        total = 0
        for (start, stop), lin in zip(self._slices, self.lins):
            xa, xb = self.features[start:stop](xa), self.features[start:stop](xb)
            na = xa / (xa.square().sum(1, keepdim=True).sqrt() + 1e-10)
            nb = xb / (xb.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb).square()).mean((2, 3))
        return total.flatten()


def load_lpips(path: Union[str, Path]) -> LPIPS:
    """LPIPS-Alex from a safetensors file: the `lpips` package's LPIPS(net="alex") state dict (keys
    `net.sliceK.N.*`, `linK.model.1.weight`), or torchvision AlexNet `features.N.*` plus `linK.model.1.weight`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS weights file not found: {path}. Save the lpips package's LPIPS(net='alex').state_dict() as "
            "safetensors, or leave the option out to use the labelled pixel-distance substitute."
        )
    from safetensors.torch import load_file

    state = {}
    for key, value in load_file(str(path)).items():
        key = key.removeprefix("module.")
        parts = key.split(".")
        if parts[0] == "net" and parts[1].startswith("slice"):
            state["features." + ".".join(parts[2:])] = value
        elif parts[0].startswith("lin") and parts[-1] == "weight" and parts[0][3:].isdigit():
            state[f"lins.{parts[0][3:]}.weight"] = value
        elif parts[0] == "features":
            state[key] = value
    net = LPIPS()
    wanted = [k for k in net.state_dict() if k not in ("shift", "scale")]
    missing = [k for k in wanted if k not in state]
    if missing:
        more = " ..." if len(missing) > 4 else ""
        raise ValueError(f"{path} is not an LPIPS-Alex state dict: missing {missing[:4]}{more}")
    net.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return net.eval().requires_grad_(False)


def pairwise_distances(images: torch.Tensor, distance: Union[str, Distance] = "l1", chunk: int = 16) -> torch.Tensor:
    """Distances between all pairs i < j of `images` [B,3,H,W] in [0, 1]; returns [B*(B-1)/2] float.

    `distance`: "l1", "l2", or a callable (a, b) -> [N] such as an LPIPS module.
    """
    if images.shape[0] < 2:
        raise ValueError(f"diversity needs at least 2 images; got {images.shape[0]}")
    fn = {"l1": pixel_l1, "l2": pixel_l2}.get(distance, distance) if isinstance(distance, str) else distance
    if isinstance(fn, str):
        raise ValueError(f"unknown distance '{distance}': use 'l1', 'l2' or a callable")
    if isinstance(fn, nn.Module):
        images = images.to(next(fn.parameters()).device)
    pairs = torch.tensor(list(combinations(range(images.shape[0]), 2)))
    out = []
    with torch.no_grad():
        for block in pairs.split(chunk):
            out.append(fn(images[block[:, 0]].float(), images[block[:, 1]].float()).float().cpu())
    return torch.cat(out)


def pairwise_diversity(images: torch.Tensor, distance: Union[str, Distance] = "l1") -> torch.Tensor:
    """Mean pairwise distance between samples (0 = all identical)."""
    return pairwise_distances(images, distance).mean()
