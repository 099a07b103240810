"""Text-guided sampling of a single-image model with an open_clip model (SinDiffusion's text-guided generation).

At every step the predicted x0 is moved up the gradient of the CLIP cosine similarity between it (resized and
normalised for CLIP) and the prompt's text embedding; the sampler then continues from the moved x0. The gradient
is taken with respect to x0 only, not through the denoising network, so a step costs one network call plus one CLIP
forward and backward. The official release never included this code; this follows the paper's description.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from .canvas import model_device
from .checkpoint import SemanticaModel
from .single_image import clipped_denoiser, sample_with

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(arch: str, weights: Union[str, Path], device="cpu"):
    """(model, tokenizer) of open_clip architecture `arch` with weights from a local file; never downloads."""
    import open_clip

    arch, weights = arch.strip(), Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"CLIP weights not found: {weights}. Give a local open_clip checkpoint (.safetensors or .bin) for "
            f"architecture '{arch}'; text guidance does not download models."
        )
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture '{arch}'; see open_clip.list_models()")
    model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=str(weights), device=device)
    return model.eval().requires_grad_(False), open_clip.get_tokenizer(arch)


class ClipScorer:
    """Cosine similarity between images and one prompt under a CLIP model, differentiable in the images."""

    def __init__(self, clip_model: torch.nn.Module, tokenizer, prompt: str, device=None):
        self.model = clip_model.eval().requires_grad_(False)
        device = device or next(clip_model.parameters()).device
        self.model.to(device)
        self.device = torch.device(device)
        size = getattr(clip_model.visual, "image_size", 224)
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(clip_model.visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", OPENAI_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", OPENAI_STD), device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():
            text = clip_model.encode_text(tokenizer([prompt]).to(self.device)).float()
        self.text = F.normalize(text, dim=-1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [0, 1] -> cosine similarity [B]. The whole image is squashed to CLIP's input size."""
        x = F.interpolate(images.float().to(self.device), size=self.size, mode="bilinear", antialias=True,
                          align_corners=False)
        features = self.model.encode_image((x - self.mean) / self.std).float()
        return (F.normalize(features, dim=-1) * self.text).sum(-1)


def clip_guided_denoiser(denoise: Callable, scorer: ClipScorer, scale: float) -> Callable:
    """Wraps `denoise(x, sigma) -> x0` so each x0 moves `scale` (RMS, in [-1, 1] pixel units) up CLIP's gradient.

    The gradient is normalised per image: raw CLIP gradients differ by orders of magnitude between models and
    image sizes, a fixed step size does not.
    """

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0 = denoise(x, sigma)
        if scale == 0:
            return x0
        with torch.enable_grad():
            probe = x0.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(scorer((probe.clamp(-1, 1) + 1) / 2).sum(), probe)
        rms = grad.flatten(1).square().mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x0 + scale * (grad / rms).to(x0.dtype)).clamp(-1, 1)

    return guided


def sample_text_guided(
    model: SemanticaModel,
    prompt: str,
    clip_model: torch.nn.Module,
    tokenizer,
    scale: float = 0.05,
    *,
    seed: int,
    count: int = 1,
    width: Optional[int] = None,
    height: Optional[int] = None,
    steps: Optional[int] = 50,
    sampler: str = "ddpm",
    spacing: Optional[str] = None,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """`count` samples [count,3,height,width] in [0, 1] steered toward `prompt`; image k uses seed + k.

    scale: how far each step's x0 moves up CLIP's (per-image RMS-normalised) gradient, in [-1, 1] pixel units;
    0 gives exactly `sample_single_image`'s samples of the same seeds and sampler. Ancestral samplers (the default
    ddpm, 50 steps; steps None = all T) let fresh noise smooth each nudge; deterministic ones work too.
    """
    scorer = ClipScorer(clip_model, tokenizer, prompt, model_device(model))
    return sample_with(
        model, clip_guided_denoiser(clipped_denoiser(model), scorer, scale), seed=seed, count=count, width=width,
        height=height, steps=steps, sampler=sampler, spacing=spacing, callback=callback,
    )
