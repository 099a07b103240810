"""`semantica train single IMAGE --output FILE.safetensors`: train a SinDiffusion model on one image.

One process on the CPU or one GPU (bf16 autocast and channels-last where it has native bf16; --precision). The config
is the training preset's (--preset), then a TOML file (--config, keys of SingleImageTrainConfig), then --set
key=value, then the flags. Every --save-every steps and at the end it writes the checkpoint (FILE.safetensors,
loadable by the nodes and `semantica eval single`) and, next to it, the resume state (FILE.safetensors.train-state,
semantica_core.train_state: raw and EMA weights, optimizer, step, random streams, the prepared image), both
atomically. --resume continues from that state up to --max-steps with the stored config (a change of the model or
image setup stops the run; --override applies a new lr or batch size; --precision always applies); Ctrl-C saves
both at the last finished step. A failure (full disk, read-only folder) leaves the files of the last save in place.
Exit status: training/cli.py.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from training.options import add_device, add_output, add_precision, require_output, resolve_device

# Config keys a resumed run may change: freely (how it computes, not what), or with --override.
FREE_ON_RESUME = ("precision",)
OVERRIDABLE = ("lr", "batch_size", "warmup_steps", "lr_decay", "lr_final")
FLAG_NAMES = {"max_side": "--size", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed",
              "preset": "--preset", "precision": "--precision", "diffusion.prediction": "--prediction"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from semantica_core.single_image_train import PRESETS

    parser.add_argument("image", metavar="IMAGE", help="the training image (png, jpg, webp)")
    add_output(parser, "the checkpoint FILE.safetensors (the resume state goes next to it)")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="training preset: sindiffusion (the paper's, default) or sindiffusion_tiny (CPU, tests)")
    parser.add_argument("--config", help="TOML or YAML file of SingleImageTrainConfig keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set ema_decay=0.999 --set network.base_channels=48")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="total training steps (default: 50000 for sindiffusion, 4000 for sindiffusion_tiny)")
    parser.add_argument("--size", type=int, default=None,
                        help="long side of the training image in px (default: 250, or 112 for the tiny preset)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8")
    parser.add_argument("--lr", type=float, default=None,
                        help="AdamW peak learning rate (default: the preset's; tiny 2e-3, sindiffusion 5e-4)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the weights, scales and noise (default 0)")
    parser.add_argument("--prediction", default=None, choices=["eps", "v", "x0"],
                        help="network target (default: eps for sindiffusion as the paper, v for sindiffusion_tiny)")
    add_device(parser)
    parser.add_argument("--resume", action="store_true", help="continue from FILE.safetensors.train-state")
    parser.add_argument("--override", action="store_true",
                        help="with --resume: use the lr / batch size given instead of the stored ones")
    parser.add_argument("--save-every", type=int, default=1000, help="write checkpoint and state every N steps")
    add_precision(parser, old=("--no-bf16",))


def load_image(path) -> "torch.Tensor":
    """An image file -> [1,3,H,W] float in [0, 1]; an unusable file raises ImageFileError (a ValueError) naming it."""
    from semantica_core.image_files import ImageFileError, load_image_file

    image = load_image_file(path)
    height, width = image.shape[-2:]
    if min(height, width) < 8:  # below the network's multiple there is no patch to learn
        raise ImageFileError(str(path), f"{width}x{height} px is too small for training (8 px or more)")
    return image[None]


def requested_config(args, base: dict) -> dict:
    """`base` <- --config <- --set <- the flags given, as a SingleImageTrainConfig dict."""
    from semantica_core.config import apply_set, deep_merge, read_config_file

    data = deep_merge(base, read_config_file(args.config)) if args.config else dict(base)
    for assignment in args.set:
        data = apply_set(data, assignment)
    flags = {"max_side": args.size, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "precision": args.precision, "preset": args.preset}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.prediction is not None:
        data = deep_merge(data, {"diffusion": {"prediction": args.prediction}})
    return data


def _changes(stored: dict, new: dict, prefix: str = "") -> dict:
    """{key: (new, stored)} where two config dicts differ, nested keys joined by dots."""
    out = {}
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = (b, a)
    return out


def resumed_config(args, state_path, stored):
    """The stored config with what this command changes: refuses a change of the model or image setup, and a new
    lr or batch size without --override."""
    from semantica_core.single_image_train import SingleImageTrainConfig

    changes = _changes(stored.to_dict(), requested_config(args, stored.to_dict()))
    said = lambda keys: ", ".join(f"{FLAG_NAMES.get(k, k)} {changes[k][0]} (stored: {changes[k][1]})" for k in keys)
    fixed = [k for k in changes if k not in FREE_ON_RESUME + OVERRIDABLE]
    if fixed:
        raise ValueError(f"{state_path} was trained with another model or image setup: {said(fixed)}; resume "
                         "without these changes, or give another --output to start a new model")
    overridden = [k for k in changes if k in OVERRIDABLE]
    if overridden and not args.override:
        raise ValueError(f"{state_path} stores {said(overridden)}; resume without these flags to keep the stored "
                         "values, or add --override to continue with the new ones")
    if overridden:
        print(f"--override: continuing with {said(overridden)}", file=sys.stderr)
    return SingleImageTrainConfig.from_dict({**stored.to_dict(), **{k: changes[k][0] for k in changes}})


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from semantica_core.atomic import check_writable
    from semantica_core.precision import describe, resolve_precision
    from semantica_core.single_image_train import (
        PRESETS,
        SingleImageTrainConfig,
        init_train_state,
        load_train_state,
        prepare_training_image,
        save_single_image_checkpoint,
        save_train_state,
        state_path_for,
        train_single_image,
    )

    image_path, out = Path(args.image), Path(require_output(args))
    if not image_path.is_file():
        raise FileNotFoundError(f"training image not found: {image_path}")
    if out.suffix != ".safetensors":
        raise ValueError(f"--output must end in .safetensors; got {out}")
    check_writable(out.parent)  # before training, not at the first save
    state_path = state_path_for(out)
    device = resolve_device(args.device)
    image = load_image(image_path)
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1; got {args.max_steps}")

    if args.resume and state_path.is_file():
        state = load_train_state(state_path, device)
        prepared = prepare_training_image(image, state.config.max_side).to(device)
        if prepared.shape != state.image.shape or not torch.allclose(prepared, state.image, atol=2e-2):
            raise ValueError(
                f"{state_path} was trained on another image than {image_path}; give the same image, or another "
                "--output to start a new model"
            )
        state.config = resumed_config(args, state_path, state.config)  # the loop sets each step's learning rate
        print(f"resuming {out} at step {state.step}")
    else:
        if state_path.is_file():
            raise ValueError(f"{state_path} exists: pass --resume to continue that run, or delete it to start over")
        if args.resume:
            print(f"no state file {state_path}; starting a new run", file=sys.stderr)
        preset = SingleImageTrainConfig.from_preset(args.preset or "sindiffusion", prediction=args.prediction)
        state = init_train_state(image, SingleImageTrainConfig.from_dict(requested_config(args, preset.to_dict())),
                                 device)
    max_steps = args.max_steps if args.max_steps is not None else PRESETS[state.config.preset]["steps"]
    height, width = state.image.shape[-2:]
    parameters = sum(p.numel() for p in state.network.parameters()) / 1e6
    print(
        f"{state.config.preset}: {image_path.name} "
        f"{state.source_size[0]}x{state.source_size[1]} -> trained at {width}x{height}, "
        f"receptive field {state.receptive_field()} px, {parameters:.2f}M "
        f"parameters, {state.config.diffusion['prediction']} prediction, batch {state.config.batch_size}, {device} "
        f"({describe(resolve_precision(state.config.precision, device))})"
    )

    def save():
        save_train_state(state_path, state)
        save_single_image_checkpoint(out, state, source_image=str(image_path.resolve()))

    bar = tqdm(total=max_steps, initial=state.step, desc="train single", unit="step", dynamic_ncols=True)
    started, start_step = time.perf_counter(), state.step
    interrupted = []

    def progress(info):
        bar.update(1)
        if info["step"] % 10 == 0 or info["step"] == info["total"]:
            bar.set_postfix(loss=f"{float(info['loss']):.4f}")
        if args.save_every and info["step"] % args.save_every == 0 and info["step"] < info["total"]:
            save()
        if interrupted:
            raise KeyboardInterrupt

    # Ctrl-C stops at the end of the running step, so the saved state is a finished step.
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    except ValueError:  # not the main thread: Ctrl-C interrupts wherever it lands
        previous = None
    try:
        train_single_image(None, steps=max_steps, callback=progress, state=state)
    except KeyboardInterrupt:
        bar.close()
        save()
        print(f"\ninterrupted: saved step {state.step} to {out}; continue with --resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    bar.close()
    save()
    done = state.step - start_step
    seconds = time.perf_counter() - started
    rate = f", {seconds / done * 1000:.0f} s per 1000 steps" if done else ""
    print(f"wrote {out} (step {state.step}{rate}); resume state {state_path}")
    return 0


def main(argv=None) -> int:
    from training.cli import exit_status

    parser = argparse.ArgumentParser(prog="semantica train single", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
