"""semantica_core.pipeline: what the nodes call. Tiny random networks (the `tiny` preset at 32 px), few steps."""
import pytest
import torch

from helpers import randomize_zero_init
from semantica_core.canvas import canvas_size
from semantica_core.checkpoint import EncoderMismatchError, load_checkpoint, save_checkpoint
from semantica_core.diffusion import DiffusionConfig, ScheduleConfig
from semantica_core.embeds import Embeds
from semantica_core.networks import PatchUNetConfig, build_network
from semantica_core.pipeline import sample_variations, sdedit_images
from semantica_core.presets import network_preset

ENCODER_ID = "test:tiny-encoder:1"
TOKENS, TOKEN_DIM, POOLED_DIM = 4, 16, 16
# What "the same seed gives the same image whatever the batch" promises: the same 8-bit image, up to one level where
# a value sits on a rounding edge. A batch and the same images one by one run different CPU kernels (the batch size
# changes the blocking), which moves float32 results by up to a few 1e-4 after several steps; a wrong seed or row
# order moves them by tenths.
BATCH_ATOL = 1 / 255


def batch_atol(model) -> float:
    """BATCH_ATOL in float32; on the bf16 fast path (precision auto on a CPU with native bf16) the kernels' rounding
    differs by batch size at bf16's precision, a few eps after several steps: still far below a wrong seed's tenths."""
    if model.denoiser.resolved_precision(next(model.network.parameters()).device).dtype == torch.bfloat16:
        return 4 * torch.finfo(torch.bfloat16).eps
    return BATCH_ATOL


def write_pair_model(path, seed: int = 0, encoder_id: str = ENCODER_ID):
    from semantica_core.presets import default_diffusion_config

    config = network_preset("tiny", TOKEN_DIM, POOLED_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = randomize_zero_init(build_network("pair_conditioned", config))
    info = dict(encoder_id=encoder_id, token_dim=TOKEN_DIM, pooled_dim=POOLED_DIM, num_tokens=TOKENS)
    return save_checkpoint(path, kind="pair_conditioned", network_config=config,
                           diffusion_config=default_diffusion_config("tiny", config.resolution),
                           state_dict=network.state_dict(), encoder_info=info)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_pair_model(tmp_path_factory.mktemp("pipeline") / "tiny.safetensors")
    return load_checkpoint(path, weights="raw")


@pytest.fixture(scope="module")
def single_model(tmp_path_factory):
    config = PatchUNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        network = randomize_zero_init(build_network("single_image", config))
    diffusion = DiffusionConfig(schedule=ScheduleConfig(kind="vp_linear", timesteps=1000), prediction="eps")
    path = save_checkpoint(tmp_path_factory.mktemp("pipeline") / "single.safetensors", kind="single_image",
                           network_config=config, diffusion_config=diffusion, state_dict=network.state_dict())
    return load_checkpoint(path, weights="raw")


def embeds(rows: int, seed: int = 0, encoder_id: str = ENCODER_ID) -> Embeds:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(rows, TOKENS, TOKEN_DIM, generator=g)
    return Embeds(tokens, torch.randn(rows, POOLED_DIM, generator=g), encoder_id)


def guides(batch: int, height: int = 32, width: int = 32) -> torch.Tensor:
    """Smooth, distinct images in [0, 1]: a different colour ramp per image."""
    y = torch.linspace(0, 1, height).view(1, 1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, 1, width)
    k = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1) / max(batch, 1)
    return torch.cat([x * (1 - k) + k * y, y.expand(batch, 1, height, width), (x + y + k) % 1.0], dim=1).clamp(0, 1)


def test_variations_are_the_same_alone_and_in_a_batch_of_8(model):
    cond = embeds(1)
    batch = sample_variations(model, cond, seed=11, count=8, steps=3, sampler="euler_ancestral")
    assert batch.shape == (8, 3, 32, 32) and 0 <= batch.min() and batch.max() <= 1
    for k in (0, 3, 7):
        alone = sample_variations(model, cond, seed=11 + k, count=1, steps=3, sampler="euler_ancestral")
        torch.testing.assert_close(batch[k], alone[0], atol=batch_atol(model), rtol=0)
    assert (batch[0] - batch[1]).abs().max() > 0.05  # different seeds, different images
    again = sample_variations(model, cond, seed=11, count=8, steps=3, sampler="euler_ancestral")
    assert torch.equal(batch, again)  # the same call is bit for bit reproducible


def test_rows_and_count_order_seeds_row_major(model):
    cond = embeds(2)
    out = sample_variations(model, cond, seed=3, count=2, steps=2, sampler="euler")
    assert out.shape == (4, 3, 32, 32)
    # image k of condition j uses seed + j * count + k
    second_row = sample_variations(model, cond.select(1), seed=5, count=2, steps=2, sampler="euler")
    torch.testing.assert_close(out[2:], second_row, atol=batch_atol(model), rtol=0)


def test_sdedit_is_the_same_alone_and_in_a_batch_of_8(model):
    guide = guides(8)
    batch = sdedit_images(model, guide, seed=21, t0=0.6, steps=3, sampler="ddpm")
    assert batch.shape == guide.shape
    for i in (0, 5):
        alone = sdedit_images(model, guide[i : i + 1], seed=21 + i, t0=0.6, steps=3, sampler="ddpm")
        torch.testing.assert_close(batch[i], alone[0], atol=batch_atol(model), rtol=0)


@pytest.mark.parametrize("width, height", [(30, 18), (33, 7), (1, 1), (32, 32)])
def test_any_size_is_padded_to_the_multiple_and_cropped_back(model, width, height):
    multiple = model.network.required_multiple()
    assert multiple == 4
    canvas = canvas_size(model.network, width, height)
    assert canvas[0] % multiple == 0 and canvas[1] % multiple == 0 and canvas[0] - width < multiple
    out = sample_variations(model, embeds(1), seed=0, count=2, steps=2, width=width, height=height)
    assert out.shape == (2, 3, height, width)

    guide = guides(2, height, width)
    edit = sdedit_images(model, guide, seed=0, t0=0.02, steps=2, sampler="ddim")
    assert edit.shape == guide.shape
    # At a small t0 SDEdit returns nearly the guide: the crop lands on the guide's own pixels, not a shifted window.
    error = (edit - guide).abs().mean()
    assert error < 0.02
    if width > 2:
        assert error < (edit[..., 1:] - guide[..., :-1]).abs().mean()


def test_masked_sdedit_keeps_the_unmasked_region_exactly(model):
    guide = guides(2, 30, 26)  # not a multiple of 4: the mask is padded with the guide
    mask = torch.zeros(1, 1, 30, 26)
    mask[..., 8:20, 5:18] = 1.0
    mask[..., 20:22, 5:18] = 0.5  # a soft edge
    out = sdedit_images(model, guide, seed=4, t0=0.8, steps=3, mask=mask, sampler="ddpm", repeats=2)
    keep = (mask == 0).expand_as(out)
    assert torch.equal(out[keep], guide[keep])
    change = (mask == 1).expand_as(out)
    assert (out[change] - guide[change]).abs().mean() > 0.05  # the masked region was re-generated


def test_guidance_changes_the_output(model):
    cond = embeds(1, seed=2)
    plain = sample_variations(model, cond, seed=8, count=2, steps=3, guidance=1.0, sampler="euler")
    guided = sample_variations(model, cond, seed=8, count=2, steps=3, guidance=4.0, sampler="euler")
    assert (plain - guided).abs().max() > 1e-3
    # and the condition matters: other embeds, other images
    other = sample_variations(model, embeds(1, seed=3), seed=8, count=2, steps=3, guidance=1.0, sampler="euler")
    assert (plain - other).abs().max() > 1e-3


def test_sdedit_guidance_and_embeds(model):
    guide = guides(2)
    base = sdedit_images(model, guide, seed=1, t0=0.7, steps=3, sampler="euler")
    cond = sdedit_images(model, guide, seed=1, t0=0.7, steps=3, sampler="euler", embeds=embeds(1), guidance=3.0)
    assert (base - cond).abs().max() > 1e-3
    with pytest.raises(ValueError, match="one embedding for all 2 guide images or one per image"):
        sdedit_images(model, guide, seed=1, t0=0.5, steps=2, embeds=embeds(3))


def test_embeds_from_another_encoder_name_both_encoders(model):
    wrong = embeds(1, encoder_id="timm:resnet10t:random-0-abcdef")
    with pytest.raises(EncoderMismatchError) as e:
        sample_variations(model, wrong, seed=0, count=1, steps=1)
    assert "timm:resnet10t:random-0-abcdef" in str(e.value) and ENCODER_ID in str(e.value)


def test_bad_masks_and_sizes_get_clear_errors(model):
    guide = guides(2)
    with pytest.raises(ValueError, match=r"mask must be \[1 or 2, 1, 32, 32\]"):
        sdedit_images(model, guide, seed=0, t0=0.5, steps=1, mask=torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="at least 1 pixel"):
        canvas_size(model.network, 0, 5)
    with pytest.raises(ValueError, match="count must be at least 1"):
        sample_variations(model, embeds(1), seed=0, count=0, steps=1)


def test_single_image_models_sdedit_and_need_a_size(single_model):
    guide = guides(1, 20, 28)
    out = sdedit_images(single_model, guide, seed=0, t0=0.3, steps=2, sampler="ddim")
    assert out.shape == guide.shape
    with pytest.raises(ValueError, match="give width and height"):
        sample_variations(single_model, None, seed=0, count=1, steps=1)
    out = sample_variations(single_model, None, seed=0, count=1, steps=2, width=12, height=10)
    assert out.shape == (1, 3, 10, 12)
    with pytest.raises(EncoderMismatchError, match="not image-conditioned"):
        sdedit_images(single_model, guide, seed=0, t0=0.5, steps=1, embeds=embeds(1))
