"""The one resume-state format (semantica_core.train_state): a round trip restores weights, EMA, optimizer and random
streams; the single-image state files written before it (format 1) still load; old config keys still read."""
import json

import torch
from safetensors.torch import save_file

from semantica_core.ema import EMA
from semantica_core.single_image_train import (
    SingleImageTrainConfig,
    init_train_state,
    load_train_state,
    save_train_state,
    train_single_image,
)
from semantica_core.train_state import adamw, read_train_state
from semantica_core.train_state import save_train_state as save_state


def test_round_trip_restores_every_part(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    ema = EMA(net.named_parameters(), 0.9)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    ema.update()
    generator = torch.Generator().manual_seed(5)
    path = save_state(tmp_path / "s.safetensors", step=7, config={"a": 1}, network=net.state_dict(), ema=ema,
                      optimizer=optimizer, generators={"noise": generator}, global_rng=True, info={"x": [1, 2]})
    expected_noise, expected_global = torch.rand(3, generator=generator), torch.rand(3)

    other = torch.nn.Linear(3, 2)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=1e-2)
    other_ema, other_generator = EMA(other.named_parameters(), 0.9), torch.Generator().manual_seed(99)
    saved = read_train_state(path)
    assert (saved.step, saved.config, saved.info) == (7, {"a": 1}, {"x": [1, 2]})
    saved.load_network(other)
    saved.load_ema(other_ema)
    saved.load_optimizer(other_optimizer)
    saved.load_rng({"noise": other_generator}, global_rng=True)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))
    assert other_ema.updates == 1 and all(torch.equal(a, b) for a, b in zip(other_ema.shadow, ema.shadow))
    moments = [o.state_dict()["state"][0]["exp_avg"] for o in (other_optimizer, optimizer)]
    assert torch.equal(*moments)
    assert torch.equal(torch.rand(3, generator=other_generator), expected_noise)
    assert torch.equal(torch.rand(3), expected_global)


def _write_format_1(path, state) -> None:
    """A state file as semantica wrote them before semantica_core.train_state (keys and metadata of format 1)."""
    tensors = {f"network.{k}": v for k, v in state.network.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in state.ema_state_dict().items()})  # a module state dict, buffers too
    optim = state.optimizer.state_dict()
    for index, values in optim["state"].items():
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
    tensors.update({"image": state.image, "rng.data": state.data_generator.get_state(),
                    "rng.noise": state.noise_generator.get_state()})
    config = state.config.to_dict()
    config["mixed_precision"] = "no"  # the switch before --precision
    del config["precision"]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={
        "semantica_train_state": json.dumps(1), "config": json.dumps(config), "step": json.dumps(state.step),
        "source_size": json.dumps(list(state.source_size)), "param_groups": json.dumps(optim["param_groups"]),
        "noise_device": json.dumps("cpu"),
    })


def test_a_format_1_single_image_state_resumes_as_the_new_format(tmp_path):
    config = SingleImageTrainConfig.from_preset("sindiffusion_tiny", max_side=16, batch_size=2, precision="fp32",
                                                network={"base_channels": 8, "channel_mult": [1, 2]})
    state = init_train_state(torch.rand(1, 3, 16, 24), config, "cpu")
    train_single_image(None, steps=2, state=state)
    _write_format_1(tmp_path / "old.train-state", state)
    save_train_state(tmp_path / "new.train-state", state)
    old, new = (load_train_state(tmp_path / name, "cpu") for name in ("old.train-state", "new.train-state"))
    assert old.config.precision == "fp32" and old.step == new.step == 2 and old.source_size == (24, 16)
    train_single_image(None, steps=4, state=old)
    train_single_image(None, steps=4, state=new)
    for (name, a), b in zip(old.network.state_dict().items(), new.network.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(old.ema.shadow, new.ema.shadow))


def test_old_pair_config_keys_are_read_under_their_new_names():
    from training.config import resolve_config

    config = resolve_config("tiny", sets=["train.output_dir=runs/x", "train.cpu=true", "train.mixed_precision=no"],
                            flags={"data": "d", "encoder": "e"})
    assert (config.train.output, config.train.device, config.train.precision) == ("runs/x", "cpu", "fp32")
    from training.config import rename_old_keys

    messages = []
    rename_old_keys({"train": {"cpu": False}}, log=messages.append)
    assert messages == ["[config] train.cpu is deprecated; use train.device"]


def test_the_trainers_adamw_is_fused_and_resumes_a_state_saved_before_it(tmp_path):
    """The trainers' AdamW runs torch's fused kernel on a CPU, makes AdamW's updates (to float32 rounding), and a
    state saved by the per-tensor AdamW of earlier versions resumes into it, fused, with the same next update."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    loop = torch.optim.AdamW(nets[0].parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    fused = adamw(nets[1].parameters(), "cpu", lr=1e-2, weight_decay=0.01)
    assert fused.param_groups[0]["fused"]
    data = torch.randn(6, 16, 5)
    eps = torch.finfo(torch.float32).eps

    def step(net, optimizer, x):
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()

    for x in data[:3]:
        step(nets[0], loop, x)
        step(nets[1], fused, x)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=64 * eps, atol=64 * eps * 1e-2)  # lr-sized updates, rounded apart

    path = save_state(tmp_path / "s.safetensors", step=3, config={}, network=nets[0].state_dict(), optimizer=loop)
    resumed = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    resumed_optimizer = adamw(resumed.parameters(), "cpu", lr=1.0)
    saved = read_train_state(path)
    saved.load_network(resumed)
    saved.load_optimizer(resumed_optimizer)
    group = resumed_optimizer.param_groups[0]
    assert group["fused"] and (group["lr"], group["weight_decay"]) == (1e-2, 0.01)  # the run's values, fused
    for x in data[3:]:
        step(nets[0], loop, x)
        step(resumed, resumed_optimizer, x)
    for a, b in zip(nets[0].parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=64 * eps, atol=64 * eps * 1e-2)


def test_a_resumed_optimizer_state_takes_its_channels_last_weights_layout(tmp_path):
    """Channels-last weights (the fast path's layout) with moments read back from a file: the fused AdamW pairs a
    weight, its gradient and its moments element by element only when they share strides, so the loaded moments
    take the weights' layout and the next update is the uninterrupted run's, exactly."""
    def network():
        torch.manual_seed(0)
        return torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)

    def step(net, optimizer, seed):
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
        optimizer.zero_grad()
        net(x.contiguous(memory_format=torch.channels_last)).square().mean().backward()
        optimizer.step()

    straight = network()
    optimizer = adamw(straight.parameters(), "cpu", lr=1e-2)
    for seed in range(2):
        step(straight, optimizer, seed)
    path = save_state(tmp_path / "s.safetensors", step=2, config={}, network=straight.state_dict(),
                      optimizer=optimizer)
    step(straight, optimizer, 2)

    resumed = network()
    resumed_optimizer = adamw(resumed.parameters(), "cpu", lr=1e-2)
    saved = read_train_state(path)
    saved.load_network(resumed)
    saved.load_optimizer(resumed_optimizer)
    weight = resumed.weight
    assert all(v.stride() == weight.stride() for v in resumed_optimizer.state[weight].values() if v.ndim == 4)
    step(resumed, resumed_optimizer, 2)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
