"""Loader nodes: model files from the pack's folders into the pack's own socket types."""
from __future__ import annotations

from comfy_api.latest import io

from .common import check_combos, model_file_inputs
from .dependencies import needs_packages
from .folders import ENCODERS, MODELS, model_file_list, resolve_model_file
from .model import ManagedModel, ModelSocket

EncoderSocket = io.Custom("SEMANTICA_ENCODER")  # carries a semantica_core ImageEncoder


def load_model_file(model_name: str, weights: str):
    """The checkpoint `model_name` in models/semantica as a SemanticaModel on the CPU (ComfyUI moves it later)."""
    import warnings

    from semantica_core.checkpoint import load_checkpoint

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no EMA weights.*")  # expected for untrained files
        return load_checkpoint(resolve_model_file(MODELS, model_name), weights=weights)


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
            outputs=[EncoderSocket.Output(display_name="encoder")],
        )

    @classmethod
    def validate_inputs(cls, encoder_name=None):
        return check_combos(encoder_name=encoder_name)

    @classmethod
    def execute(cls, encoder_name) -> io.NodeOutput:
        with needs_packages("Semantica Load Encoder"):
            from semantica_core.encoders import load_encoder  # heavy backends (open_clip, timm) load on first use

            return io.NodeOutput(load_encoder(resolve_model_file(ENCODERS, encoder_name)))


class SemanticaUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SemanticaUNetLoader",
            display_name="Semantica Load Model",
            category="semantica/loaders",
            description="Loads a Semantica checkpoint from models/semantica: a pair-conditioned model (image "
            "variations, mixing, SDEdit) or a single-image SinDiffusion model. ComfyUI moves it to the GPU when a "
            "sampler needs it and offloads it when another model needs the memory.",
            inputs=model_file_inputs(),
            outputs=[ModelSocket.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, weights=None):
        return check_combos(model_name=model_name, weights=weights)

    @classmethod
    def execute(cls, model_name, weights) -> io.NodeOutput:
        return io.NodeOutput(ManagedModel(load_model_file(model_name, weights), model_name))
