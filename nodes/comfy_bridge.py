"""Nodes that put Semantica models into ComfyUI's own sampling: MODEL, CONDITIONING and pixel-space LATENT.

Load Model for KSampler gives a MODEL (nodes/comfy_model.py) for both model kinds; Semantica Conditioning turns
embeddings into KSampler's positive and the learned null condition into its negative (KSampler's cfg is the
guidance scale); Semantica Empty Latent is the empty pixel-space latent of any size. Images go in and out through
VAELoader's `pixel_space` VAE with VAEEncode / VAEDecode, so img2img (`denoise`) and SetLatentNoiseMask work as
for any ComfyUI model.
"""
from __future__ import annotations

import torch

import comfy.model_management
from comfy_api.latest import io

from .comfy_model import ENCODER_ID, NULL, POOLED
from .common import MAX_SIZE, check_combos, model_file_inputs
from .embeds import EmbedsSocket
from .loaders import load_model_file


class SemanticaKSamplerModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaKSamplerModelLoader",
            display_name="Semantica Load Model for KSampler",
            category="semantica/loaders",
            description="Loads a Semantica checkpoint from models/semantica as ComfyUI's MODEL, for KSampler, "
            "SamplerCustomAdvanced and every node that takes a MODEL: a pair-conditioned model (conditioning from "
            "Semantica Conditioning) or a single-image SinDiffusion model (Semantica Conditioning without embeds, "
            "cfg 1). Its latents are pixels: use VAELoader's pixel_space with VAEEncode / VAEDecode.",
            inputs=model_file_inputs(),
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, weights=None):
        return check_combos(model_name=model_name, weights=weights)

    @classmethod
    def execute(cls, model_name, weights) -> io.NodeOutput:
        from .comfy_model import comfy_model

        return io.NodeOutput(comfy_model(load_model_file(model_name, weights), model_name))


class SemanticaConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaConditioning",
            display_name="Semantica Conditioning",
            category="semantica/conditioning",
            description="Embeddings as KSampler's conditioning: positive is the embeddings (one row per image; the "
            "latent batch cycles through the rows), negative the model's learned null condition, so KSampler's "
            "cfg is classifier-free guidance. The encoder id travels along: a model trained with another encoder "
            "stops the sampler with both ids named. Without embeds both are the null condition (single-image "
            "models, or unconditional sampling).",
            inputs=[EmbedsSocket.Input("embeds", optional=True)],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, embeds=None) -> io.NodeOutput:
        device = comfy.model_management.intermediate_device()
        if embeds is None:
            null = [[torch.zeros(1, 1, 1, device=device), {POOLED: torch.zeros(1, 1, device=device), NULL: True}]]
            return io.NodeOutput(null, null)
        embeds = embeds.to(device=device, dtype=torch.float32)
        extras = {ENCODER_ID: embeds.encoder_id}
        positive = [[embeds.tokens, {**extras, POOLED: embeds.pooled, NULL: False}]]
        # Same shapes as the positive, so ComfyUI batches both into one forward as the core's guidance does.
        negative = [[torch.zeros_like(embeds.tokens), {**extras, POOLED: torch.zeros_like(embeds.pooled), NULL: True}]]
        return io.NodeOutput(positive, negative)


class SemanticaEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaEmptyLatent",
            display_name="Semantica Empty Latent",
            category="semantica/sampling",
            description="An empty pixel-space latent of any size for Semantica MODELs (KSampler sizes its channels "
            "to the model). The network runs on the latent padded to its size multiple and cropped back.",
            inputs=[
                io.Int.Input("width", default=64, min=1, max=MAX_SIZE, step=1),
                io.Int.Input("height", default=64, min=1, max=MAX_SIZE, step=1),
                io.Int.Input("batch_size", default=1, min=1, max=4096),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, width, height, batch_size) -> io.NodeOutput:
        device = comfy.model_management.intermediate_device()
        return io.NodeOutput({"samples": torch.zeros(batch_size, 3, height, width, device=device)})


NODES = [SemanticaKSamplerModelLoader, SemanticaConditioning, SemanticaEmptyLatent]
