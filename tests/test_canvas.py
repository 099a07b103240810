"""semantica_core.canvas: the canvas every sampling entry point runs on, and the per-image seeds."""
import pytest
import torch

from semantica_core.canvas import canvas_size, center_crop, pad_to, round_up, to_unit
from semantica_core.diffusion import BatchNoise
from semantica_core.networks import PatchUNet, PatchUNetConfig


def test_canvas_is_the_request_rounded_up_to_the_networks_multiple():
    network = PatchUNet(PatchUNetConfig(base_channels=8, channel_mult=(1, 2, 4)))  # multiple 4
    assert canvas_size(network, 30, 17) == (32, 20)
    assert canvas_size(network, 32, 4) == (32, 4)
    assert [round_up(v, 8) for v in (1, 8, 9)] == [8, 8, 16]
    with pytest.raises(ValueError, match="at least 1 pixel"):
        canvas_size(network, 0, 5)


@pytest.mark.parametrize("size", [(5, 3), (8, 8), (2, 1)])
def test_padding_to_a_canvas_and_cropping_back_is_exact(size):
    width, height = size
    x = torch.rand(2, 3, height, width)
    padded = pad_to(x, 12, 9)
    assert padded.shape == (2, 3, 9, 12)
    assert torch.equal(center_crop(padded, width, height), x)  # the crop lands on the original pixels


def test_to_unit_maps_model_pixels_to_images():
    assert torch.equal(to_unit(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_seeds_of_a_request_are_seed_plus_i_and_checked():
    assert BatchNoise.from_seed(7, 3).seeds == [7, 8, 9]
    batch, alone = BatchNoise.from_seed(7, 3).randn((4,)), BatchNoise.from_seed(8, 1).randn((4,))
    assert torch.equal(batch[1], alone[0])  # image 1 of the batch is image 0 of seed + 1
    BatchNoise.from_seed(2**64 - 2, 2)  # the last seeds torch generators take
    for seed, count in ((-1, 1), (2**64 - 2, 3)):
        with pytest.raises(ValueError, match=r"seed must be in 0..2\*\*64-1 for all"):
            BatchNoise.from_seed(seed, count)
