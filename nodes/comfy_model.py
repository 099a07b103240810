"""A Semantica checkpoint as ComfyUI's own MODEL: what KSampler, SamplerCustomAdvanced and other packs sample.

A MODEL is a `ModelPatcher` around a `comfy.model_base.BaseModel`. Ours keeps ComfyUI's machinery (conditioning,
CFG batching, masks, memory management) and swaps in the core's pieces: `model_sampling` is the core's
`ModelSampling` (our schedule and prediction exactly) and `diffusion_model` calls the core network, padded to its
size multiple and cropped back. The latent is pixel space: 3 channels in [-1, 1], what VAELoader's `pixel_space`
encodes and decodes.

The conditioning (from SemanticaConditioning) carries the embeddings' pooled vector, the encoder id and a null flag
beside the tokens; `extra_conds` checks the encoder id against the model before the first step.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base

from semantica_core.checkpoint import SemanticaModel, check_embeds_match
from semantica_core.diffusion import ModelSampling
from semantica_core.diffusion.denoiser import in_cpu_calls
from semantica_core.networks.blocks import block_check
from semantica_core.pipeline import network_on_any_size

# Keys of a conditioning's extras dict (ComfyUI passes them to `extra_conds` as keyword arguments).
POOLED = "semantica_pooled"
NULL = "semantica_null"
ENCODER_ID = "semantica_encoder_id"

SUPPORTED_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


class PixelLatent(comfy.latent_formats.LatentFormat):
    """The model's own pixels in [-1, 1]: no scaling, and previews show the channels as RGB."""

    def __init__(self, channels: int = 3):
        self.latent_channels = channels
        self.latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] if channels == 3 else None
        if channels == 1:
            self.latent_rgb_factors = [[1.0, 1.0, 1.0]]

    def process_in(self, latent):
        return latent

    def process_out(self, latent):
        return latent


class SemanticaModelConfig(comfy.supported_models_base.BASE):
    """ComfyUI's model config: no UNet of ComfyUI's is built (`diffusion_model` is ours), pixel-space latents."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    supported_inference_dtypes = SUPPORTED_DTYPES

    def __init__(self, channels: int):
        super().__init__({"disable_unet_model_creation": True})
        self.latent_format = PixelLatent(channels)


class SemanticaDiffusionModel(nn.Module):
    """The core network in ComfyUI's `diffusion_model(x, t, context=..., **extra_conds)` call."""

    def __init__(self, denoiser: nn.Module, conditioned: bool):
        super().__init__()
        self.network = denoiser.network
        self._denoiser = (denoiser,)  # not a submodule: its network is registered once, above
        self.conditioned = conditioned

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **conds):
        tokens = pooled = drop = None
        null = conds.get(NULL)
        if self.conditioned and null is not None and not bool((null > 0.5).all()):
            # Null rows get the learned null condition inside the network, as in the core's guidance batch.
            tokens, pooled, drop = context, conds[POOLED], null > 0.5

        def network(x, timesteps, tokens, pooled, drop):
            return network_on_any_size(self.network, x, timesteps, tokens=tokens, pooled=pooled, drop_cond=drop)

        # The network runs as the Denoiser runs it (its precision: bf16 autocast and channels-last where the device
        # has native bf16; on a CPU, cache-sized calls), so KSampler and our sampler nodes compute the same numbers.
        precision = self._denoiser[0].resolved_precision(x.device)
        # Cancel takes effect between network blocks, not only between steps.
        with block_check(comfy.model_management.throw_exception_if_processing_interrupted), precision.autocast():
            out = in_cpu_calls(network, precision.input(x), timesteps, tokens, pooled, drop)
        return out.contiguous() if precision.channels_last else out  # the sampler's state stays in NCHW


class SemanticaBaseModel(comfy.model_base.BaseModel):
    """BaseModel with the core's model_sampling and network; one per loaded checkpoint."""

    def __init__(self, model: SemanticaModel, name: str):
        config = SemanticaModelConfig(model.channels)
        model_type = {"v": comfy.model_base.ModelType.V_PREDICTION}.get(
            model.denoiser.config.prediction, comfy.model_base.ModelType.EPS  # a label only: model_sampling is ours
        )
        super().__init__(config, model_type=model_type)
        self.semantica = model
        self.semantica_name = name
        self.diffusion_model = SemanticaDiffusionModel(model.denoiser, model.kind == "pair_conditioned")
        # SinDiffusion's sampler clamps x0 to the image range (single_image.clipped_denoiser); so does this one.
        self.model_sampling = ModelSampling(model.denoiser.config, clamp_denoised=model.kind == "single_image")
        self.base_channels = int(model.network_config.get("base_channels", 64))

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)  # the tokens, as c_crossattn
        encoder_id, null = kwargs.get(ENCODER_ID), bool(kwargs.get(NULL, False))
        model = self.semantica
        if model.kind != "pair_conditioned":
            if encoder_id is not None and not null:
                check_embeds_match(model, SimpleNamespace(encoder_id=encoder_id))  # raises: takes no embeds
            return {}
        if encoder_id is None and not null:
            raise ValueError(
                f"{self.semantica_name} is conditioned on image embeddings, but the conditioning was not made by "
                "Semantica Conditioning (e.g. a text encoder's): connect Semantica Conditioning's positive and "
                "negative to the sampler"
            )
        if not null:
            check_embeds_match(model, SimpleNamespace(encoder_id=encoder_id, tokens=kwargs.get("cross_attn")))
        pooled = kwargs.get(POOLED)
        if pooled is None:
            pooled = torch.zeros(1, 1)
        out[POOLED] = comfy.conds.CONDRegular(pooled)
        out[NULL] = comfy.conds.CONDRegular(torch.full((pooled.shape[0],), float(null)))
        return out

    def memory_required(self, input_shape, cond_shapes={}):
        # Activations of our UNets grow with pixels x base channels; ComfyUI's default factor is for latents 8x
        # smaller than pixels and would ask for tens of GB at 512 px.
        pixels = input_shape[0] * input_shape[-1] * input_shape[-2]
        return pixels * self.base_channels * 64 * comfy.model_management.dtype_size(self.get_dtype())


class FullLoadPatcher(comfy.model_patcher.ModelPatcher):
    """Our layers are plain torch layers, which ComfyUI cannot run partly offloaded (only its cast layers can):
    under --lowvram the model loads whole, and ComfyUI frees other models for it. Clones keep this class."""

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        return super().load(device_to, lowvram_model_memory, force_patch_weights, full_load=True)


def inference_dtype(parameters: int, device) -> torch.dtype:
    """The dtype ComfyUI picks for a diffusion model on `device` (bf16/fp16 on GPUs that run them, else fp32).

    Where ComfyUI would store one dtype and compute in another (manual cast), the compute dtype is stored: only
    ComfyUI's own layers cast on the fly."""
    dtype = comfy.model_management.unet_dtype(device=device, model_params=parameters, supported_dtypes=SUPPORTED_DTYPES)
    manual_cast = comfy.model_management.unet_manual_cast(dtype, device, SUPPORTED_DTYPES)
    return manual_cast if manual_cast is not None else dtype


def comfy_model(model: SemanticaModel, name: str) -> comfy.model_patcher.ModelPatcher:
    """A loaded checkpoint as a MODEL, its weights in ComfyUI's dtype on the offload device until a sampler loads it."""
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    parameters = sum(p.numel() for p in model.network.parameters())
    model.network.to(device=offload_device, dtype=inference_dtype(parameters, load_device))
    base = SemanticaBaseModel(model, name)
    return FullLoadPatcher(base, load_device=load_device, offload_device=offload_device)
