"""SIFID: the Fréchet distance between the feature vectors at all spatial positions of a real and a generated image.

The published metric (SinGAN, SinDiffusion) uses the 64-channel output of InceptionV3's first pooling block. Its
weights cannot be downloaded here, so they come from a user-supplied file. Two labelled substitutes stand in
without one: the early stages of a CNN image encoder file (EfficientNet-Lite0, ImageNet-trained, ships with the
demo), or a fixed random-weight conv stack of the Inception block's shape. Neither is comparable to published SIFID.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .frechet import frechet_distance_features

SUBSTITUTE_LABEL = "random-conv64 features (substitute, not comparable to published SIFID)"
INCEPTION_LABEL = "InceptionV3 first pooling block, 64 dims"
_INCEPTION_PREFIXES = ("Conv2d_1a_3x3.", "Conv2d_2a_3x3.", "Conv2d_2b_3x3.")


class InceptionFirstBlock(nn.Module):
    """InceptionV3 up to its first max pool (torchvision layer names, so its state dicts load as they are).

    Input [B,3,H,W] in [0, 1], scaled to [-1, 1] as pytorch-fid and the original SIFID code do; no resize.
    """

    label = INCEPTION_LABEL
    comparable = True

    def __init__(self):
        super().__init__()
        from torchvision.models.inception import BasicConv2d

        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(images * 2 - 1)))
        return F.max_pool2d(x, kernel_size=3, stride=2)


class RandomConvFeatures(nn.Module):
    """The substitute: InceptionFirstBlock's shape (3 convs, 64 channels, max pool) with fixed random weights.

    Seeded by its own generator, so every run and machine computes the same features; random conv features still
    respond to colour, edges and texture at the same scale, which is what SIFID compares.
    """

    label = SUBSTITUTE_LABEL
    comparable = False

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        shapes = [(32, 3, 2, 0), (32, 32, 1, 0), (64, 32, 1, 1)]
        self.convs = nn.ModuleList()
        for out_ch, in_ch, stride, padding in shapes:
            conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / (in_ch * 9)) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * 2 - 1
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.max_pool2d(x, kernel_size=3, stride=2)


class EncoderEarlyFeatures(nn.Module):
    """A CNN encoder's stem and first blocks, down to stride 4: learned features at the scale of Inception's first
    block. Learned features tell a sample with the photo's structure from colour soup better than random ones do.

    Needs a timm EfficientNet-style module (conv_stem, bn1, blocks); input [B,3,H,W] in [0, 1], normalized with the
    encoder's own mean and std, no resize.
    """

    comparable = False

    def __init__(self, encoder):
        super().__init__()
        module = encoder.module
        if not all(hasattr(module, name) for name in ("conv_stem", "bn1", "blocks")):
            raise ValueError(
                f"SIFID features need a CNN encoder with conv_stem, bn1 and blocks (an EfficientNet); "
                f"{encoder.spec.arch} has no such stages. Use the EfficientNet-Lite0 encoder file."
            )
        layers, stride = [module.conv_stem, module.bn1], 2
        for block in module.blocks:
            block_stride = _stride(block)
            if stride * block_stride > 4:
                break
            layers.append(block)
            stride *= block_stride
        self.layers = nn.Sequential(*layers)
        preprocess = encoder.spec.preprocess
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1))
        channels = self.layers(torch.zeros(1, 3, 32, 32)).shape[1]
        self.label = (f"{encoder.spec.arch} stride-{stride} features, {channels} dims "
                      "(learned substitute, not comparable to published SIFID)")
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers((images - self.mean) / self.std)


def _stride(block: nn.Module) -> int:
    """The product of a block's conv strides (timm blocks downsample in one conv)."""
    stride = 1
    for layer in block.modules():
        if isinstance(layer, nn.Conv2d):
            stride *= layer.stride[0]
    return stride


def load_inception_first_block(path: Union[str, Path]) -> InceptionFirstBlock:
    """InceptionFirstBlock with weights from a safetensors file holding a torchvision-layout InceptionV3 state dict.

    torchvision's `inception_v3` weights and pytorch-fid's FID Inception weights both use these layer names; only the
    first block's tensors are read, a "module." prefix is tolerated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights file not found: {path}. Export torchvision's inception_v3 (or pytorch-fid's FID "
            "Inception) state dict to safetensors on a machine that has it, or leave the option out to use the "
            "labelled substitute features."
        )
    from safetensors.torch import load_file

    state = {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
    state = {k: v for k, v in state.items() if k.startswith(_INCEPTION_PREFIXES)}
    net = InceptionFirstBlock()
    missing = [k for k in net.state_dict() if k not in state]
    if missing:
        raise ValueError(
            f"{path} is not an InceptionV3 state dict in torchvision layout: missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}"
        )
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def sifid_feature_network(
    inception_path: Optional[Union[str, Path]] = None, encoder_path: Optional[Union[str, Path]] = None
) -> nn.Module:
    """The Inception first block from a file, else an encoder file's early stages, else the random-conv substitute.
    Check `.comparable` and `.label`."""
    if inception_path and encoder_path:
        raise ValueError("give the Inception weights or an encoder file for SIFID features, not both")
    if inception_path:
        return load_inception_first_block(inception_path)
    if encoder_path:
        from semantica_core.encoders import load_encoder

        return EncoderEarlyFeatures(load_encoder(encoder_path))
    return RandomConvFeatures().eval()


def spatial_features(feature_net: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """One [positions, channels] matrix per image of [B,3,H,W] in [0, 1]."""
    device = next(feature_net.parameters()).device
    with torch.no_grad():
        features = feature_net(images.to(device=device, dtype=torch.float32))
    return [f.flatten(1).T for f in features]


def sifid(feature_net: nn.Module, real: torch.Tensor, fakes: torch.Tensor) -> torch.Tensor:
    """SIFID of each of `fakes` [B,3,h,w] against `real` [1,3,H,W] (both in [0, 1]); returns [B] float64.

    Real and fake need not have the same size: each is summarised by the Gaussian of its feature positions.
    """
    if real.ndim != 4 or real.shape[0] != 1:
        raise ValueError(f"real must be one image [1,3,H,W]; got {tuple(real.shape)}")
    (real_features,) = spatial_features(feature_net, real)
    return torch.stack([frechet_distance_features(real_features, f) for f in spatial_features(feature_net, fakes)])
