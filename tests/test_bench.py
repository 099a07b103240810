"""The benchmarks return their figures, and `semantica bench` puts those into its table (tiny sizes: no figure is
asserted beyond being measured; on a shared CPU they mean nothing)."""
from pathlib import Path

import pytest

from training import bench
from training.benchmarks import precision, unet

REPO = Path(__file__).resolve().parents[1]


def test_unet_benchmarks_return_both_networks_figures():
    r = unet.train_throughput("tiny", batch=1, repeats=1, warmup=0)
    for side in ("ours", "diffusers"):
        figures = r[side]
        assert figures["median_s"] > 0 and figures["images_per_s"] == pytest.approx(1 / figures["median_s"])
        assert figures["gflop_per_step"] > 0 and figures["parameters"] > 0
    assert abs(r["ours"]["parameters"] / r["diffusers"]["parameters"] - 1) < 0.1  # the twin is matched in size
    (row,) = bench.unet_training_rows({"fp32": r})
    assert row[0] == "training throughput, fp32 (images/s)" and row[1] == f"{r['ours']['images_per_s']:.1f}"

    rates = unet.sampling_throughput("tiny", batch=1, repeats=1)
    assert set(rates) == {"fp32", "bf16"} and all(v > 0 for mode in rates.values() for v in mode.values())
    assert [row[0] for row in bench.unet_sampling_rows(rates, "tiny", 1)] == [
        "sampling throughput, fp32 (images x steps/s)", "sampling throughput, bf16 (images x steps/s)",
        "sampling, each at its fastest mode"]


def test_precision_benchmark_returns_each_workload():
    lines = []
    result = precision.run("cpu", only=["sample-pairs"], repeats=1, warmup=0, peak_size=128, out=lines.append)
    (workload,) = result["workloads"]
    assert workload["workload"] == "sample-pairs" and workload["gflop_per_step"] > 0
    assert all(workload[key]["median_s"] > 0 and 0 < workload[key]["roofline"] for key in ("fp32", "fast"))
    assert len(lines) == 2  # the settings, then the workload
    rows = bench.precision_rows(result, "cpu")
    assert [row[0] for row in rows] == ["matmul peak, fp32 / bf16 (GFLOP/s)",
                                        "sample-pairs: fast vs fp32 NCHW (ms/step)"]


def test_loss_curve_pairs_the_fast_path_with_float32_and_adds_reference_seeds():
    import torch

    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    lines = []
    result = precision.loss_curve(image, steps=3, chunk=2, precision="bf16", reference_seeds=[1], out=lines.append)
    losses = result["losses"]
    assert list(losses) == ["fp32", "bf16", "fp32 seed 1"] and all(len(v) == 3 for v in losses.values())
    # seed 0 in both paths: the first step draws the same scales, timesteps and noise, so only bf16 rounding differs
    # (the loss within a few bf16 eps, tests/test_precision.py); seed 1 draws others
    assert abs(losses["bf16"][0] - losses["fp32"][0]) < 4 * 2**-8 * losses["fp32"][0]
    assert losses["fp32 seed 1"][0] != losses["fp32"][0]
    assert all(seconds > 0 for seconds in result["seconds"].values()) and len(lines) == 3


def test_best_mode_row_takes_each_side_at_its_fastest():
    rates = {"fp32": {"ours": 50.0, "diffusers": 40.0}, "bf16": {"ours": 80.0, "diffusers": 35.0}}
    (row,) = bench.best_mode_row("training", rates)
    assert row[1:3] == ("80.0", "40.0") and row[3].startswith("ratio 2.00; ours bf16, diffusers fp32")
    assert bench.best_mode_row("training", {"fp32": rates["fp32"]}) == []


def test_a_failed_part_is_a_row_and_the_exit_status(capsys, tmp_path):
    from training.cli import build_parser

    args = build_parser().parse_args(["bench", "--only", "unet", "--only", "samplers", "--preset", "sindiffusion_tiny",
                                      "--model", str(tmp_path / "missing.safetensors")])
    assert args.func(args) == 1
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["measurement", "semantica", "reference", "notes"]
    assert table[2].startswith("unet") and "failed" in table[2] and "not a pair-conditioned preset" in table[2]
    assert "skipped" in table[3] and "missing.safetensors" in table[3]


def test_sampler_benchmark_counts_network_evaluations(tmp_path):
    from training.benchmarks import samplers

    result = samplers.sampler_evaluations(
        REPO / "models/demo/mnist-pairs.safetensors", REPO / "models/eval/mnist-classifier.safetensors",
        REPO / "models/demo/encoders/efficientnet-lite0.safetensors", tmp_path / "digits", conditions=2, per=2,
        ddpm_steps=8, samplers=("euler", "heun"), step_counts=(2,))
    assert result["ddpm"]["evaluations"] == 8 and result["ddpm"]["fd"] > 0
    assert result["samplers"]["euler"]["evaluations"] == 2
    assert result["samplers"]["heun"]["evaluations"] == 3  # two per step, one for the last step to 0
    assert len(bench.sampler_rows(result)) == 3


def test_batch_benchmark_times_split_and_whole_calls():
    from training.benchmarks import batch

    results = batch.split_against_whole(REPO / "models/demo/mnist-pairs.safetensors",
                                        REPO / "models/demo/encoders/efficientnet-lite0.safetensors",
                                        batches=(2, 40), repeats=1)
    assert [r["batch"] for r in results] == [2, 40]
    assert [r["rows_per_call"] for r in results] == [4, 32]  # 32 px: 32 rows per CPU call; guidance doubles rows
    assert all(r["split_ms"] > 0 and r["whole_ms"] > 0 for r in results)
    rows = bench.batch_rows(results)
    assert rows[1][0] == "guided forward, 40 images (ms/image)" and "calls of 32 rows vs one call of 80" in rows[1][3]



def test_optimizer_benchmark_times_the_loop_and_the_fused_adamw():
    from training.benchmarks import optimizer

    (result,) = optimizer.loop_against_fused(repeats=1, workloads=("train-single",))
    assert result["workload"] == "train-single" and result["parameters"] > 0
    assert all(result[f"{key}_{part}_ms"] > 0 for key in ("loop", "fused") for part in ("step", "optimizer"))

@pytest.mark.slow
@pytest.mark.host
def test_node_overhead_times_both_sides_on_a_real_server():
    from tools import bench_node_overhead

    result = bench_node_overhead.measure(size=32, count=1, steps=2, repeats=1, log=lambda line: None)
    for side in ("node", "core"):
        assert len(result[side]["wall"]) == 1 and result[side]["wall"][0] > 0
    rows = bench_node_overhead.rows(result)
    assert [row[0] for row in rows] == ["node vs direct call, wall-clock (s/variation)",
                                        "node vs direct call, CPU time (s/variation)"]


@pytest.mark.slow
def test_single_image_benchmarks_return_their_rows(tmp_path):
    import torch

    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.metrics.sifid import sifid_feature_network
    from semantica_core.single_image_train import (SingleImageTrainConfig, init_train_state,
                                                   save_single_image_checkpoint)
    from training.benchmarks import single

    training = single.bench_training("sindiffusion_tiny", torch.device("cpu"), steps=1)
    assert training["seconds_per_step"] > 0 and training["extrapolated"] and training["batch"] > 0

    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", max_side=16, batch_size=2)
    state = init_train_state(torch.rand(1, 3, 12, 16), config, "cpu")
    model = load_checkpoint(save_single_image_checkpoint(tmp_path / "m.safetensors", state))
    result = single.bench_sampler(model, state.image.add(1).div(2), sifid_feature_network(None), samples=2,
                                  batch=2, samplers=("euler", "heun"), step_counts=(2, 3))
    assert [(r["sampler"], r["steps"], r["evaluations"]) for r in result["rows"]] == [
        ("ddpm", 1000, 1000), ("euler", 2, 2), ("euler", 3, 3), ("heun", 2, 3), ("heun", 3, 5)]
    assert set(result["converged"]) == {"euler", "heun"} and result["size"] == [16, 12]
