"""Variation metrics on synthetic data where the answer is known, and the eval command's wiring."""
from __future__ import annotations

import json

import pytest
import torch

from semantica_core.metrics import variations as vm
from semantica_core.metrics.frechet import frechet_distance_features


def test_group_variations_condition_major():
    flat = torch.arange(12.0).reshape(6, 2)
    grouped = vm.group_variations(flat, 3)
    assert grouped.shape == (2, 3, 2)
    assert torch.equal(grouped[1, 0], flat[3])
    with pytest.raises(ValueError):
        vm.group_variations(flat, 4)


def test_label_agreement_counts_matches():
    cond = torch.tensor([0, 1, 2])
    var = torch.tensor([[0, 0], [1, 3], [5, 6]])  # 3 of 6 agree
    assert vm.label_agreement(cond, var).item() == pytest.approx(0.5)
    per_class = vm.per_class_agreement(cond, var, 4)
    assert per_class[:3].tolist() == [1.0, 0.5, 0.0]
    assert torch.isnan(per_class[3])
    with pytest.raises(ValueError):
        vm.label_agreement(cond, torch.zeros(2, 2, dtype=torch.long))


def test_feature_consistency_copies_and_opposites():
    cond = torch.randn(5, 16)
    copies = cond[:, None].repeat(1, 3, 1) * 2.5  # scale does not matter for cosine
    assert vm.feature_consistency(cond, copies).item() == pytest.approx(1.0)
    assert vm.feature_consistency(cond, -copies).item() == pytest.approx(-1.0)


def test_baseline_similarity_of_orthogonal_and_identical_rows():
    assert vm.baseline_similarity(torch.eye(4)).item() == pytest.approx(0.0)
    assert vm.baseline_similarity(torch.ones(3, 5)).item() == pytest.approx(1.0)


def test_diversity_zero_for_copies_and_exact_for_two_levels():
    cond = torch.rand(3, 3, 8, 8)
    copies = cond[:, None].repeat(1, 4, 1, 1, 1)
    assert vm.variation_diversity(copies).item() == 0.0
    assert vm.distance_to_condition(cond, copies).item() == 0.0
    # Two variations, all-0 and all-1: their L1 is 1; the condition at 0.5 is 0.5 from each.
    two = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])[None].repeat(2, 1, 1, 1, 1)
    half = torch.full((2, 3, 8, 8), 0.5)
    assert vm.variation_diversity(two).item() == pytest.approx(1.0)
    assert vm.distance_to_condition(half, two).item() == pytest.approx(0.5)
    assert vm.variation_diversity(two, "l2").item() == pytest.approx(1.0)


def test_diversity_rejects_single_variation_and_mismatched_shapes():
    with pytest.raises(ValueError):
        vm.variation_diversity(torch.rand(2, 1, 3, 4, 4))
    with pytest.raises(ValueError):
        vm.distance_to_condition(torch.rand(3, 3, 4, 4), torch.rand(2, 2, 3, 4, 4))


def test_nearest_distance_finds_the_copy():
    refs = torch.rand(10, 3, 4, 4)
    queries = torch.stack([refs[7], refs[2] + 0.1])
    d = vm.nearest_distance(queries, refs)
    assert d[0].item() == pytest.approx(0.0, abs=1e-6)
    assert d[1].item() == pytest.approx(0.1, abs=1e-6)


def test_few_shot_frechet_zero_for_same_set_and_mean_shift_for_shifted():
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(400, 4, generator=generator, dtype=torch.float64)
    assert vm.few_shot_frechet(feats, feats).item() == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    # A pure mean shift adds |shift|^2 = 5 and nothing else.
    assert vm.few_shot_frechet(feats + shift, feats).item() == pytest.approx(5.0, abs=1e-6)
    assert vm.few_shot_frechet(feats, feats).item() == frechet_distance_features(feats, feats).item()
    with pytest.raises(ValueError):
        vm.few_shot_frechet(feats, feats[:, :3])


def test_few_shot_frechet_ranks_mode_collapse_worse():
    generator = torch.Generator().manual_seed(1)
    reference = torch.randn(500, 8, generator=generator)
    faithful = torch.randn(100, 8, generator=generator)
    collapsed = faithful * 0.1 + reference[0]  # samples pile up around one reference point
    assert vm.few_shot_frechet(collapsed, reference) > 5 * vm.few_shot_frechet(faithful, reference)


def test_classifier_round_trip(tmp_path):
    from training.eval_variations import DigitClassifier, load_classifier, save_classifier

    torch.manual_seed(0)
    net = DigitClassifier(10, width=8)
    path = tmp_path / "c.safetensors"
    save_classifier(str(path), net, {"heldout_accuracy": 0.5})
    loaded, info = load_classifier(str(path))
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded.predict(x), net.predict(x))
    assert info["heldout_accuracy"] == 0.5


def test_classifier_learns_separable_synthetic_classes():
    from training.eval_variations import train_classifier

    # Class 0: bright left half, class 1: bright right half.
    images = torch.zeros(64, 1, 32, 32)
    labels = torch.arange(64) % 2
    images[labels == 0, :, :, :16] = 1
    images[labels == 1, :, :, 16:] = 1
    net = train_classifier(images, labels, steps=60, batch=16, log=None)
    assert (net.predict(images) == labels).float().mean() > 0.95


def test_eval_variations_is_registered_beside_eval_single():
    from training.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["eval", "variations", "--model", "m", "--encoder", "e", "--data", "d"])
    assert args.func.__module__ == "training.eval_variations"
    assert args.model == ["m"] and args.per_condition == 4


def test_eval_variations_end_to_end_with_random_models(tmp_path):
    """A random tiny model and a random encoder: the command runs and the table has the rows (values meaningless)."""
    import numpy as np
    from PIL import Image

    from semantica_core.checkpoint import save_checkpoint
    from semantica_core.diffusion import DiffusionConfig
    from semantica_core.encoders import export_encoder, load_encoder
    from semantica_core.networks import PairConditionedUNet, UNetConfig
    from training.eval_variations import DigitClassifier, evaluate, format_table, save_classifier

    enc_path = tmp_path / "enc.safetensors"
    export_encoder("resnet18", str(enc_path), random=True, image_size=32)
    encoder = load_encoder(str(enc_path))
    cfg = UNetConfig(resolution=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(), head_dim=16, token_dim=encoder.token_dim,
                     pooled_dim=encoder.pooled_dim)
    net = PairConditionedUNet(cfg)
    model_path = tmp_path / "m.safetensors"
    save_checkpoint(str(model_path), kind="pair_conditioned", network_config=cfg, diffusion_config=DiffusionConfig(),
                    state_dict=net.state_dict(), encoder_info=encoder.info(),
                    training_info={"pairing": "pairs", "steps": 0, "resolution": 16})
    rng = np.random.default_rng(0)
    (tmp_path / "held").mkdir()
    with open(tmp_path / "held.jsonl", "w") as f:
        for i in range(12):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "held" / f"{i}.png")
            f.write(json.dumps({"path": f"held/{i}.png", "label": i % 10}) + "\n")
    classifier_path = tmp_path / "c.safetensors"
    save_classifier(str(classifier_path), DigitClassifier(10, 8), {})
    result = evaluate([str(model_path)], str(enc_path), str(tmp_path / "held.jsonl"), str(classifier_path),
                      conditions=0, per_condition=2, few_shot_k=2, few_shot_per=3, steps=2, seeds=(0, 1), log=None)
    entry = result["models"][str(model_path)]
    metrics, spread = entry["mean"], entry["spread"]
    for key in ("consistency_classifier", "consistency_encoder_cosine", "diversity_l1", "distance_to_condition_l1",
                "few_shot_fd"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
        assert spread[key] >= 0
    assert [m["conditions"] for m in entry["seeds"]] == [12, 12]  # conditions=0: every held-out image, each seed
    assert spread["diversity_l1"] > 0  # the two seeds draw other variations
    assert entry["training"]["pairing"] == "pairs"
    assert metrics["diversity_l1"] > 0  # different seeds give different images
    table = format_table(result)
    assert "few-shot" in table and "diversity" in table and "±" in table
    # Per class of the condition: every class is there, and weighted by its conditions they make the overall figure.
    counts = [2, 2] + [1] * 8  # labels i % 10 for i < 12
    for seed_metrics in entry["seeds"]:
        per_class = [seed_metrics[f"consistency_class_{c}"] for c in range(10)]
        assert sum(n * v for n, v in zip(counts, per_class)) / 12 == pytest.approx(
            seed_metrics["consistency_classifier"])
    assert "consistency by the condition's class, m: 0: " in table

    # Models trained with another encoder are refused with what to do.
    other = tmp_path / "other.safetensors"
    export_encoder("resnet18", str(other), random=True, seed=1, image_size=32)
    with pytest.raises(ValueError, match="give each --model its own --encoder"):
        evaluate([str(model_path)], str(other), str(tmp_path / "held.jsonl"), None, steps=2, seeds=(0,), log=None)
