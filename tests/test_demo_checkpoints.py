"""The shipped demo checkpoints load strictly and compute what they computed when they were written.

The reference numbers were recorded with the networks as they were before PatchUNet and PairConditionedUNet shared
one backbone (semantica_core/networks/backbone.py): a refactor that renames a tensor fails the strict load, one that
wires a layer differently changes the sums.
"""
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from semantica_core.checkpoint import load_checkpoint
from semantica_core.networks import build_network

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"

# name -> (output sum of row 0, of row 1, sum of output * input), float32 forward on the CPU at the input below.
REFERENCE = {
    "mnist-pairs": (2256.7997596003115, 2030.914268803317, 8604.36188305113),
    "mnist-reconstruct": (2205.093441880308, 2132.2463932354003, 9080.38588201896),
    "sindiffusion-rocket": (1303.831465428695, 1315.2830255664885, 7257.052801281941),
}


def test_every_demo_checkpoint_has_a_reference():
    assert sorted(p.stem for p in DEMO.glob("*.safetensors")) == sorted(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_demo_checkpoint_loads_strictly(name):
    path = DEMO / f"{name}.safetensors"
    model = load_checkpoint(path)
    with safe_open(str(path), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    for prefix in ("ema.", "model."):
        weights = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
        fresh = build_network(model.kind, model.network_config)
        fresh.load_state_dict(weights, strict=True)  # raises on any missing or unexpected name
        assert set(fresh.state_dict()) == set(weights)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_demo_checkpoint_outputs_match_the_recorded_ones(name):
    model = load_checkpoint(DEMO / f"{name}.safetensors")
    net = model.network
    generator = torch.Generator().manual_seed(0)
    size = model.resolution or 32
    x = torch.randn(2, model.channels, size, size, generator=generator)
    condition = {}
    if model.kind == "pair_conditioned":  # one conditioned row, one dropped to the null condition
        condition = dict(
            tokens=torch.randn(2, 5, net.config.token_dim, generator=generator),
            pooled=torch.randn(2, net.config.pooled_dim, generator=generator),
            drop_cond=torch.tensor([False, True]),
        )
    with torch.no_grad():
        out = net(x, torch.tensor([-1.0, 0.5]), **condition).double()
    got = (float(out[0].sum()), float(out[1].sum()), float((out * x.double()).sum()))
    # CPU kernels may sum in another order across machines and thread counts: relative 1e-4 of a sum of ~6000
    # values is far below what one mis-wired layer changes.
    assert got == pytest.approx(REFERENCE[name], rel=1e-4)
