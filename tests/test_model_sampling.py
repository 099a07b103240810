"""The core's ModelSampling (ComfyUI's `model_sampling` interface) against NoiseSchedule and the Denoiser, no host."""
import pytest
import torch

from semantica_core.diffusion import KINDS, PREDICTIONS, Denoiser, DiffusionConfig, ModelSampling, ScheduleConfig


def _config(kind: str, prediction: str = "v") -> DiffusionConfig:
    return DiffusionConfig(schedule=ScheduleConfig(kind=kind, resolution=128), prediction=prediction)


@pytest.mark.parametrize("kind", KINDS)
def test_table_and_ends_are_the_schedules(kind):
    sampling = ModelSampling(_config(kind))
    schedule = sampling.schedule
    steps = schedule.timesteps
    assert sampling.sigmas.shape == (steps,) and bool((sampling.sigmas.diff() > 0).all())
    expected = schedule.t_to_sigma(torch.arange(1, steps + 1, dtype=torch.float64) / steps).float()
    assert torch.equal(sampling.sigmas, expected)
    assert float(sampling.sigma_max) == pytest.approx(schedule.sigma_max, rel=1e-6)
    assert float(sampling.sigma_min) == pytest.approx(schedule.sigma_min, rel=1e-6)
    if kind == "vp_linear":  # the DDPM levels themselves, timestep i at index i
        assert torch.allclose(sampling.sigmas, schedule.discrete_sigmas(), rtol=1e-6)
        assert torch.allclose(sampling.timestep(sampling.sigmas), torch.arange(steps).float(), atol=2e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_timestep_is_c_noise_and_sigma_inverts_it(kind):
    sampling = ModelSampling(_config(kind))
    sigma = sampling.sigmas[::37]
    assert torch.equal(sampling.timestep(sigma), sampling.schedule.c_noise(sigma))
    assert torch.allclose(sampling.sigma(sampling.timestep(sigma)), sigma, rtol=1e-4)
    assert sampling.percent_to_sigma(0.0) > float(sampling.sigma_max) and sampling.percent_to_sigma(1.0) == 0.0
    assert sampling.percent_to_sigma(0.25) == pytest.approx(float(sampling.schedule.t_to_sigma(0.75)), rel=1e-6)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_calculate_denoised_inverts_the_training_target(kind, prediction):
    sampling = ModelSampling(_config(kind, prediction))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.05, 0.7, 3.0, 20.0])
    s = sigma.reshape(-1, 1, 1, 1)
    alpha = torch.rsqrt(1 + s * s)
    target = {"eps": eps, "x0": x0, "v": alpha * eps - s * alpha * x0}[prediction]  # as Denoiser.loss
    x = x0 + s * eps
    assert torch.allclose(sampling.calculate_denoised(sigma, target, x), x0, atol=1e-4)
    assert torch.allclose(sampling.calculate_input(sigma, x), x * sampling.schedule.c_in(s), atol=1e-6)
    assert torch.equal(sampling.noise_scaling(sigma[1], eps, x0, max_denoise=True), x0 + sigma[1] * eps)


def test_the_denoiser_runs_through_its_model_sampling():
    """One path: the Denoiser's x0 is model_sampling's formulas around the network, bit for bit."""
    class Net(torch.nn.Module):
        def forward(self, x, c_noise, tokens=None, pooled=None, drop_cond=None):
            return torch.tanh(x * 0.3 + c_noise.reshape(-1, 1, 1, 1) / 1000)

    denoiser = Denoiser(Net(), _config("vp_cosine", "v"))
    x, sigma = torch.randn(2, 3, 4, 4), torch.tensor([0.5, 4.0])
    sampling = denoiser.model_sampling
    expected = sampling.calculate_denoised(sigma, Net()(sampling.calculate_input(sigma, x), sampling.timestep(sigma)), x)
    assert torch.equal(denoiser(x, sigma), expected)


def test_clamped_denoised_stays_in_the_image_range():
    sampling = ModelSampling(_config("vp_linear", "eps"), clamp_denoised=True)
    x0 = sampling.calculate_denoised(torch.tensor([100.0]), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4) * 100)
    assert x0.abs().max() <= 1.0
