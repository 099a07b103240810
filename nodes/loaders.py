"""Loader nodes: model files from the pack's folders into the pack's own socket types."""
from __future__ import annotations

from comfy_api.latest import io

from .folders import ENCODERS, model_file_list, resolve_model_file

Encoder = io.Custom("SEMANTICA_ENCODER")


class SemanticaEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaEncoderLoader",
            display_name="Semantica Load Encoder",
            category="semantica/loaders",
            description="Loads a frozen image encoder from models/semantica/encoders "
            "(written by `semantica encoder export NAME`).",
            inputs=[io.Combo.Input("encoder_name", options=model_file_list(ENCODERS))],
            outputs=[Encoder.Output(display_name="encoder")],
        )

    @classmethod
    def validate_inputs(cls, encoder_name=None):
        # A missing file fails at queue time with the folders searched (ComfyUI 0.3.x does not check V3 combos).
        if encoder_name is not None:
            try:
                resolve_model_file(ENCODERS, encoder_name)
            except FileNotFoundError as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, encoder_name) -> io.NodeOutput:
        from semantica_core.encoders import load_encoder  # heavy backends (open_clip, timm) load on first use

        return io.NodeOutput(load_encoder(resolve_model_file(ENCODERS, encoder_name)))
