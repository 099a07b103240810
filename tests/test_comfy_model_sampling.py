"""ComfyUI's schedulers and BaseModel.apply_model on our MODEL against semantica_core, in this process.

Imports the set-up's ComfyUI tree (comfy/, not the server) to call its own scheduler functions and its
`_apply_model` on the MODEL the bridge builds; skipped where the tree is missing.
"""
import sys

import pytest
import torch

from tools.hostctl import REPO_ROOT, default_comfy_dir

pytestmark = pytest.mark.host

COMFY_DIR = default_comfy_dir()
if not (COMFY_DIR / "comfy" / "samplers.py").exists():
    pytest.skip(f"no ComfyUI tree at {COMFY_DIR} (run make setup)", allow_module_level=True)


@pytest.fixture(scope="module")
def comfy_modules():
    saved_path = list(sys.path)
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    yield _import_comfy()
    # Later test modules import our `nodes` package: ComfyUI's nodes.py must not shadow it.
    sys.path[:] = saved_path
    shadow = sys.modules.get("nodes")
    if shadow is not None and not str(getattr(shadow, "__file__", "")).startswith(str(REPO_ROOT / "nodes")):
        del sys.modules["nodes"]


def _import_comfy():
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management picks a device
    import importlib.util

    import comfy.samplers

    # By path: ComfyUI's own nodes.py takes the name `nodes` on this sys.path.
    spec = importlib.util.spec_from_file_location("semantica_comfy_model", REPO_ROOT / "nodes" / "comfy_model.py")
    comfy_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comfy_model)
    return comfy.samplers, comfy_model


def _checkpoint(tmp_path, kind: str, prediction: str):
    from semantica_core.checkpoint import load_checkpoint, save_checkpoint
    from semantica_core.diffusion import DiffusionConfig, ScheduleConfig
    from semantica_core.networks import PatchUNetConfig, build_network

    config = PatchUNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    torch.manual_seed(0)
    network = build_network("single_image", config)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0.0, 0.05)  # zero-initialised output layers would make every prediction 0
    diffusion = DiffusionConfig(schedule=ScheduleConfig(kind=kind, resolution=128), prediction=prediction)
    path = save_checkpoint(tmp_path / f"{kind}-{prediction}.safetensors", kind="single_image", network_config=config,
                           diffusion_config=diffusion, state_dict=network.state_dict())
    return load_checkpoint(path, weights="raw")


@pytest.mark.parametrize("kind", ["vp_linear", "vp_cosine", "vp_shifted_cosine", "ve"])
def test_comfyui_schedulers_give_our_noise_levels(comfy_modules, kind):
    from semantica_core.diffusion import DiffusionConfig, ModelSampling, NoiseSchedule, ScheduleConfig, get_sigmas

    samplers, _ = comfy_modules
    config = DiffusionConfig(schedule=ScheduleConfig(kind=kind, resolution=128))
    sampling, schedule = ModelSampling(config), NoiseSchedule(config.schedule)
    for steps in (10, 20, 50):
        assert torch.allclose(samplers.calculate_sigmas(sampling, "simple", steps),
                              get_sigmas(schedule, steps, "uniform"), rtol=1e-6)
        assert torch.allclose(samplers.calculate_sigmas(sampling, "karras", steps),
                              get_sigmas(schedule, steps, "karras"), rtol=1e-5)
    for name in samplers.SCHEDULER_NAMES:  # every scheduler runs and descends to 0
        sigmas = samplers.calculate_sigmas(sampling, name, 12)
        assert sigmas[-1] == 0 and bool((sigmas.diff() <= 0).all()), name
        assert float(sigmas[0]) <= float(sampling.sigma_max) * (1 + 1e-3), name  # kl_optimal: tan near pi/2


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("kind", ["vp_linear", "vp_cosine", "ve"])
def test_apply_model_is_our_denoiser(comfy_modules, tmp_path, kind, prediction):
    """ComfyUI's BaseModel._apply_model (calculate_input, timestep, network, calculate_denoised) on our MODEL gives
    the core's x0, at a latent size that is no multiple of the network's (padded and cropped back)."""
    _, comfy_model = comfy_modules
    model = _checkpoint(tmp_path, kind, prediction)
    base = comfy_model.comfy_model(model, "test").model
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.3, 2.0, 40.0])
    x = torch.randn(3, 3, 16, 16, generator=g) * (1 + sigma.reshape(-1, 1, 1, 1))
    with torch.no_grad():
        theirs = base.apply_model(x, sigma, c_crossattn=torch.zeros(3, 1, 1))
        ours = model.denoiser(x, sigma).clamp(-1, 1)  # single-image models clamp x0, as their sampler does
        # float32 rounding of the network, times sigma up to 40 for eps: 1e-5 of |x|
        assert torch.allclose(theirs, ours, atol=5e-4), (theirs - ours).abs().flatten(1).max(1).values
        odd = x[..., :15, :13]
        m = model.network.required_multiple()
        ph, pw = -(-15 // m) * m - 15, -(-13 // m) * m - 13
        assert ph or pw
        padded = torch.nn.functional.pad(odd, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="reflect")
        expected = model.denoiser(padded, sigma).clamp(-1, 1)[..., ph // 2 : ph // 2 + 15, pw // 2 : pw // 2 + 13]
        assert torch.allclose(base.apply_model(odd, sigma), expected, atol=5e-4)


def test_apply_model_runs_in_the_denoisers_cpu_calls(comfy_modules, monkeypatch):
    """A KSampler batch of cond and null rows above the CPU's call size runs as several network calls, as the
    Denoiser runs it, and every row gets the batch's numbers."""
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.diffusion import denoiser as denoiser_module

    _, comfy_model = comfy_modules
    model = load_checkpoint(REPO_ROOT / "models" / "demo" / "mnist-pairs.safetensors")
    base = comfy_model.comfy_model(model, "mnist-pairs.safetensors").model
    g = torch.Generator().manual_seed(2)
    sigma = torch.tensor([0.3, 1.0, 2.0, 5.0, 20.0])
    x = torch.randn(5, 3, 32, 32, generator=g) * (1 + sigma.reshape(-1, 1, 1, 1))
    conds = dict(c_crossattn=torch.randn(5, 49, 1280, generator=g), semantica_pooled=torch.randn(5, 1280, generator=g),
                 semantica_null=torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    rows = []
    hook = model.network.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    with torch.no_grad():
        whole = base.apply_model(x, sigma, **conds)
        assert rows == [5]
        monkeypatch.setattr(denoiser_module, "CPU_PIXELS_PER_CALL", 2 * 32 * 32)
        split = base.apply_model(x, sigma, **conds)
    hook.remove()
    assert rows[1:] == [2, 2, 1]
    # A batch's matmul or conv may pick another kernel, so the rows agree to the network's precision: float32's
    # default tolerances, or on a bf16 path (a CPU with native bf16) a few bf16 rounding steps of each row's largest
    # value (measured: 1.7 steps on an AVX512-BF16 EPYC).
    if model.denoiser.resolved_precision(x.device).dtype == torch.bfloat16:
        error, scale = (split - whole).abs().flatten(1).amax(1), whole.abs().flatten(1).amax(1)
        assert (error <= 8 * torch.finfo(torch.bfloat16).eps * scale).all(), (error, scale)
    else:
        torch.testing.assert_close(split, whole)


def test_a_pair_model_refuses_conditionings_it_cannot_use(comfy_modules):
    from semantica_core.checkpoint import EncoderMismatchError, load_checkpoint

    _, comfy_model = comfy_modules
    model = load_checkpoint(REPO_ROOT / "models" / "demo" / "mnist-pairs.safetensors")
    base = comfy_model.comfy_model(model, "mnist-pairs.safetensors").model
    with pytest.raises(ValueError, match="Semantica Conditioning"):  # a text encoder's conditioning
        base.extra_conds(cross_attn=torch.zeros(1, 77, 768), pooled_output=torch.zeros(1, 768))
    with pytest.raises(EncoderMismatchError, match="timm:other:123.*timm:tf_efficientnet_lite0"):
        base.extra_conds(cross_attn=torch.zeros(1, 49, 1280), semantica_pooled=torch.zeros(1, 1280),
                         semantica_null=False, semantica_encoder_id="timm:other:123")
    conds = base.extra_conds(cross_attn=torch.zeros(2, 49, 1280), semantica_pooled=torch.zeros(2, 1280),
                             semantica_null=True, semantica_encoder_id=model.encoder_info["encoder_id"])
    assert conds["semantica_null"].cond.tolist() == [1.0, 1.0] and conds["semantica_pooled"].cond.shape == (2, 1280)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_comfyui_deterministic_samplers_give_our_images(comfy_modules, monkeypatch, sampler):
    """comfy.sample.sample (KSampler's call) against sample_variations, one image, the same noise (seed s), float32."""
    import comfy.sample

    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.embeds import Embeds
    from semantica_core.pipeline import sample_variations

    monkeypatch.setenv("SEMANTICA_PRECISION", "fp32")
    _, comfy_model = comfy_modules
    path = REPO_ROOT / "models" / "demo" / "mnist-pairs.safetensors"
    ours_model = load_checkpoint(path)
    patcher = comfy_model.comfy_model(load_checkpoint(path), "mnist-pairs.safetensors")
    g = torch.Generator().manual_seed(0)
    embeds = Embeds(torch.rand(1, 49, 1280, generator=g), torch.rand(1, 1280, generator=g),
                    ours_model.encoder_info["encoder_id"])
    extras = {comfy_model.ENCODER_ID: embeds.encoder_id}
    positive = [[embeds.tokens, {**extras, comfy_model.POOLED: embeds.pooled, comfy_model.NULL: False}]]
    negative = [[torch.zeros_like(embeds.tokens),
                 {**extras, comfy_model.POOLED: torch.zeros_like(embeds.pooled), comfy_model.NULL: True}]]
    latent = torch.zeros(1, 3, 32, 32)
    theirs = comfy.sample.sample(patcher, comfy.sample.prepare_noise(latent, 7), 10, 3.0, sampler, "karras",
                                 positive, negative, latent, seed=7, disable_pbar=True)
    ours = sample_variations(ours_model, embeds, seed=7, count=1, steps=10, guidance=3.0, sampler=sampler)
    assert (theirs.clamp(-1, 1).add(1).div(2) - ours).abs().max() < 1e-4
