"""Network evaluations each sampler needs to reach the quality of DDPM with many steps, on a pair-conditioned model
of MNIST digits (the embedded demo model): quality is the Fréchet distance of the samples to the held-out digits in
the demo classifier's 64-d features; every sampler gets the same conditions and seeds."""
from __future__ import annotations

import time
from pathlib import Path

import torch

FAST_SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m")
STEP_COUNTS = (5, 10, 20, 40)


def sampler_evaluations(model_path: Path, classifier_path: Path, encoder_path: Path, data_dir: Path,
                        conditions: int = 16, per: int = 4, ddpm_steps: int = 1000, tolerance: float = 0.1,
                        seed: int = 0, samplers=FAST_SAMPLERS, step_counts=STEP_COUNTS) -> dict:
    """{"ddpm": {steps, fd, evaluations, seconds}, "samplers": {name: {steps, fd, evaluations, matched}}}: for each
    sampler the fewest of `step_counts` whose FD is within `tolerance` of DDPM's (else the largest, matched False).
    The demo data is written to `data_dir` when it is not there."""
    from semantica_core.checkpoint import load_checkpoint
    from semantica_core.encoders import load_encoder
    from semantica_core.metrics.frechet import frechet_distance_features
    from semantica_core.pipeline import sample_variations
    from training import demo_data
    from training.eval_variations import encode, load_classifier

    if not (data_dir / "heldout.jsonl").is_file():
        demo_data.write_dataset(str(data_dir))
    images, _ = demo_data.load_split(str(data_dir), "heldout")
    classifier, _ = load_classifier(str(classifier_path))
    model = load_checkpoint(str(model_path))
    encoder = load_encoder(str(encoder_path))
    cond = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:conditions]]
    embeds = encode(encoder, cond.repeat(1, 3, 1, 1))
    reference = classifier.feature_vectors(images)

    rows = [0]  # rows through the network; a CPU splits a batch into several calls (denoiser.rows_per_call)
    hook = model.network.register_forward_pre_hook(lambda _, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))

    def quality(sampler: str, steps: int) -> dict:
        rows[0] = 0
        start = time.perf_counter()
        spacing = "uniform" if sampler == "ddpm" else "karras"
        out = sample_variations(model, embeds, seed=seed, count=per, steps=steps, guidance=1.0, sampler=sampler,
                                spacing=spacing)
        seconds = time.perf_counter() - start
        fd = float(frechet_distance_features(classifier.feature_vectors(out), reference))
        return {"steps": steps, "fd": fd, "evaluations": rows[0] // (conditions * per), "seconds": seconds}

    try:
        ddpm = quality("ddpm", ddpm_steps)
        found = {}
        for sampler in samplers:
            for steps in step_counts:
                found[sampler] = quality(sampler, steps)
                found[sampler]["matched"] = found[sampler]["fd"] <= ddpm["fd"] * (1 + tolerance)
                if found[sampler]["matched"]:
                    break
    finally:
        hook.remove()
    return {"ddpm": ddpm, "samplers": found, "conditions": conditions, "per_condition": per, "tolerance": tolerance}
