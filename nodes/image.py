"""Image nodes: bringing inputs to a model's resolution."""
from __future__ import annotations

import comfy.model_management
from comfy_api.latest import io

from semantica_core.imageops import FIT_MODES, fit_image

from .common import check_combos, host_images
from .convert import image_to_core


class SemanticaImagePrep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaImagePrep",
            display_name="Semantica Image Prep",
            category="semantica/image",
            description="Brings images (RGB, RGBA or grayscale, any size) to an RGB image of the given size. "
            "RGBA is composited over white.",
            inputs=[
                io.Image.Input("image"),
                io.Int.Input("width", default=512, min=8, max=8192, step=8),
                io.Int.Input("height", default=512, min=8, max=8192, step=8),
                io.Combo.Input(
                    "mode", options=list(FIT_MODES), default="crop",
                    tooltip="crop: fill the size and cut the borders; pad: fit inside and pad with gray; "
                    "resize: stretch to the size",
                ),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def validate_inputs(cls, mode=None):
        return check_combos(mode=mode)

    @classmethod
    def execute(cls, image, width, height, mode) -> io.NodeOutput:
        images = image_to_core(image.to(comfy.model_management.get_torch_device()))
        out = fit_image(images, width, height, mode)
        return io.NodeOutput(host_images(out))
