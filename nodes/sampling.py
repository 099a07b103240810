"""Sampling nodes: image variations of embeddings, and SDEdit of a guide image (optionally masked).

Both call semantica_core.pipeline with the model on ComfyUI's compute device, report every sampler step to the
progress bar (with an x0 preview when ComfyUI runs with --preview-method), stop within one network block when the
user cancels (`run_on_host`), and return images on ComfyUI's intermediate device. A request too big for the
device's free memory is refused by the core before it starts.
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

import comfy.model_management
from comfy_api.latest import io

from semantica_core.diffusion import SPACINGS
from semantica_core.memory import RequestTooLargeError
from semantica_core.networks import block_check

from .common import MAX_SIZE, check_combos, host_images, sampler_input, seed_input
from .convert import image_to_core, mask_to_core
from .embeds import EmbedsSocket
from .model import ModelSocket
from .progress import SamplingProgress

T = TypeVar("T")


def run_on_host(model, call: Callable[[], T]) -> T:
    """Runs a core call with ComfyUI's Cancel checked between the network's blocks (not only between steps).

    On a GPU a request refused for memory is tried once more after ComfyUI offloads its other models: the core
    counts only memory that is free now, and ComfyUI keeps idle models loaded until something needs the room."""
    with block_check(comfy.model_management.throw_exception_if_processing_interrupted):
        try:
            return call()
        except RequestTooLargeError:
            if model.device.type != "cuda":
                raise
            comfy.model_management.free_memory(float("inf"), model.device, keep_loaded=[model.patcher])
            comfy.model_management.soft_empty_cache()
            return call()


class SemanticaVariationSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaVariationSampler",
            display_name="Semantica Variations",
            category="semantica/sampling",
            description="Samples variations of each embedding with a pair-conditioned model. Variation k of "
            "embedding j uses seed + j * count + k, so every image can be reproduced alone. The embeddings must "
            "come from the encoder the model was trained with.",
            inputs=[
                ModelSocket.Input("model"),
                EmbedsSocket.Input("embeds"),
                seed_input(),
                io.Int.Input("count", default=4, min=1, max=64, tooltip="variations per embedding"),
                io.Int.Input("steps", default=30, min=1, max=1000),
                io.Float.Input("guidance", default=3.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="classifier-free guidance scale: 1 = none, higher follows the image more"),
                sampler_input("dpmpp_2m"),
                io.Combo.Input("spacing", options=list(SPACINGS), default="karras",
                               tooltip="noise levels: karras (fewer steps) or uniform in time"),
                io.Int.Input("width", default=0, min=0, max=MAX_SIZE, step=1,
                             tooltip="0 = the model's resolution; any size works (sampled on a canvas rounded "
                             "up to the network's multiple, then cropped)"),
                io.Int.Input("height", default=0, min=0, max=MAX_SIZE, step=1, tooltip="0 = the model's resolution"),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, sampler=None, spacing=None):
        return check_combos(sampler=sampler, spacing=spacing)

    @classmethod
    def execute(cls, model, embeds, seed, count, steps, guidance, sampler, spacing, width, height) -> io.NodeOutput:
        from semantica_core.pipeline import sample_variations

        if model.kind != "pair_conditioned":
            raise ValueError(
                f"Semantica Variations needs a pair-conditioned model; {model.name} is a '{model.kind}' model "
                f"(sample single-image models with the SinDiffusion nodes)"
            )
        loaded = model.load()
        images = run_on_host(model, lambda: sample_variations(
            loaded, embeds, seed=seed, count=count, steps=steps, guidance=guidance, sampler=sampler,
            spacing=spacing, width=width or None, height=height or None, callback=SamplingProgress(),
        ))
        return io.NodeOutput(host_images(images))


class SemanticaSDEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaSDEdit",
            display_name="Semantica SDEdit",
            category="semantica/sampling",
            description="SDEdit: noises the guide image (a stroke painting, a photo) to `strength` and denoises it "
            "with the model, so the result is realistic and follows the guide. With a mask only the masked area "
            "(mask 1) changes; the rest is the guide exactly. Any image size works; bring photos near the model's "
            "resolution first (Semantica Image Prep).",
            inputs=[
                ModelSocket.Input("model"),
                io.Image.Input("image", tooltip="the guide: RGB, RGBA (over white) or grayscale"),
                seed_input(),
                io.Float.Input("strength", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="t0: how far the guide is noised; low keeps the guide, high trusts the model"),
                io.Int.Input("steps", default=30, min=1, max=1000, tooltip="sampler steps of one pass"),
                io.Int.Input("repeats", default=1, min=1, max=20,
                             tooltip="passes, each starting from the previous result (more realism, less guide)"),
                sampler_input("ddpm"),
                io.Float.Input("guidance", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="classifier-free guidance scale when embeds are connected (1 = none)"),
                io.Mask.Input("mask", optional=True, tooltip="1 = the area to change (LoadImage's mask: transparent "
                              "pixels); resized to the image"),
                EmbedsSocket.Input("embeds", optional=True,
                                   tooltip="condition for pair-conditioned models: one row, or one per image"),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, sampler=None):
        return check_combos(sampler=sampler)

    @classmethod
    def execute(cls, model, image, seed, strength, steps, repeats, sampler, guidance, mask=None,
                embeds=None) -> io.NodeOutput:
        from semantica_core.pipeline import sdedit_images

        loaded = model.load()
        guide = image_to_core(image.to(model.device))
        batch, _, height, width = guide.shape
        if mask is not None:
            mask = mask_to_core(mask.to(model.device), batch, height, width)
            if not mask.any():
                logging.warning("Semantica SDEdit: the mask is empty (0 everywhere), so nothing changes; paint the "
                                "area to change in the mask editor, or disconnect the mask to edit the whole image")
        images = run_on_host(model, lambda: sdedit_images(
            loaded, guide, seed=seed, t0=strength, steps=steps, repeats=repeats, mask=mask, embeds=embeds,
            guidance=guidance, sampler=sampler, callback=SamplingProgress(),
        ))
        return io.NodeOutput(host_images(images))
