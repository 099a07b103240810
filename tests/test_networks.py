"""Networks: shapes, null condition, configs, receptive field, checkpointing, autocast, memory format, batching."""
import json

import pytest
import torch
from torch import nn

from helpers import randomize_zero_init
from semantica_core.networks import (
    PairConditionedUNet,
    PatchUNet,
    PatchUNetConfig,
    UNetConfig,
    build_network,
)
from semantica_core.networks.patch_unet import remove_group_norms
from semantica_core.presets import PRESETS, network_preset, preset_kind

TOKEN_DIM, POOLED_DIM = 12, 10


def small_config(**overrides) -> UNetConfig:
    fields = dict(
        resolution=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
        head_dim=8, token_dim=TOKEN_DIM, pooled_dim=POOLED_DIM,
    )
    return UNetConfig(**{**fields, **overrides})


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    return randomize_zero_init(net, std=0.1, generator=torch.Generator().manual_seed(seed))


def small_unet(seed: int = 0, **overrides) -> PairConditionedUNet:
    torch.manual_seed(seed)
    return randomize(PairConditionedUNet(small_config(**overrides)), seed).eval()


def inputs(batch: int, size=(16, 16), num_tokens: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *size, generator=g)
    c_noise = torch.rand(batch, generator=g) * 10
    tokens = torch.randn(batch, num_tokens, TOKEN_DIM, generator=g)
    pooled = torch.randn(batch, POOLED_DIM, generator=g)
    return x, c_noise, tokens, pooled


def test_output_shapes():
    net = small_unet()
    x, c, tokens, pooled = inputs(2, size=(16, 24), num_tokens=7)
    assert net(x, c, tokens, pooled).shape == (2, 3, 16, 24)
    assert net(x, c).shape == (2, 3, 16, 24)
    assert net(x, c[0]).shape == (2, 3, 16, 24)  # one c_noise for the whole batch
    patch = PatchUNet(PatchUNetConfig(base_channels=8, channel_mult=(1, 2, 4)))
    assert patch(torch.randn(2, 3, 12, 20), torch.rand(2), tokens=tokens, pooled=pooled).shape == (2, 3, 12, 20)


def test_null_rows_ignore_their_condition_and_equal_the_unconditional_output():
    net = small_unet()
    x, c, tokens, pooled = inputs(3)
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        out = net(x, c, tokens, pooled, drop_cond=drop)
        out_other = net(x, c, tokens + torch.randn_like(tokens), pooled + torch.randn_like(pooled), drop_cond=drop)
        out_none = net(x, c, drop_cond=drop)
        alone = [net(x[i : i + 1], c[i : i + 1]) for i in (0, 2)]
    torch.testing.assert_close(out[drop], out_other[drop], atol=1e-6, rtol=0)
    assert (out[1] - out_other[1]).abs().max() > 1e-3  # a kept row does depend on its condition
    # A dropped row attends to N copies of the null token: the same as the single null token of tokens=None.
    torch.testing.assert_close(out[drop], torch.cat(alone), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[drop], out_none[drop], atol=1e-5, rtol=0)


def test_condition_reaches_the_output_through_tokens_and_pooled():
    net = small_unet()
    x, c, tokens, pooled = inputs(2)
    with torch.no_grad():
        base = net(x, c, tokens, pooled)
        assert (net(x, c, tokens * 2, pooled) - base).abs().max() > 1e-3
        assert (net(x, c, tokens, pooled * 2) - base).abs().max() > 1e-3


def test_token_layout_reads_where_each_token_sits():
    net = small_unet(token_layout=True, num_tokens=5)
    x, c, tokens, pooled = inputs(3)
    swapped = tokens[:, [1, 0, 2, 3, 4]]  # the same set of tokens, two of them at each other's place
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        base = net(x, c, tokens, pooled)
        assert (net(x, c, swapped, pooled) - base).abs().max() > 1e-3
        # Null rows: the same with any condition, and the same as tokens=None (which fills the whole grid).
        out = net(x, c, tokens, pooled, drop_cond=drop)
        out_none = net(x, c)
    torch.testing.assert_close(out[drop], out_none[drop], atol=1e-5, rtol=0)
    # Without the layout the network reads an unordered set: swapping tokens changes nothing.
    plain = small_unet()
    with torch.no_grad():
        torch.testing.assert_close(plain(x, c, swapped, pooled), plain(x, c, tokens, pooled), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="reads a grid of 5 tokens; got 4"):
        net(x, c, tokens[:, :4], pooled)
    with pytest.raises(ValueError, match="token_layout needs num_tokens"):
        small_config(token_layout=True)


def test_bad_inputs_raise_clear_errors():
    net = small_unet(channel_mult=(1, 2, 2), attention_resolutions=(8, 4))
    assert net.required_multiple() == 4
    _, c, tokens, pooled = inputs(1)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 3, 30, 32), c)
    with pytest.raises(ValueError, match=f"tokens \\[1, N, {TOKEN_DIM}\\]"):
        net(torch.randn(1, 3, 16, 16), c, tokens[..., :-1], pooled)
    with pytest.raises(ValueError, match="without tokens"):
        net(torch.randn(1, 3, 16, 16), c, None, pooled)
    patch = PatchUNet(PatchUNetConfig(base_channels=8))
    with pytest.raises(ValueError, match="multiples of 4"):
        patch(torch.randn(1, 3, 18, 20), c)
    with pytest.raises(ValueError, match="match no level"):
        small_config(attention_resolutions=(12,))


def test_config_round_trip_and_unknown_keys():
    for config in (small_config(dropout=0.1, head_dim=None, num_heads=2), PatchUNetConfig(channel_mult=(1, 2))):
        data = json.loads(json.dumps(config.to_dict()))
        assert type(config).from_dict(data) == config
        with pytest.raises(ValueError, match=r"unknown \w+Config keys \['chanel_mult'\]"):
            type(config).from_dict({**data, "chanel_mult": [1]})
    assert isinstance(build_network("pair_conditioned", small_config().to_dict()), PairConditionedUNet)
    assert isinstance(build_network("single_image", {"base_channels": 8}), PatchUNet)
    with pytest.raises(ValueError, match="pair_conditioned"):
        build_network("text_to_image", {})


def test_presets_build():
    for name in PRESETS:
        config = network_preset(name, token_dim=64, pooled_dim=32)
        with torch.device("meta"):  # shapes only: base256 is too large to initialise in a unit test
            net = build_network(preset_kind(name), config.to_dict())
        assert sum(p.numel() for p in net.parameters()) > 0
    assert network_preset("tiny").resolution == 32
    with pytest.raises(ValueError, match="unknown network preset"):
        network_preset("huge")


def test_patch_unet_receptive_field_bounds_the_dependence():
    # By hand for the default: each 3x3 conv widens the window by 2 * (its input's pixel spacing), so
    # 1 + 2*(in + 2 res + down) + 4*(2 res + down) + 8*(2 + 4 res) + 4*(up + 4 res) + 2*(up + 4 res + out) = 101.
    assert PatchUNet(PatchUNetConfig()).receptive_field() == 101
    assert PatchUNet(PatchUNetConfig(channel_mult=(1, 2))).receptive_field() == 45

    # GroupNorm's per-image statistics couple all pixels weakly; without them the window must be exact.
    torch.manual_seed(0)
    net = randomize(PatchUNet(PatchUNetConfig(base_channels=8))).double().eval()
    remove_group_norms(net)
    rf, size, centre = 101, 160, 80
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    c = torch.zeros(1, dtype=torch.float64)
    offset = torch.arange(size) - centre
    # Slack of 3 px: the window's position relative to the pixel depends on its alignment to the 4-px grid.
    outside = (offset.abs() > rf // 2 + 3)[:, None] | (offset.abs() > rf // 2 + 3)[None, :]
    far = x + torch.randn_like(x) * outside
    near = x.clone()
    near[..., centre - rf // 2 + 3, centre] += 1.0  # just inside the window
    with torch.no_grad():
        out, out_far, out_near = (net(v, c)[..., centre, centre] for v in (x, far, near))
    assert torch.equal(out_far, out)  # no path at all from the outside: bit-identical
    assert (out_near != out).all()  # a long, weak path from just inside the window


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    import semantica_core.networks.backbone as backbone_module

    calls = []
    original = backbone_module.checkpoint
    monkeypatch.setattr(backbone_module, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    grads = []
    for flag in (False, True):
        net = small_unet(dropout=0.1, gradient_checkpointing=flag).train()
        x, c, tokens, pooled = inputs(2)
        torch.manual_seed(3)  # the same dropout masks; checkpointing replays the RNG state on recomputation
        net(x, c, tokens, pooled, drop_cond=torch.tensor([False, True])).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
        assert bool(calls) == flag  # the flag really switches checkpointing on
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_forward_is_finite_and_close():
    net = small_unet()
    x, c, tokens, pooled = inputs(2)
    with torch.no_grad():
        ref = net(x, c, tokens, pooled)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, c, tokens, pooled)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_channels_last_gives_the_same_output():
    net = small_unet()
    x, c, tokens, pooled = inputs(2)
    with torch.no_grad():
        ref = net(x, c, tokens, pooled)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.to(memory_format=torch.channels_last), c, tokens, pooled)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_rows_of_a_batch_equal_the_rows_alone():
    net = small_unet()
    patch = randomize(PatchUNet(PatchUNetConfig(base_channels=8))).eval()
    x, c, tokens, pooled = inputs(3)
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        batch = net(x, c, tokens, pooled, drop_cond=drop)
        batch_patch = patch(x, c)
        for i in range(3):
            row = slice(i, i + 1)
            alone = net(x[row], c[row], tokens[row], pooled[row], drop_cond=drop[row])
            torch.testing.assert_close(batch[row], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(batch_patch[row], patch(x[row], c[row]), atol=1e-5, rtol=0)
