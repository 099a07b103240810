"""The shipped demo checkpoints load strictly and compute what they computed when they were written.

The reference numbers were recorded when each file was written (the MNIST models when they began to read their
tokens as a grid, token_layout): a refactor that renames a tensor fails the strict load, one that wires a layer
differently changes the sums.
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
    "mnist-pairs": (2341.916501689004, 1983.3707223820384, 6974.381353041714),
    "mnist-reconstruct": (2397.78133884992, 1980.2569043246622, 6537.023357013141),
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
            tokens=torch.randn(2, model.encoder_info["num_tokens"], net.config.token_dim, generator=generator),
            pooled=torch.randn(2, net.config.pooled_dim, generator=generator),
            drop_cond=torch.tensor([False, True]),
        )
    with torch.no_grad():
        out = net(x, torch.tensor([-1.0, 0.5]), **condition).double()
    got = (float(out[0].sum()), float(out[1].sum()), float((out * x.double()).sum()))
    # CPU kernels may sum in another order across machines and thread counts: relative 1e-4 of a sum of ~6000
    # values is far below what one mis-wired layer changes.
    assert got == pytest.approx(REFERENCE[name], rel=1e-4)
