"""SinDiffusion sampling: sample a single-image model at any size and outpaint with it.

The model is a `single_image` checkpoint written by semantica_core.single_image_train. Sampling clamps the x0
estimate to the image range, as the official sampler does.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .canvas import canvas_size, model_device, round_up, sample_canvas, to_unit
from .checkpoint import SemanticaModel
from .diffusion import BatchNoise, get_sigmas, sdedit
from .memory import check_sampling_fits


# ----------------------------------------------------------------------------------------------------------------
# Using a trained model (a SemanticaModel of kind "single_image")


def training_size(model: SemanticaModel) -> tuple[int, int]:
    """(width, height) the model was trained at, from its checkpoint's training info (256 x 256 if it says nothing)."""
    info = model.training_info or {}
    return int(info.get("train_width", 256)), int(info.get("train_height", 256))


def default_spacing(sampler: str) -> str:
    """Ancestral and DDIM sampling use the schedule's own uniform levels (ddpm with 1000 steps = the paper's
    sampler); the ODE and multistep samplers use Karras spacing."""
    return "uniform" if sampler in ("ddpm", "ddim", "euler_ancestral") else "karras"


def ddpm_steps(model: SemanticaModel) -> int:
    return int(model.denoiser.schedule.timesteps)


def _check_single_image(model: SemanticaModel) -> None:
    if model.kind != "single_image":
        raise ValueError(
            f"{model.path} is a '{model.kind}' model; this needs a single-image (SinDiffusion) model trained with "
            "`semantica train single` or the SinDiffusionTrain node"
        )


def clipped_denoiser(model: SemanticaModel) -> Callable:
    """`denoise(x, sigma) -> x0` with x0 clamped to the image range, as the official sampler (clip_denoised=True).

    An eps model's x0 = x - sigma * eps magnifies eps errors by sigma (about 157 at T=1000): unclamped, a model
    that is not fully trained collapses to flat saturated colours (substitute SIFID 38 vs 7 at 300 tiny steps).
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model.denoiser(x, sigma).clamp(-1, 1)

    return denoise


def sample_with(
    model: SemanticaModel,
    denoise: Callable,
    *,
    seed: int,
    count: int,
    width: Optional[int],
    height: Optional[int],
    steps: Optional[int],
    sampler: str,
    spacing: Optional[str],
    callback: Optional[Callable[[dict], None]],
) -> torch.Tensor:
    """Fresh samples [count,3,height,width] in [0, 1] from `denoise`; image k uses seed + k, as sample_variations.

    The canvas is the request rounded up to the network's multiple, cropped back at the centre.
    """
    _check_single_image(model)
    if count < 1:
        raise ValueError(f"count must be at least 1; got {count}")
    device = model_device(model)
    default_w, default_h = training_size(model)
    width, height = int(width or default_w), int(height or default_h)
    canvas_w, canvas_h = canvas_size(model.network, width, height)
    noise = BatchNoise.from_seed(seed, count, device)
    check_sampling_fits(model.network, count, canvas_h, canvas_w, device, f"{count} image(s) of {width}x{height}")
    sigmas = get_sigmas(model.denoiser.schedule, steps or ddpm_steps(model), spacing or default_spacing(sampler))
    return sample_canvas(model, denoise, noise, width, height, sigmas, sampler, callback)


def sample_single_image(
    model: SemanticaModel,
    *,
    seed: int,
    count: int = 1,
    width: Optional[int] = None,
    height: Optional[int] = None,
    steps: Optional[int] = 50,
    sampler: str = "dpmpp_2m",
    spacing: Optional[str] = None,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """`count` samples [count,3,height,width] in [0, 1] at any size (default: the training size); image k uses
    seed + k. steps None = one step per DDPM timestep (with "ddpm": the paper's 1000-step ancestral sampler)."""
    return sample_with(
        model, clipped_denoiser(model), seed=seed, count=count, width=width, height=height, steps=steps,
        sampler=sampler, spacing=spacing, callback=callback,
    )


def outpaint_canvas(image: torch.Tensor, left: int, right: int, top: int, bottom: int):
    """The guide and the mask for outpainting `image` [B,3,H,W] in [0, 1]: the canvas grown by the margins, the new
    area filled by replicating the border (only a start: it is re-noised from t0 = 1), mask 1 there and 0 on the
    image."""
    if min(left, right, top, bottom) < 0:
        raise ValueError(f"outpaint margins must be >= 0; got left={left} right={right} top={top} bottom={bottom}")
    batch, _, height, width = image.shape
    guide = F.pad(image.float(), (left, right, top, bottom), mode="replicate")
    mask = torch.ones(batch, 1, height + top + bottom, width + left + right, device=image.device)
    mask[:, :, top : top + height, left : left + width] = 0
    return guide, mask


def outpaint(
    model: SemanticaModel,
    image: torch.Tensor,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    *,
    seed: int,
    steps: Optional[int] = 50,
    sampler: str = "ddpm",
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """Extends `image` [B,3,H,W] in [0, 1] by the margins; returns [B,3,H+top+bottom,W+left+right] in [0, 1].

    SDEdit from full noise (t0 = 1) with the image as the kept region: before every model call the kept region is
    replaced by the image noised to the current level (RePaint's replacement), so the new area grows out of it.
    Image i uses seed + i. The kept region of the result is the input, bit for bit. steps None = one step per DDPM
    timestep.
    """
    _check_single_image(model)
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"outpaint needs images [B,3,H,W] in [0, 1]; got shape {tuple(image.shape)}")
    device = model_device(model)
    image = image.to(device=device, dtype=torch.float32)
    batch, _, height, width = image.shape
    noise = BatchNoise.from_seed(seed, batch, device)
    # Grow the canvas to the network's multiple on the right and bottom; cropped off again below.
    multiple = model.network.required_multiple()
    extra_w = round_up(width + left + right, multiple) - (width + left + right)
    extra_h = round_up(height + top + bottom, multiple) - (height + top + bottom)
    guide, mask = outpaint_canvas(image, left, right + extra_w, top, bottom + extra_h)
    check_sampling_fits(model.network, batch, guide.shape[-2], guide.shape[-1], device,
                        f"outpainting {batch} image(s) to {guide.shape[-1] - extra_w}x{guide.shape[-2] - extra_h}")
    out = sdedit(
        clipped_denoiser(model), guide * 2 - 1, model.denoiser.schedule, t0=1.0, steps=steps, mask=mask,
        sampler=sampler, noise=noise, callback=callback,
    )
    out = to_unit(out[..., : out.shape[-2] - extra_h, : out.shape[-1] - extra_w])
    out[:, :, top : top + height, left : left + width] = image  # exact by construction, not by arithmetic
    return out
