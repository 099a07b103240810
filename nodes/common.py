"""What several nodes share: input limits, the inputs that recur, the combo check and the IMAGE output.

Input names and limits here are part of every saved workflow (ComfyUI stores inputs by name): change none of them.
"""
from __future__ import annotations

import comfy.model_management
from comfy_api.latest import io

from semantica_core.diffusion import SAMPLERS, SPACINGS
from semantica_core.imageops import FIT_MODES

from .clip_vision import TOKEN_SOURCES
from .convert import core_to_image
from .folders import CLIP_FOLDER, ENCODERS, MODELS, model_file_list, resolve_model_file

SAMPLER_NAMES = list(SAMPLERS)
MAX_SEED = 2**63 - 1  # image i uses seed + i, and torch seeds stop at 2**64 - 1
MAX_SIZE = 8192
WEIGHTS = ("ema", "raw")
TRAIN_PRESETS = ("auto", "sindiffusion", "sindiffusion_tiny")

# Every combo input of the pack by name: its fixed options, or the model folder whose files are the options.
OPTIONS = {"sampler": SAMPLER_NAMES, "spacing": list(SPACINGS), "weights": list(WEIGHTS), "mode": list(FIT_MODES),
           "tokens": list(TOKEN_SOURCES), "preset": list(TRAIN_PRESETS)}
FILE_OPTIONS = {"model_name": MODELS, "encoder_name": ENCODERS, "clip_name": CLIP_FOLDER}


def check_combos(**values) -> bool | str:
    """A node's validate_inputs: True, or what is wrong with the first bad combo value (None = not given yet).

    ComfyUI 0.3.x does not check V3 combo values itself: a bad one would fail only inside the node, so it is refused
    at queue time, and a missing model file with the folders that were searched."""
    for name, value in values.items():
        if value is None:
            continue
        if name in FILE_OPTIONS:
            try:
                resolve_model_file(FILE_OPTIONS[name], value)
            except FileNotFoundError as e:
                return str(e)
        elif value not in OPTIONS[name]:
            return f"{name} '{value}' is not one of: {', '.join(OPTIONS[name])}"
    return True


def seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True)


def sampler_input(default: str, tooltip: str | None = None) -> io.Combo.Input:
    return io.Combo.Input("sampler", options=SAMPLER_NAMES, default=default, tooltip=tooltip)


def model_file_inputs() -> list:
    """model_name and weights: a checkpoint in models/semantica, as both model loaders take it."""
    return [
        io.Combo.Input("model_name", options=model_file_list(MODELS)),
        io.Combo.Input(
            "weights", options=list(WEIGHTS), default="ema",
            tooltip="ema: the averaged weights training exports (use these); raw: the last training step's. "
            "A file without EMA weights (from `semantica init`) falls back to raw.",
        ),
    ]


def host_images(images):
    """Core images [B, 3, H, W] in [0, 1] as an IMAGE output, on ComfyUI's intermediate device."""
    return core_to_image(images).to(comfy.model_management.intermediate_device())
