"""SinDiffusion nodes: train a model on one image, sample it at any size, outpaint, and text-guided sampling.

Thin adapters over semantica_core.single_image and semantica_core.text_guidance. Harmonization needs no node of its
own: Semantica SDEdit takes a single-image model.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

import comfy.model_management
import folder_paths
from comfy_api.latest import io

from .common import MAX_SIZE, TRAIN_PRESETS, check_combos, host_images, sampler_input, seed_input
from .convert import image_to_core
from .dependencies import needs_packages
from .folders import CLIP_FOLDER, MODELS, resolve_model_file
from .model import ManagedModel, ModelSocket
from .progress import SamplingProgress
from .sampling import run_on_host

# SinDiffusion Train's default steps, sized to finish in minutes where `auto` picks each preset (the CLI's
# `train single` defaults are the full runs: 4,000 and 50,000). The tiny preset's 1,300 progressive-size steps (its
# first 90 % at about half the pixels) train in 7.7 minutes on a 2-core CPU with native bf16 (600 full-size: 6.9).
IN_GRAPH_STEPS = {"sindiffusion_tiny": 1300, "sindiffusion": 6000}


def _single_image(model: ManagedModel, node: str):
    if model.kind != "single_image":
        raise ValueError(
            f"{node} needs a single-image (SinDiffusion) model; {model.name} is a '{model.kind}' model. Train one "
            f"with SinDiffusion Train or `semantica train single`."
        )
    return model.load()


def _free_name(folder: str, name: str) -> str:
    """`name`.safetensors, or `name`_00001.safetensors and up when taken: a trained model is never overwritten."""
    base = name.strip().removesuffix(".safetensors").replace("\\", "/").strip("/") or "sindiffusion"
    candidate, counter = f"{base}.safetensors", 1
    while os.path.exists(os.path.join(folder, candidate)):
        candidate, counter = f"{base}_{counter:05d}.safetensors", counter + 1
    return candidate


def _training_preset(preset: str, device: torch.device) -> str:
    """`auto`: the paper's network where there is a GPU, the tiny one on a CPU (16x less compute)."""
    if preset != "auto":
        return preset
    return "sindiffusion_tiny" if device.type == "cpu" else "sindiffusion"


def _training_key(picture: torch.Tensor, preset: str, size: int, steps: int, seed: int) -> str:
    """What makes a training run: the picture's 8-bit pixels and the settings. Equal keys give equal models."""
    digest = hashlib.sha256(picture.mul(255).round().to(torch.uint8).cpu().numpy().tobytes())
    digest.update(json.dumps([list(picture.shape), preset, size, steps, seed]).encode())
    return digest.hexdigest()[:32]


def _trained_before(folder: str, model_name: str, key: str) -> str | None:
    """A file `model_name`*.safetensors in `folder` that SinDiffusion Train wrote for the same key, if any."""
    from semantica_core.checkpoint import CheckpointError, read_checkpoint_metadata

    base = model_name.strip().removesuffix(".safetensors").replace("\\", "/").strip("/") or "sindiffusion"
    directory, stem = os.path.split(os.path.join(folder, base))
    if not os.path.isdir(directory):
        return None
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(stem) and name.endswith(".safetensors")):
            continue
        try:
            training = read_checkpoint_metadata(os.path.join(directory, name))["training"] or {}
        except (CheckpointError, OSError):
            continue  # another file of that name: not ours to reuse
        if training.get("training_key") == key:
            return os.path.relpath(os.path.join(directory, name), folder)
    return None


class SinDiffusionTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SinDiffusionTrain",
            display_name="SinDiffusion Train",
            category="semantica/sindiffusion",
            description="Trains a SinDiffusion model on one image (the first of the batch) and saves it to "
            "models/semantica, never overwriting a file; a second run with the same image and settings loads that "
            "file instead of training again. The defaults finish in minutes: on a CPU the tiny network on a 112 px "
            "picture, on a GPU the paper's network at 250 px. Outputs the model and the training image (the scale "
            "the model works at: outpaint and harmonize images of this size).",
            inputs=[
                io.Image.Input("image"),
                io.Int.Input("steps", default=0, min=0, max=200000,
                             tooltip="training steps; 0 = the preset's in-graph default (tiny: "
                             f"{IN_GRAPH_STEPS['sindiffusion_tiny']}, a few minutes on a CPU; sindiffusion: "
                             f"{IN_GRAPH_STEPS['sindiffusion']}, minutes on a GPU). Samples improve with more: "
                             "the paper trains 50000"),
                io.Int.Input("size", default=0, min=0, max=1024, step=1,
                             tooltip="long side of the training image in px; 0 = the preset's (tiny: 112, "
                             "sindiffusion: 250, the paper's). The model's receptive field is 101 px (tiny: 45 px): "
                             "larger images give more diversity and take longer"),
                io.Combo.Input("preset", options=list(TRAIN_PRESETS), default="auto",
                               tooltip="auto: sindiffusion on a GPU, sindiffusion_tiny on a CPU; sindiffusion: the "
                               "paper's network; sindiffusion_tiny: 16x less compute"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.String.Input("model_name", default="sindiffusion",
                                tooltip="file name in models/semantica (a number is added when it exists)"),
            ],
            outputs=[ModelSocket.Output(display_name="model"), io.Image.Output(display_name="training_image")],
        )

    @classmethod
    def validate_inputs(cls, preset=None):
        return check_combos(preset=preset)

    @classmethod
    def execute(cls, image, steps, size, preset, seed, model_name) -> io.NodeOutput:
        from semantica_core.checkpoint import load_checkpoint
        from semantica_core.single_image_train import (
            PRESETS,
            SingleImageTrainConfig,
            prepare_training_image,
            save_single_image_checkpoint,
            train_single_image,
        )

        device = comfy.model_management.get_torch_device()
        preset = _training_preset(preset, device)
        size = size or PRESETS[preset]["max_side"]
        steps = steps or IN_GRAPH_STEPS[preset]
        picture = image_to_core(image[:1].clone())
        key = _training_key(picture, preset, size, steps, seed)
        folder = folder_paths.get_folder_paths(MODELS)[0]
        reused = _trained_before(folder, model_name, key)
        if reused is not None:
            training_image = prepare_training_image(picture, size).add(1).div(2)
            return io.NodeOutput(ManagedModel(load_checkpoint(os.path.join(folder, reused)), reused),
                                 host_images(training_image))

        comfy.model_management.free_memory(4 * 1024**3, device)  # room for a batch of activations at 250 px
        progress = SamplingProgress(total=steps, preview=False)
        # ComfyUI runs nodes under inference_mode; training needs autograd and tensors made outside it.
        with torch.inference_mode(False), torch.enable_grad():
            config = SingleImageTrainConfig.from_preset(preset, max_side=size, seed=seed)
            state = train_single_image(
                picture.clone().to(device), config, steps, device=device,
                callback=lambda info: progress({"i": info["step"] - 1, "total": info["total"]}),
            )
        name = _free_name(folder, model_name)
        path = save_single_image_checkpoint(os.path.join(folder, name), state, source_image="ComfyUI image",
                                            training_key=key)
        training_image = state.image.add(1).div(2)
        del state
        return io.NodeOutput(ManagedModel(load_checkpoint(path), name), host_images(training_image))


class SinDiffusionSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SinDiffusionSample",
            display_name="SinDiffusion Sample",
            category="semantica/sindiffusion",
            description="New images with the patches of the training image, at any size and aspect ratio. "
            "Image k uses seed + k. ddpm with 1000 steps is the paper's sampler; dpmpp_2m with 20-50 steps is "
            "the fast one.",
            inputs=[
                ModelSocket.Input("model"),
                io.Int.Input("width", default=0, min=0, max=MAX_SIZE, tooltip="0 = the training width"),
                io.Int.Input("height", default=0, min=0, max=MAX_SIZE, tooltip="0 = the training height"),
                seed_input(),
                io.Int.Input("count", default=4, min=1, max=64),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="fast samplers: 20-50; ddpm: 1000 = the paper's ancestral sampler"),
                sampler_input("dpmpp_2m"),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, sampler=None):
        return check_combos(sampler=sampler)

    @classmethod
    def execute(cls, model, width, height, seed, count, steps, sampler) -> io.NodeOutput:
        from semantica_core.single_image import sample_single_image

        loaded = _single_image(model, "SinDiffusion Sample")
        images = run_on_host(model, lambda: sample_single_image(
            loaded, seed=seed, count=count, width=width or None, height=height or None, steps=steps,
            sampler=sampler, callback=SamplingProgress(),
        ))
        return io.NodeOutput(host_images(images))


class SinDiffusionOutpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SinDiffusionOutpaint",
            display_name="SinDiffusion Outpaint",
            category="semantica/sindiffusion",
            description="Extends the image by the margins with the model's patches; the original area is kept "
            "exactly. Give the image at the model's scale (SinDiffusion Train's training_image, or a photo resized "
            "like it). Image i of a batch uses seed + i.",
            inputs=[
                ModelSocket.Input("model"),
                io.Image.Input("image"),
                io.Int.Input("left", default=0, min=0, max=MAX_SIZE),
                io.Int.Input("right", default=128, min=0, max=MAX_SIZE),
                io.Int.Input("top", default=0, min=0, max=MAX_SIZE),
                io.Int.Input("bottom", default=0, min=0, max=MAX_SIZE),
                seed_input(),
                io.Int.Input("steps", default=100, min=1, max=1000,
                             tooltip="ddpm: 1000 = one step per DDPM timestep, the most seamless"),
                sampler_input("ddpm", tooltip="ancestral samplers (ddpm, euler_ancestral) blend the seams best"),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, sampler=None):
        return check_combos(sampler=sampler)

    @classmethod
    def execute(cls, model, image, left, right, top, bottom, seed, steps, sampler) -> io.NodeOutput:
        from semantica_core.single_image import outpaint

        loaded = _single_image(model, "SinDiffusion Outpaint")
        images = run_on_host(model, lambda: outpaint(
            loaded, image_to_core(image.to(model.device)), left, right, top, bottom, seed=seed, steps=steps,
            sampler=sampler, callback=SamplingProgress(),
        ))
        return io.NodeOutput(host_images(images))


class SinDiffusionTextGuided(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SinDiffusionTextGuided",
            display_name="SinDiffusion Text Guided",
            category="semantica/sindiffusion",
            description="Samples steered toward a text prompt by CLIP: each step's x0 estimate moves up the "
            "gradient of its CLIP similarity to the prompt. Needs a full open_clip checkpoint (image and text "
            "towers) in models/open_clip and its architecture name.",
            inputs=[
                ModelSocket.Input("model"),
                io.Combo.Input("clip_name", options=folder_paths.get_filename_list(CLIP_FOLDER),
                               tooltip="open_clip checkpoint in models/open_clip (e.g. OpenAI ViT-B-32)"),
                io.String.Input("clip_arch", default="ViT-B-32-quickgelu",
                                tooltip="the open_clip architecture of that file (open_clip.list_models() names)"),
                io.String.Input("prompt", default="", multiline=True),
                io.Float.Input("scale", default=0.05, min=0.0, max=1.0, step=0.005, round=0.001,
                               tooltip="how far each step moves toward the prompt (0 = unguided)"),
                io.Int.Input("width", default=0, min=0, max=MAX_SIZE, tooltip="0 = the training width"),
                io.Int.Input("height", default=0, min=0, max=MAX_SIZE, tooltip="0 = the training height"),
                seed_input(),
                io.Int.Input("count", default=4, min=1, max=64),
                io.Int.Input("steps", default=100, min=1, max=1000),
                sampler_input("ddpm"),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, sampler=None, clip_name=None):
        return check_combos(clip_name=clip_name, sampler=sampler)

    @classmethod
    def execute(cls, model, clip_name, clip_arch, prompt, scale, width, height, seed, count, steps,
                sampler) -> io.NodeOutput:
        with needs_packages("SinDiffusion Text Guided"):
            from semantica_core.text_guidance import load_clip, sample_text_guided

        if not prompt.strip():
            raise ValueError("SinDiffusion Text Guided: the prompt is empty; describe what the samples should show")
        loaded = _single_image(model, "SinDiffusion Text Guided")
        path = resolve_model_file(CLIP_FOLDER, clip_name)
        # The CLIP gradient needs autograd, which ComfyUI's inference_mode turns off.
        with torch.inference_mode(False):
            with needs_packages("SinDiffusion Text Guided"):
                clip_model, tokenizer = load_clip(clip_arch, path, device=model.device)
            images = run_on_host(model, lambda: sample_text_guided(
                loaded, prompt, clip_model, tokenizer, scale, seed=seed, count=count, width=width or None,
                height=height or None, steps=steps, sampler=sampler, callback=SamplingProgress(),
            ))
        return io.NodeOutput(host_images(images))


NODES = [SinDiffusionTrain, SinDiffusionSample, SinDiffusionOutpaint, SinDiffusionTextGuided]
