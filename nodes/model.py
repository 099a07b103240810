"""The SEMANTICA_MODEL socket, and core modules under ComfyUI's memory management.

A SEMANTICA_MODEL carries a `ManagedModel`: the loaded checkpoint (`.model`, a semantica_core SemanticaModel of kind
"pair_conditioned" or "single_image") and a `comfy.model_patcher.ModelPatcher` (`.patcher`) around its denoiser, so
ComfyUI moves the weights to the GPU when a node needs them and offloads them when another model needs the memory.
A node that samples calls `managed.load()` and passes the returned SemanticaModel to semantica_core; the pipeline
runs wherever the weights are.
"""
from __future__ import annotations

import torch
from torch import nn

import comfy.model_management
import comfy.model_patcher
from comfy_api.latest import io

from semantica_core.checkpoint import SemanticaModel

ModelSocket = io.Custom("SEMANTICA_MODEL")


class _Managed(nn.Module):
    """Holds a core module for ModelPatcher, which writes its bookkeeping (device, loaded memory) on what it wraps:
    those attributes land here, not on the core object (an ImageEncoder's `device` is a read-only property)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def managed_patcher(module: nn.Module) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher that loads `module` to ComfyUI's compute device and offloads it to the UNet offload device."""
    return comfy.model_patcher.ModelPatcher(
        _Managed(module),
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def patcher_of(module: nn.Module) -> comfy.model_patcher.ModelPatcher:
    """The module's ModelPatcher, made on first use and kept on the module (one per loaded file)."""
    patcher = getattr(module, "_semantica_patcher", None)
    if patcher is None:
        patcher = managed_patcher(module)
        module._semantica_patcher = patcher  # a plain attribute: nn.Module only registers modules and tensors
    return patcher


def load_to_compute_device(patcher: comfy.model_patcher.ModelPatcher) -> torch.device:
    """Asks ComfyUI to put the weights on its compute device (freeing other models if needed); returns the device."""
    # Plain torch modules cannot run partially loaded (ComfyUI's low-VRAM mode casts only its own layer types).
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return patcher.load_device


class ManagedModel:
    """What a SEMANTICA_MODEL socket carries: a loaded checkpoint under ComfyUI's memory management.

    `.model` is the semantica_core SemanticaModel (kind, resolution, encoder_info, denoiser, network); `.patcher`
    the ModelPatcher around its denoiser; `.name` the file name in models/semantica. Call `load()` before sampling.
    """

    def __init__(self, model: SemanticaModel, name: str):
        self.model = model
        self.name = name
        self.patcher = managed_patcher(model.denoiser)

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def device(self) -> torch.device:
        """The compute device `load()` moves the weights to."""
        return self.patcher.load_device

    def load(self) -> SemanticaModel:
        """The model with its weights on ComfyUI's compute device (the GPU when ComfyUI has one)."""
        load_to_compute_device(self.patcher)
        return self.model

    def __repr__(self) -> str:
        info = self.model.encoder_info
        encoder = f", encoder {info['encoder_id']}" if info else ""
        return f"Semantica {self.kind} model {self.name} ({self.model.resolution or 'any'} px{encoder})"
