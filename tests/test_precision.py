"""The precision switch: detection, the one vocabulary, the float32 path forced, and the fast path within bf16's
precision of float32 (tolerances from torch.finfo(torch.bfloat16).eps, not from a run). No timing here: the speed
is measured by training/benchmarks/precision.py."""
import copy

import pytest
import torch

from semantica_core import precision as P
from semantica_core.diffusion import Denoiser, DiffusionConfig, ScheduleConfig
from semantica_core.embeds import Embeds
from semantica_core.networks import PairConditionedUNet, PatchUNet
from semantica_core.presets import network_preset

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7: one rounding of a bf16 value is at most eps / 2 relative


def test_cpuinfo_flags_decide_native_bf16():
    assert P.cpuinfo_has_bf16("processor: 0\nflags : fpu sse avx512f avx512_bf16 avx512vl\n")
    assert P.cpuinfo_has_bf16("flags\t\t: fpu amx_tile amx_bf16\n")
    assert P.cpuinfo_has_bf16("Features : fp asimd bf16 i8mm\n")  # Arm
    assert not P.cpuinfo_has_bf16("flags : fpu sse avx2 avx512f avx512bw\n")  # AVX512 without bf16: emulated
    assert not P.cpuinfo_has_bf16("")


def test_one_vocabulary_and_the_environment_switch(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    assert P.resolve_precision("fp32", "cpu") == P.Precision("cpu")
    fast = P.resolve_precision("bf16", "cpu")
    assert fast.dtype == torch.bfloat16 and fast.channels_last and fast.name == "bf16"
    monkeypatch.setattr(P, "cpu_native_bf16", lambda: True)
    assert P.resolve_precision(None, "cpu") == fast == P.resolve_precision("auto", "cpu")
    monkeypatch.setenv(P.ENV_VAR, "fp32")  # replaces auto everywhere, not an explicit choice
    assert P.resolve_precision(None, "cpu").dtype is None
    assert P.resolve_precision("auto", "cpu").dtype is None
    assert P.resolve_precision("bf16", "cpu") == fast
    assert P.accelerate_mixed_precision(None, "cpu") == "no"
    monkeypatch.setenv(P.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="SEMANTICA_PRECISION='fast'.*auto, bf16, fp32"):
        P.resolve_precision(None, "cpu")
    with pytest.raises(ValueError, match="precision 'half'"):
        P.resolve_precision("half", "cpu")


def test_auto_is_float32_nchw_on_a_cpu_without_native_bf16(monkeypatch):
    """The path every CPU without AVX512-BF16/AMX takes: float32, the network's weights left NCHW."""
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    monkeypatch.setattr(P, "cpu_native_bf16", lambda: False)
    assert P.resolve_precision(None, "cpu") == P.Precision("cpu")
    assert P.accelerate_mixed_precision("auto", "cpu") == "no"
    from semantica_core.single_image_train import SingleImageTrainConfig, train_single_image

    config = SingleImageTrainConfig.from_preset(
        "sindiffusion_tiny", max_side=16, batch_size=2, network={"base_channels": 8, "channel_mult": [1, 2]}
    )
    state = train_single_image(torch.rand(1, 3, 16, 20), config, steps=2, device="cpu")
    assert all(p.is_contiguous() for p in state.network.parameters())
    assert all(torch.isfinite(p).all() for p in state.ema.shadow)


def test_old_state_files_map_onto_the_vocabulary():
    from semantica_core.single_image_train import SingleImageTrainConfig

    base = SingleImageTrainConfig.from_preset("sindiffusion_tiny").to_dict()
    del base["precision"]
    assert SingleImageTrainConfig.from_dict({**base, "mixed_precision": "no"}).precision == "fp32"
    assert SingleImageTrainConfig.from_dict({**base, "mixed_precision": "bf16"}).precision == "auto"


def _randomised(network: torch.nn.Module) -> torch.nn.Module:
    """Fan-in scaled random weights everywhere, so zero-initialised output layers do not hide the error."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in network.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1:].numel() ** -0.5)
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return network


def _pair():
    torch.manual_seed(0)
    cfg = network_preset("tiny", token_dim=64, pooled_dim=64)
    g = torch.Generator().manual_seed(1)
    embeds = Embeds(torch.randn(2, 49, 64, generator=g), torch.randn(2, 64, generator=g), "test")
    return _randomised(PairConditionedUNet(cfg)), embeds, torch.randn(2, 3, 32, 32, generator=g)


def _single():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return _randomised(PatchUNet(network_preset("sindiffusion_tiny"))), None, torch.randn(2, 3, 24, 32, generator=g)


@pytest.mark.parametrize("make", [_single, _pair], ids=["sindiffusion_tiny", "pair_tiny"])
def test_fast_path_matches_float32_within_bf16_precision(make):
    """Explicit "bf16", so this runs (emulated) on any CPU. The network's raw output differs by a few bf16
    roundings (relative RMS under 4 eps through about ten layers), the loss by under one eps, the gradients by a
    few eps; x0 and the sampler's arithmetic stay float32."""
    network, embeds, x = make()
    config = DiffusionConfig(ScheduleConfig(kind="vp_cosine"), prediction="v")
    ref, fast = Denoiser(network, config, "fp32"), Denoiser(copy.deepcopy(network), config, "bf16")
    cond = (embeds.tokens, embeds.pooled, None) if embeds is not None else (None, None, None)
    with torch.no_grad():
        for sigma in (0.05, 1.0, 20.0):
            s = torch.full((2,), sigma)
            xs = x * (1 + sigma**2) ** 0.5
            a, b = ref._network(xs, s, *cond), fast._network(xs, s, *cond)
            assert b.is_contiguous()  # the sampler's state keeps the default layout
            assert ((a - b.float()).norm() / a.norm()).item() < 4 * BF16_EPS
            x0 = fast(xs, s, embeds=embeds, guidance_scale=3.0 if embeds is not None else 1.0)
            assert x0.dtype == torch.float32
    assert fast.network.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in fast.network.parameters())  # weights stay float32

    losses, grads = [], []
    for denoiser in (ref, fast):
        loss = denoiser.loss(x, embeds, generator=torch.Generator().manual_seed(0))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in denoiser.network.parameters() if p.grad is not None]))
    assert abs(losses[0] - losses[1]) / losses[0] < BF16_EPS
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 6 * BF16_EPS


def test_the_switch_changes_a_denoiser_in_place():
    network, _, x = _single()
    denoiser = Denoiser(network, DiffusionConfig(), "bf16")
    with torch.no_grad():
        denoiser(x, 1.0)
        assert network.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        denoiser.precision = "fp32"
        out = denoiser(x, 1.0)
    assert network.conv_in.weight.is_contiguous() and denoiser.resolved_precision(x.device).dtype is None
    with torch.no_grad():
        assert torch.equal(out, Denoiser(copy.deepcopy(network), DiffusionConfig(), "fp32")(x, 1.0))


@pytest.mark.parametrize("size", [(16, 16), (32, 48)], ids=["256-pixels", "1536-pixels"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "nchw"])
def test_bf16_group_norm_keeps_float32_statistics_and_the_layout(size, channels_last):
    """GroupNorm32 on a CPU bf16 input, sampling and training: the output is one bf16 rounding of the exact
    (float64) normalisation, give or take a statistics error under an eighth of bf16's eps, the gradients are
    float32-accurate, and the input's memory format comes back, its gradient's too. Each group's mean is 4 standard
    deviations: statistics computed in bf16 (rstd off by 3e-3) would fail this."""
    from semantica_core.networks.blocks import GroupNorm32

    torch.manual_seed(0)
    norm = GroupNorm32(8, 32)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(2, 32, *size) * 0.75 + 3).bfloat16().contiguous(memory_format=memory_format)
    upstream = torch.randn(x.shape).bfloat16().contiguous(memory_format=memory_format)
    exact_x = x.double().contiguous().requires_grad_()
    exact_weight = norm.weight.detach().double().requires_grad_()
    bias = norm.bias.detach().double()
    exact = torch.nn.functional.group_norm(exact_x, 8, exact_weight, bias, norm.eps)
    exact.backward(upstream.double())
    normalised = (exact - bias[:, None, None]).abs()
    tolerance = (exact.abs() * BF16_EPS / 2 + normalised * BF16_EPS / 8
                 + 16 * torch.finfo(torch.float32).eps * exact.abs().max())

    with torch.no_grad():
        out = norm(x)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=memory_format)
    assert ((out.double() - exact).abs() <= tolerance).all()

    leaf = x.clone().requires_grad_()
    out = norm(leaf)
    assert out.is_contiguous(memory_format=memory_format)
    assert ((out.double() - exact).abs() <= tolerance).all()
    out.backward(upstream)
    assert leaf.grad.is_contiguous(memory_format=memory_format)
    # the input gradient is rounded to bf16 once; the weight gradient stays float32
    assert ((leaf.grad.double() - exact_x.grad).norm() / exact_x.grad.norm()).item() < BF16_EPS
    assert ((norm.weight.grad.double() - exact_weight.grad).norm() / exact_weight.grad.norm()).item() < 1e-5


def test_cpu_bf16_training_attention_runs_in_float32():
    """While a CPU trains in bf16, attention upcasts (its bf16 backward is the slow one) and returns bf16; sampling
    keeps bf16 attention."""
    from semantica_core.networks.blocks import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 32, generator=g).bfloat16() for _ in range(3))
    reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = attention(q.requires_grad_(), k, v)
        with torch.no_grad():
            sampled = attention(q, k, v)
    assert trained.dtype == sampled.dtype == torch.bfloat16
    assert torch.equal(trained, reference.bfloat16())  # float32 attention, one rounding at the end
    assert ((sampled.float() - reference).norm() / reference.norm()).item() < 4 * BF16_EPS
