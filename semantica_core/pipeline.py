"""What hosts call: sample variations of embeddings, and SDEdit a guide. Images in and out are [B,3,H,W] in [0, 1].

Both functions take any width and height (semantica_core.canvas: the network runs on a canvas rounded up to its
`required_multiple()` and the result is cropped back; SDEdit pads the guide by reflection, so the crop returns exactly
the requested pixels). Randomness comes only from per-image seeds, so image i is the same alone or in a batch.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .canvas import canvas_size, center_crop, model_device, pad_to, sample_canvas, to_unit
from .checkpoint import SemanticaModel, check_embeds_match
from .diffusion import BatchNoise, get_sigmas, sdedit
from .embeds import Embeds
from .memory import check_sampling_fits


def network_on_any_size(network: torch.nn.Module, x: torch.Tensor, c_noise: torch.Tensor, **condition) -> torch.Tensor:
    """The network's raw output for x [B, C, H, W] of any H and W: reflect-padded to its multiple, then cropped back.

    For hosts that hand the network latents of any size (ComfyUI's KSampler); our own samplers sample the whole
    rounded-up canvas instead and crop once at the end.
    """
    height, width = x.shape[-2:]
    canvas_w, canvas_h = canvas_size(network, width, height)
    if (canvas_w, canvas_h) == (width, height):
        return network(x, c_noise, **condition)
    return center_crop(network(pad_to(x, canvas_w, canvas_h), c_noise, **condition), width, height)


def _denoise_fn(model: SemanticaModel, embeds: Optional[Embeds], guidance: float):
    def denoise(x, sigma):
        return model.denoiser(x, sigma, embeds=embeds, guidance_scale=guidance)

    return denoise


@torch.no_grad()
def sample_variations(
    model: SemanticaModel,
    embeds: Optional[Embeds],
    *,
    seed: int,
    count: int = 1,
    steps: int = 30,
    guidance: float = 3.0,
    sampler: str = "dpmpp_2m",
    spacing: str = "karras",
    width: Optional[int] = None,
    height: Optional[int] = None,
    callback: Optional[Callable[[dict], None]] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """`count` variations of each row of `embeds`; image k of condition j uses seed + j * count + k.

    Returns [rows * count, C, height, width] in [0, 1] on the model's device. `embeds=None` samples unconditionally.
    width / height None or 0: the model's training resolution. device: where the weights are (the default).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1; got {count}")
    if not width or not height:
        if model.resolution is None:
            raise ValueError(
                f"{model.path} does not record the resolution it was trained at: give width and height explicitly"
            )
        width, height = width or model.resolution, height or model.resolution
    device = device or model_device(model)
    canvas_w, canvas_h = canvas_size(model.network, width, height)
    rows = 1
    if embeds is not None:
        check_embeds_match(model, embeds)
        rows = len(embeds)
        embeds = embeds.select(torch.arange(rows).repeat_interleave(count)).to(device=device, dtype=torch.float32)
    noise = BatchNoise.from_seed(seed, rows * count, device)
    guided = embeds is not None and guidance != 1.0
    check_sampling_fits(
        model.network, rows * count * (2 if guided else 1), canvas_h, canvas_w, device,
        f"{rows * count} image(s) of {width}x{height}{' with guidance' if guided else ''}", model.resolution,
    )
    sigmas = get_sigmas(model.denoiser.schedule, steps, spacing=spacing)
    return sample_canvas(model, _denoise_fn(model, embeds, guidance), noise, width, height, sigmas, sampler, callback)


@torch.no_grad()
def sdedit_images(
    model: SemanticaModel,
    guide: torch.Tensor,
    *,
    seed: int,
    t0: float = 0.5,
    steps: int = 30,
    repeats: int = 1,
    mask: Optional[torch.Tensor] = None,
    embeds: Optional[Embeds] = None,
    guidance: float = 1.0,
    sampler: str = "ddpm",
    spacing: str = "uniform",
    callback: Optional[Callable[[dict], None]] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """SDEdit: noise `guide` ([B,C,H,W] in [0,1], any H and W) to t0 and denoise it; returns [B,C,H,W] in [0, 1].

    mask [B or 1, 1, H, W] in [0, 1], 1 = region to change; outside it the result equals the guide exactly.
    embeds: one row for all images or one per image (image-conditioned models only). Image i uses seed + i.
    steps None or 0: one step per DDPM timestep below t0 (see `sdedit_sigmas`).
    """
    if guide.ndim != 4:
        raise ValueError(f"the guide must be images [B, C, H, W]; got shape {tuple(guide.shape)}")
    batch, channels, height, width = guide.shape
    if channels != model.channels:
        raise ValueError(f"the guide has {channels} channels but the model makes {model.channels}")
    device = device or model_device(model)
    canvas_w, canvas_h = canvas_size(model.network, width, height)
    guide01 = guide.to(device=device, dtype=torch.float32)
    padded_mask = None
    if mask is not None:
        fits = mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[0] in (1, batch)
        if not fits or mask.shape[-2:] != (height, width):
            raise ValueError(
                f"the mask must be [1 or {batch}, 1, {height}, {width}] (the guide's size); got {tuple(mask.shape)}"
            )
        mask = mask.to(device=device, dtype=torch.float32).clamp(0, 1)
        padded_mask = pad_to(mask, canvas_w, canvas_h)
    if embeds is not None:
        check_embeds_match(model, embeds)
        if len(embeds) not in (1, batch):
            raise ValueError(f"give one embedding for all {batch} guide images or one per image; got {len(embeds)}")
        embeds = embeds.repeat_to(batch).to(device=device, dtype=torch.float32)
    noise = BatchNoise.from_seed(seed, batch, device)
    guided = embeds is not None and guidance != 1.0
    check_sampling_fits(
        model.network, batch * (2 if guided else 1), canvas_h, canvas_w, device,
        f"SDEdit of {batch} image(s) of {width}x{height}{' with guidance' if guided else ''}", model.resolution,
    )
    out = sdedit(
        _denoise_fn(model, embeds, guidance), pad_to(guide01 * 2 - 1, canvas_w, canvas_h), model.denoiser.schedule,
        t0=t0, steps=steps, repeats=repeats, mask=padded_mask, sampler=sampler, noise=noise, callback=callback,
        spacing=spacing,
    )
    out = to_unit(center_crop(out, width, height))
    # Paste in [0, 1] so the kept region is bit-exact (a [-1, 1] round trip is not).
    return out if mask is None else torch.lerp(guide01, out, mask.expand_as(out))
