"""The pack's model folders in ComfyUI's `folder_paths`, and finding files in them with errors a user can act on.

models/semantica/            Semantica checkpoints (variation, SDEdit and single-image models)
models/semantica/encoders/   frozen image encoders the checkpoints were trained with
models/open_clip/            full open_clip checkpoints (image and text towers) for text-guided sampling
The pack's own models/demo/ (and its encoders/) is registered after them as a second search path, so the embedded
demo models and the real EfficientNet-Lite0 encoder are in the loaders' lists of any ComfyUI the pack is cloned
into, with nothing copied. Extra locations can be added under the same names in ComfyUI's extra_model_paths.yaml.
"""
from __future__ import annotations

import logging
import os
import shutil

import folder_paths

MODELS = "semantica"
ENCODERS = "semantica_encoders"
CLIP_FOLDER = "open_clip"

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODELS_DIR = os.path.join(PACK_DIR, "models", "demo")
EXAMPLE_INPUTS_DIR = os.path.join(PACK_DIR, "assets", "inputs")

# What belongs in each folder, for error messages.
FOLDER_CONTENTS = {
    MODELS: "Semantica checkpoints (.safetensors) written by `semantica train` or SinDiffusion Train",
    ENCODERS: "image encoders (.safetensors) written by `semantica encoder export NAME`",
    CLIP_FOLDER: "full open_clip checkpoints (image and text towers, e.g. OpenAI ViT-B-32)",
}
_SUBDIRS = {MODELS: "semantica", ENCODERS: os.path.join("semantica", "encoders")}
_EMBEDDED = {MODELS: DEMO_MODELS_DIR, ENCODERS: os.path.join(DEMO_MODELS_DIR, "encoders")}


def register_folders() -> None:
    """Adds the default folders under ComfyUI's models directory (first: where new files go) and the pack's
    embedded models (last), keeping paths users configured; and models/open_clip where ComfyUI has no such name."""
    for name, subdir in _SUBDIRS.items():
        path = os.path.join(folder_paths.models_dir, subdir)
        if name in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, path, is_default=True)
            folder_paths.folder_names_and_paths[name][1].update(folder_paths.supported_pt_extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], set(folder_paths.supported_pt_extensions))
        folder_paths.add_model_folder_path(name, _EMBEDDED[name])
        _make_folder(path)
    if CLIP_FOLDER not in folder_paths.folder_names_and_paths:  # ComfyUI has none of its own for these
        path = os.path.join(folder_paths.models_dir, CLIP_FOLDER)
        folder_paths.folder_names_and_paths[CLIP_FOLDER] = ([path], set(folder_paths.supported_pt_extensions))
        _make_folder(path)


def _make_folder(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)  # so users find where the files go
    except OSError:
        pass  # a read-only models folder: the files can still come from extra_model_paths.yaml


def install_example_inputs() -> list[str]:
    """Copies the pack's example images into ComfyUI's input folder (LoadImage lists only that folder), where a
    file of that name is not already there: the templates' LoadImage nodes name them. Returns the names copied."""
    copied = []
    input_dir = folder_paths.get_input_directory()
    for name in sorted(os.listdir(EXAMPLE_INPUTS_DIR)):
        target = os.path.join(input_dir, name)
        if os.path.exists(target):
            continue  # never replace a file of the user's
        try:
            os.makedirs(input_dir, exist_ok=True)
            shutil.copyfile(os.path.join(EXAMPLE_INPUTS_DIR, name), target)
            copied.append(name)
        except OSError as error:  # a read-only input folder: the templates then need the user's own images
            logging.warning("Semantica: could not copy the example image %s into %s: %s", name, input_dir, error)
    return copied


def model_file_list(folder_name: str) -> list[str]:
    """File names for a loader's dropdown; encoders live below models/semantica, so they are kept out of its list."""
    names = folder_paths.get_filename_list(folder_name)
    if folder_name == MODELS:
        names = [n for n in names if n.replace("\\", "/").split("/")[0] != "encoders"]
    return names


def resolve_model_file(folder_name: str, filename: str) -> str:
    """Full path of `filename` in the registered folder, or FileNotFoundError naming where it looked."""
    path = folder_paths.get_full_path(folder_name, filename) if filename else None
    if path is None:
        registered = folder_name in folder_paths.folder_names_and_paths
        folders = folder_paths.get_folder_paths(folder_name) if registered else []
        where = ", ".join(folders) if folders else f"(no folder registered as '{folder_name}')"
        what = FOLDER_CONTENTS.get(folder_name, "model files")
        raise FileNotFoundError(
            f"Semantica: model file '{filename}' was not found in the '{folder_name}' folder(s): {where}. "
            f"Put {what} there, then refresh the node list (press R in the ComfyUI window) and pick the file."
        )
    return path
