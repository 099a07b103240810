"""The pack's model folders in ComfyUI's `folder_paths`, and finding files in them with errors a user can act on.

models/semantica/            Semantica checkpoints (variation, SDEdit and single-image models)
models/semantica/encoders/   frozen image encoders the checkpoints were trained with
Extra locations can be added under the same names in ComfyUI's extra_model_paths.yaml.
"""
from __future__ import annotations

import os

import folder_paths

MODELS = "semantica"
ENCODERS = "semantica_encoders"

# What belongs in each folder, for error messages.
FOLDER_CONTENTS = {
    MODELS: "Semantica checkpoints (.safetensors) written by `semantica train` or downloaded with a workflow",
    ENCODERS: "image encoders (.safetensors) written by `semantica encoder export NAME`",
}
_SUBDIRS = {MODELS: "semantica", ENCODERS: os.path.join("semantica", "encoders")}


def register_folders() -> None:
    """Adds the default folders under ComfyUI's models directory, keeping paths users configured."""
    for name, subdir in _SUBDIRS.items():
        path = os.path.join(folder_paths.models_dir, subdir)
        if name in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, path, is_default=True)
            folder_paths.folder_names_and_paths[name][1].update(folder_paths.supported_pt_extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], set(folder_paths.supported_pt_extensions))
        try:
            os.makedirs(path, exist_ok=True)  # so users find where the files go
        except OSError:
            pass


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
