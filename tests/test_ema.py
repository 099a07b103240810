"""The one EMA of both trainers: its warm-up, its float32 shadow, and its state round trip."""
import pytest
import torch

from semantica_core.ema import EMA


def _param(value: float, dtype=torch.float32) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.full((3,), value, dtype=dtype))


def test_warm_up_follows_one_plus_n_over_ten_plus_n_from_the_first_update():
    p = _param(0.0)
    ema = EMA([("w", p)], decay=0.999)
    assert [ema.decay_at(n) for n in (0, 1, 8)] == pytest.approx([0.1, 2 / 11, 0.5])
    assert ema.decay_at(10**6) == 0.999  # capped at the decay
    expected = 0.0
    for n in range(4):
        with torch.no_grad():
            p.fill_(float(n + 1))
        ema.update()
        decay = (1 + n) / (10 + n)
        expected = decay * expected + (1 - decay) * (n + 1)
        assert ema.shadow[0][0].item() == pytest.approx(expected)
    assert ema.updates == 4


def test_without_warm_up_the_decay_is_constant():
    ema = EMA([("w", _param(0.0))], decay=0.9, warmup=False)
    assert ema.decay_at(0) == ema.decay_at(100) == 0.9


def test_the_shadow_is_float32_for_bf16_parameters_and_applied_restores_them():
    p = _param(1.0, torch.bfloat16)
    ema = EMA([("w", p)], decay=0.99, warmup=False)
    assert ema.shadow[0].dtype == torch.float32
    with torch.no_grad():
        p.fill_(2.0)
    ema.update()
    assert ema.shadow[0][0].item() == pytest.approx(1.01)  # a step bf16 could not hold (its spacing near 1 is 1/128)
    with ema.applied():
        assert p[0].item() == pytest.approx(1.0, abs=1 / 128)
    assert p[0].item() == 2.0


def test_state_round_trip_and_a_mismatch_is_refused():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net.named_parameters(), decay=0.5)
    ema.update()
    other = EMA(torch.nn.Linear(2, 2).named_parameters(), decay=0.5)
    other.load_state_dict(ema.state_dict(), ema.updates)
    assert other.updates == 1 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow))
    with pytest.raises(ValueError, match="does not fit"):
        EMA(torch.nn.Linear(3, 2).named_parameters(), decay=0.5).load_state_dict(ema.state_dict(), 1)
