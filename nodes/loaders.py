"""Loader nodes: model files from the pack's folders into the pack's own socket types."""
from __future__ import annotations

from comfy_api.latest import io

from .dependencies import needs_packages
from .folders import ENCODERS, MODELS, model_file_list, resolve_model_file
from .model import ManagedModel, ModelSocket

EncoderSocket = io.Custom("SEMANTICA_ENCODER")  # carries a semantica_core ImageEncoder
WEIGHTS = ("ema", "raw")


def _check_file(folder: str, name) -> bool | str:
    # A missing file fails at queue time with the folders searched (ComfyUI 0.3.x does not check V3 combos).
    if name is not None:
        try:
            resolve_model_file(folder, name)
        except FileNotFoundError as e:
            return str(e)
    return True


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
        return _check_file(ENCODERS, encoder_name)

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
            inputs=[
                io.Combo.Input("model_name", options=model_file_list(MODELS)),
                io.Combo.Input(
                    "weights", options=list(WEIGHTS), default="ema",
                    tooltip="ema: the averaged weights training exports (use these); raw: the last training step's. "
                    "A file without EMA weights (from `semantica init`) falls back to raw.",
                ),
            ],
            outputs=[ModelSocket.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, weights=None):
        if weights is not None and weights not in WEIGHTS:
            return f"weights '{weights}' is not one of: {', '.join(WEIGHTS)}"
        return _check_file(MODELS, model_name)

    @classmethod
    def execute(cls, model_name, weights) -> io.NodeOutput:
        import warnings

        from semantica_core.checkpoint import load_checkpoint

        path = resolve_model_file(MODELS, model_name)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*has no EMA weights.*")  # expected for untrained files
            model = load_checkpoint(path, weights=weights)
        return io.NodeOutput(ManagedModel(model, model_name))
