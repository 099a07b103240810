"""Embedding nodes: images to SEMANTICA_EMBEDS (a Semantica encoder or ComfyUI's CLIP vision), and mixing them.

A SEMANTICA_EMBEDS socket carries a semantica_core Embeds: tokens [B, N, D], pooled [B, D] and the encoder_id the
samplers check against the model's encoder. One row per input image; the samplers make variations of every row.
"""
from __future__ import annotations

import comfy.model_management
from comfy_api.latest import io

from .clip_vision import TOKEN_SOURCES
from .common import check_combos
from .convert import image_to_core
from .dependencies import needs_packages
from .loaders import EncoderSocket
from .model import load_to_compute_device, patcher_of

EmbedsSocket = io.Custom("SEMANTICA_EMBEDS")


def _to_intermediate(embeds):
    return embeds.to(device=comfy.model_management.intermediate_device())


class SemanticaEncodeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaEncodeImage",
            display_name="Semantica Encode Image",
            category="semantica/conditioning",
            description="Encodes images (RGB, RGBA over white, or grayscale; any size, the encoder resizes) with a "
            "Semantica encoder into embeddings, one row per image.",
            inputs=[EncoderSocket.Input("encoder"), io.Image.Input("image")],
            outputs=[EmbedsSocket.Output(display_name="embeds")],
        )

    @classmethod
    def execute(cls, encoder, image) -> io.NodeOutput:
        device = load_to_compute_device(patcher_of(encoder))
        embeds = encoder(image_to_core(image.to(device)))
        return io.NodeOutput(_to_intermediate(embeds))


class SemanticaClipVisionEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaClipVisionEmbeds",
            display_name="Semantica CLIP Vision Embeds",
            category="semantica/conditioning",
            description="Turns ComfyUI's CLIP vision output (CLIPVisionLoader + CLIPVisionEncode) into Semantica "
            "embeddings. The encoder id comes from the CLIP vision model's architecture and weights: with tokens "
            "'open_clip' it equals the id of `semantica encoder export open_clip:ARCH --weights` on the same "
            "weights, so models trained with that encoder accept these embeddings.",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="the model that made the output (for the encoder id)"),
                io.ClipVisionOutput.Input("clip_vision_output"),
                io.Combo.Input(
                    "tokens", options=list(TOKEN_SOURCES), default="open_clip",
                    tooltip="open_clip: last_hidden_state through the final LayerNorm without the class token, what "
                    "Semantica's open_clip encoders give; last_hidden_state / penultimate_hidden_states: ComfyUI's "
                    "hidden states as they are (for models trained on them)",
                ),
            ],
            outputs=[EmbedsSocket.Output(display_name="embeds")],
        )

    @classmethod
    def validate_inputs(cls, tokens=None):
        return check_combos(tokens=tokens)

    @classmethod
    def execute(cls, clip_vision, clip_vision_output, tokens) -> io.NodeOutput:
        from .clip_vision import clip_vision_embeds

        with needs_packages("Semantica CLIP Vision Embeds"):
            embeds = clip_vision_embeds(clip_vision, clip_vision_output, tokens)
        return io.NodeOutput(_to_intermediate(embeds))


class SemanticaEmbedsMix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaEmbedsMix",
            display_name="Semantica Mix Embeds",
            category="semantica/conditioning",
            description="Weighted interpolation (1 - weight) * a + weight * b of two embeddings from the same "
            "encoder; a single row is repeated to the other side's batch.",
            inputs=[
                EmbedsSocket.Input("embeds_a"),
                EmbedsSocket.Input("embeds_b"),
                io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="0 gives embeds_a, 1 gives embeds_b"),
            ],
            outputs=[EmbedsSocket.Output(display_name="embeds")],
        )

    @classmethod
    def execute(cls, embeds_a, embeds_b, weight) -> io.NodeOutput:
        from semantica_core.embeds import Embeds

        return io.NodeOutput(_to_intermediate(Embeds.mix(embeds_a, embeds_b, weight)))
