"""`semantica train pairs`: train a pair-conditioned diffusion model (Semantica) on pages of related images.

The same module runs on one CPU, one GPU, or many GPUs and nodes under `accelerate launch` (DDP, or FSDP through
accelerate's config). Accelerate owns devices, mixed precision and process groups; training/config.py owns the
config, training/data the data, training/run_dir.py the run folder and its checkpoints, training/sample_grid.py the
sample grids, semantica_core.ema and semantica_core.train_state the EMA and the resume state. This file is the loop.

--resume continues from the newest complete checkpoint (a truncated or corrupt one is skipped with a message) with
the config stored there; a flag that contradicts it stops the run unless --override is given. The learning-rate
schedule is a function of the step, so it needs no state of its own.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from semantica_core.config import ConfigError
from training import run_dir
from training.config import (
    FLAG_KEYS,
    OptimConfig,
    PairTrainingConfig,
    build_model_configs,
    config_conflicts,
    resolve_config,
    training_preset_names,
    validate_config,
)
from training.options import add_device, add_output, add_precision


class PairLoss(nn.Module):
    """The training forward as a module, so DDP/FSDP wrap it (they only see `forward`) and autocast applies.

    `keep` marks rows kept by on-the-fly pair filtering; when no row is kept the loss of all rows times zero keeps
    every process's backward identical (DDP needs every rank to reduce the same gradients)."""

    def __init__(self, denoiser, cond_drop_prob: float, encoder_id: str):
        super().__init__()
        self.denoiser = denoiser
        self.cond_drop_prob = cond_drop_prob
        self.encoder_id = encoder_id

    def forward(self, x0, tokens, pooled, generator=None, keep=None):
        from semantica_core.embeds import Embeds

        scale = 1.0
        if keep is not None:
            if bool(keep.any()):
                x0, tokens, pooled = x0[keep], tokens[keep], pooled[keep]
            else:
                scale = 0.0
        embeds = Embeds(tokens, pooled, self.encoder_id)
        return self.denoiser.loss(x0, embeds, cond_drop_prob=self.cond_drop_prob, generator=generator) * scale


class Condition:
    """What a batch is conditioned on: the embedding cache's rows, or the frozen encoder run on the fly (which also
    applies the optional similarity filter of pairs)."""

    def __init__(self, c: PairTrainingConfig, device: torch.device, precision: str, log):
        from semantica_core.encoders import load_encoder
        from training.data import EmbedCache, condition_input, encoder_info

        self.device, self.c = device, c
        self.cache = EmbedCache(c.data.cache) if c.data.cache else None
        self.encoder = None
        if c.model.encoder:
            dtype = None
            if device.type == "cuda" and precision != "no":
                dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            self.encoder = load_encoder(c.model.encoder, device=device, dtype=dtype)
        if self.encoder is not None:
            self.info = encoder_info(self.encoder)
        else:
            self.info = {k: self.cache.info[k] for k in ("encoder_id", "token_dim", "pooled_dim", "num_tokens")}
        if self.cache is not None:
            if self.encoder is not None and self.cache.info["encoder_id"] != self.encoder.encoder_id:
                raise ConfigError(
                    f"the cache {c.data.cache} was made with encoder '{self.cache.info['encoder_id']}' but --encoder "
                    f"is '{self.encoder.encoder_id}': rebuild the cache with `semantica embed --encoder "
                    f"{c.model.encoder}`"
                )
            if self.cache.missing_shards:
                log(f"[data] warning: the cache lacks shard(s) {self.cache.missing_shards}; their images are skipped")
        self.size, self.crop = condition_input(self.encoder) if self.encoder is not None else (None, "center")
        self.filters = self.cache is None and c.data.pairing == "pairs" and (
            c.data.filter_min_similarity is not None or c.data.filter_max_similarity is not None
        )

    def describe(self) -> str:
        if self.cache is not None:
            return f"cache {self.c.data.cache}"
        return f"encoder {self.info['encoder_id']} on the fly"

    def __call__(self, batch: dict, stats) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(tokens, pooled, keep) on the device; keep is None unless pairs are filtered on the fly (counted in
        `stats`)."""
        from training.data import pair_verdict

        if self.cache is not None:
            return batch["tokens"].to(self.device).float(), batch["pooled"].to(self.device).float(), None
        cond = self.encoder(batch["cond"].to(self.device, non_blocking=True))
        if not self.filters:
            return cond.tokens, cond.pooled, None
        target_pooled = self.encoder(batch["target"].to(self.device).add(1).div(2)).pooled
        similarities = nn.functional.cosine_similarity(cond.pooled, target_pooled, dim=1).tolist()
        lo, hi = self.c.data.filter_min_similarity, self.c.data.filter_max_similarity
        verdicts = [pair_verdict(s, lo, hi) for s in similarities]
        for verdict in filter(None, verdicts):
            stats.add(verdict)
            stats.add("pairs_used", -1)
        return cond.tokens, cond.pooled, torch.tensor([v is None for v in verdicts], device=self.device)

    def of_images(self, picked) -> tuple[list, Any]:
        """(the images shown, their Embeds) for (page, image id, image) triples; Embeds None when none is usable."""
        from semantica_core.embeds import Embeds
        from training.data import fit_square

        if self.cache is None:
            pixels = torch.stack([fit_square(image, self.size, self.crop) for _, _, image in picked])
            return [image for _, _, image in picked], self.encoder(pixels.to(self.device))
        kept = [(image_id, image) for _, image_id, image in picked if image_id in self.cache]
        if not kept:
            return [], None
        rows = [self.cache.get(image_id) for image_id, _ in kept]
        embeds = Embeds(torch.stack([r[0] for r in rows]).float(), torch.stack([r[1] for r in rows]).float(),
                        self.info["encoder_id"])
        return [image for _, image in kept], embeds


def load_initial_weights(network: nn.Module, net_cfg, diff_cfg, encoder_id: str, path: str) -> dict:
    """Loads the raw weights of the pair model file `path` into `network` (model.init_from); returns the file's
    training info. Stops with a ConfigError naming the first difference when the file's network, diffusion or encoder
    is not this run's."""
    from semantica_core.checkpoint import load_checkpoint

    if not os.path.isfile(path):
        raise ConfigError(f"model.init_from: no file {path}; give the model.safetensors of an earlier run")
    source = load_checkpoint(path, weights="raw")  # checks the file itself (CheckpointError names what is wrong)
    if source.kind != "pair_conditioned":
        raise ConfigError(f"model.init_from: {path} is a {source.kind} model; `train pairs` starts only from a pair "
                          f"model")
    # the json round trip makes tuples and lists compare alike
    flat = lambda network, diffusion: json.loads(json.dumps(
        {**{f"network {k}": v for k, v in network.items()}, **{f"diffusion {k}": v for k, v in diffusion.items()}}))
    stored = flat(source.network_config, source.diffusion_config)
    wanted = flat(dataclasses.replace(net_cfg, gradient_checkpointing=False).to_dict(), diff_cfg.to_dict())
    for key in sorted(set(stored) | set(wanted)):
        if stored.get(key) != wanted.get(key):
            raise ConfigError(
                f"model.init_from: {path} has {key}={stored.get(key)!r} but this run's config gives "
                f"{wanted.get(key)!r}; use the preset and model.network / model.diffusion overrides it was trained with"
            )
    stored_encoder = (source.encoder_info or {}).get("encoder_id")
    if stored_encoder != encoder_id:
        raise ConfigError(f"model.init_from: {path} was trained on encoder '{stored_encoder}' but this run's is "
                          f"'{encoder_id}'; start from a model of the same encoder")
    network.load_state_dict(source.network.state_dict(), strict=True)
    return dict(source.training_info or {})


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Multiplier of optim.lr at optimizer step `step` (0-based): linear warmup, then constant or cosine."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "cosine":
        span = max(1, max_steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def parameter_groups(network: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in network.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not name.startswith("null_") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_accelerator(c: PairTrainingConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from semantica_core.precision import accelerate_mixed_precision

    cpu = c.train.device == "cpu" or not _has_accelerator()  # without it accelerate never starts CPU process groups
    if c.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {c.train.device}: no CUDA device here; use --device cpu (or auto)")
    if c.train.precision != "auto":
        mixed = "bf16" if c.train.precision == "bf16" else "no"
    elif os.environ.get("ACCELERATE_MIXED_PRECISION"):  # set by accelerate launch from its flag or config
        mixed = None
    else:
        mixed = accelerate_mixed_precision("auto", "cuda" if torch.cuda.is_available() and not cpu else "cpu")
    return Accelerator(cpu=cpu, mixed_precision=mixed,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or bool(mps and mps.is_available())


@dataclass
class Run:
    """The objects of a run in progress and its counters, as the checkpoint functions need them."""

    config: PairTrainingConfig
    accelerator: Any
    loss_module: nn.Module  # as prepared by accelerate
    optimizer: torch.optim.Optimizer
    ema: Any  # semantica_core.ema.EMA of the parameters this process holds
    generator: torch.Generator  # noise, noise levels, condition dropout
    position: Any  # training.data.DataPosition
    pickled_state: bool  # FSDP: accelerate's own state format
    step: int = 0
    images_seen: int = 0
    seconds: float = 0.0  # training time before this process started (resumed runs)
    init_from_steps: Optional[int] = None  # the steps of the model.init_from file; kept in checkpoints for --resume

    @property
    def rank(self) -> int:
        return self.accelerator.process_index


def network_parameters(loss_module: nn.Module):
    """(name, parameter) of the trained network as prepared: the network's own names (DDP and one process), or this
    process's shards (FSDP)."""
    for name, p in loss_module.named_parameters():
        if p.requires_grad:
            yield name.removeprefix("module.").removeprefix("denoiser.network."), p


def network_state(run: Run, use_ema: bool) -> dict:
    """The network's full state dict (raw or EMA weights) on the CPU; every process takes part (FSDP gathers)."""
    with run.ema.applied() if use_ema else contextlib.nullcontext():
        state = run.accelerator.get_state_dict(run.loss_module)
        prefix = "denoiser.network."
        # Cloned inside the swap: without FSDP the state dict aliases the live parameters.
        return {k[len(prefix):]: v.detach().to("cpu", copy=True) for k, v in (state or {}).items()
                if k.startswith(prefix)}


def save_checkpoint(run: Run, seconds: float, log) -> None:
    """The training state into checkpoints/step-N (semantica_core.train_state files, see training/run_dir.py)."""
    from semantica_core.train_state import save_train_state

    out, acc, step = run.config.train.output, run.accelerator, run.step
    tmp = run_dir.temporary_checkpoint(out, step, create=acc.is_main_process)
    acc.wait_for_everyone()
    try:
        if run.pickled_state:
            acc.save_state(tmp)
        weights = None if run.pickled_state else network_state(run, use_ema=False)  # all take part (FSDP gathers)
        info = {"data": run.position.state()}
        if acc.is_main_process:
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            info.update(images_seen=run.images_seen, seconds=seconds, world_size=acc.num_processes, scaler=scaler,
                        state="accelerate" if run.pickled_state else "safetensors",
                        init_from_steps=run.init_from_steps)
        own_ema = acc.is_main_process or run.pickled_state  # under DDP every process holds process 0's EMA
        main = acc.is_main_process and not run.pickled_state  # the weights and optimizer of DDP: process 0's
        save_train_state(
            run_dir.state_file(tmp, run.rank), step=step, config=run.config.to_dict(),
            network=weights if main else None, ema=run.ema if own_ema else None,
            optimizer=run.optimizer if main else None,
            generators=None if run.pickled_state else {"noise": run.generator}, global_rng=not run.pickled_state,
            info=info,
        )
        acc.wait_for_everyone()
        if acc.is_main_process:
            final = run_dir.commit_checkpoint(out, step, run.config.train.keep_checkpoints)
            log(f"[train] step {step}: checkpoint {final}")
    except BaseException:
        if acc.is_main_process:
            run_dir.discard_checkpoint(out, step)
        raise
    acc.wait_for_everyone()


def load_checkpoint(run: Run, checkpoint: str) -> Optional[dict]:
    """Puts a checkpoint's state into the run; returns this process's data position (None: start its data over)."""
    from semantica_core.train_state import read_train_state

    main = read_train_state(run_dir.state_file(checkpoint, 0))
    own_path = run_dir.state_file(checkpoint, run.rank)
    own = read_train_state(own_path) if run.rank and os.path.isfile(own_path) else main
    if run.pickled_state:
        run.accelerator.load_state(checkpoint)
    else:
        main.load_network(run.accelerator.unwrap_model(run.loss_module).denoiser.network)
        main.load_optimizer(run.optimizer)
        if run.accelerator.scaler is not None and main.info.get("scaler"):
            run.accelerator.scaler.load_state_dict(main.info["scaler"])
        own.load_rng({"noise": run.generator}, global_rng=True)  # fewer processes before: process 0's streams
    (own if own.has("ema") else main).load_ema(run.ema)
    run.step, run.images_seen, run.seconds = main.step, main.info["images_seen"], main.info.get("seconds", 0.0)
    run.init_from_steps = main.info.get("init_from_steps")
    return own.info.get("data") if own is not main or run.rank == 0 else None


def sample_grid(run: Run, grid, writer, log) -> None:
    """The sample grid of this step from the EMA weights; every process takes part in gathering them."""
    if not grid.wanted:
        return
    ema_state = network_state(run, use_ema=True)
    written = grid.save(ema_state, run.step) if run.accelerator.is_main_process else None
    if written:
        writer.add_image("samples", written[1], run.step)
        log(f"[train] step {run.step}: sample grid {written[0]} (first column: the condition)")


class Meter:
    """Every log_every steps: the mean loss over processes, learning rate, images/s and gradient norm, to TensorBoard
    and the progress bar. A loss that is not finite stops the run."""

    def __init__(self, accelerator, writer, bar):
        self.accelerator, self.writer, self.bar = accelerator, writer, bar
        self.window_start, self.window_images = time.time(), 0
        self.loss, self.grad_norm = float("nan"), float("nan")

    def log(self, step: int, loss: torch.Tensor, lr: float, grad_norm) -> None:
        acc = self.accelerator
        self.loss = acc.reduce(loss, "mean").item()
        images = acc.reduce(torch.tensor(float(self.window_images), device=loss.device), "sum").item()
        rate = images / max(time.time() - self.window_start, 1e-9)
        self.grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if not math.isfinite(self.loss):
            raise FloatingPointError(
                f"the loss is {self.loss} at step {step}: lower optim.lr, keep optim.grad_clip > 0, or use bf16 "
                f"instead of fp16; resume from the last checkpoint with --resume"
            )
        if self.writer is not None:
            for name, value in (("loss", self.loss), ("learning_rate", lr), ("images_per_second", rate),
                                ("grad_norm", self.grad_norm)):
                self.writer.add_scalar(f"train/{name}", value, step)
        self.bar.set_postfix(loss=f"{self.loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        self.window_start, self.window_images = time.time(), 0


def train(config: PairTrainingConfig, resume: Optional[str] = None) -> dict:
    """Runs (or continues) a training run; returns the summary (also written to the run folder's summary.json).

    resume: "latest" (the newest usable checkpoint of the run folder, if any), a checkpoint folder or a run folder.
    """
    from accelerate.utils import DistributedType, gather_object, set_seed
    from tqdm.auto import tqdm

    from semantica_core.atomic import write_json_atomic
    from semantica_core.checkpoint import save_checkpoint as save_model
    from semantica_core.diffusion import Denoiser
    from semantica_core.ema import EMA
    from semantica_core.memory import check_fits, training_bytes
    from semantica_core.networks import PairConditionedUNet
    from semantica_core.precision import Precision
    from semantica_core.train_state import adamw
    from training.data import DataError, DataPosition, DataStats, PairDataset, make_loader, open_source
    from training.sample_grid import SampleGrid, pick_holdout

    c, out = config, config.train.output
    accelerator = make_accelerator(c)
    rank, world, is_main, device = (accelerator.process_index, accelerator.num_processes,
                                    accelerator.is_main_process, accelerator.device)
    precision = accelerator.mixed_precision  # "no", "bf16" or "fp16", once accelerate has resolved "auto"
    pickled_state = accelerator.distributed_type == DistributedType.FSDP
    if pickled_state and not c.train.fsdp_pickled_state:
        raise ConfigError(
            "under FSDP the sharded optimizer state can only be saved in accelerate's own format, which pickles "
            "(optimizer.bin, random_states_*.pkl); pass --fsdp-pickled-state to train with it, or train with DDP "
            "(plain `accelerate launch`), whose state is saved as safetensors"
        )
    if is_main:
        run_dir.prepare(out)
    accelerator.wait_for_everyone()
    log = run_dir.RunLog(out, is_main)
    resume_dir = run_dir.find_resume_dir(resume, out, log, pickled_state) if resume else None
    if resume and resume_dir is None:
        log(f"[train] --resume: no checkpoint in {out}/checkpoints yet, starting from step 0")
    set_seed(c.train.seed)  # same initial weights on every process

    # -- model: network, its precision, the loss, the optimizer, the EMA ---------------------------------------------
    condition = Condition(c, device, precision, log)
    net_cfg, diff_cfg = build_model_configs(c, condition.info["token_dim"], condition.info["pooled_dim"],
                                            condition.info["num_tokens"])
    network = PairConditionedUNet(net_cfg)
    check_fits(
        training_bytes(network, c.train.batch_size, net_cfg.resolution, net_cfg.resolution,
                       c.train.gradient_checkpointing), device,
        f"training {c.model.preset} at {net_cfg.resolution} px in batches of {c.train.batch_size} per process",
        "lower --batch-size (a higher --grad-accum keeps the effective batch) or pass --gradient-checkpointing",
    )
    # bf16: accelerate autocasts the forward; channels-last too (not under FSDP, which flattens the weights). The
    # weights, AdamW state and EMA stay float32.
    bf16 = precision == "bf16"
    net_precision = Precision(device.type, torch.bfloat16 if bf16 else None, bf16 and not pickled_state)
    init_info = None
    if c.model.init_from and not resume_dir:  # a resumed run's checkpoint holds the weights
        init_info = load_initial_weights(network, net_cfg, diff_cfg, condition.info["encoder_id"], c.model.init_from)
        log(f"[train] network starts from the raw weights of {c.model.init_from} "
            f"({init_info.get('steps', '?')} steps); new optimizer, schedule and EMA")
    net_precision.prepare(network)  # before accelerate wraps it
    if c.train.compile:
        network.compile()  # in place: state_dict keys stay those of the plain network
    loss_module = PairLoss(Denoiser(network, diff_cfg, net_precision), net_cfg.cond_drop_prob,
                           condition.info["encoder_id"])
    optimizer = adamw(
        parameter_groups(network, c.optim.weight_decay), device, lr=c.optim.lr, betas=tuple(c.optim.betas),
        eps=c.optim.eps,
    )
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    ema = EMA(network_parameters(loss_module), c.ema.decay, c.ema.warmup)
    generator = torch.Generator(device=device).manual_seed(c.train.seed * 1_000_003 + rank)

    # -- data: the held-out pages (the sample grids' conditions) and every process's share of the rest ---------------
    source = open_source(c.data.path, c.data.format, c.data.tar_page_from)
    holdout = pick_holdout(source, max(c.data.holdout_pages, 0), c.data.min_image_size)
    grid_conditions = holdout[: c.sample.num_conditions]
    if source.kind == "pages" and len(holdout) * 2 >= source.num_units:
        log(f"[data] warning: only {source.num_units} pages; data.holdout_pages={c.data.holdout_pages} would hold out "
            f"too many, so no page is held out (the sample grids condition on training pages)")
        holdout = []
    if not grid_conditions and c.sample.num_conditions > 0:
        grid_conditions = pick_holdout(source, c.sample.num_conditions, c.data.min_image_size)
    dataset = PairDataset(
        source, resolution=net_cfg.resolution, pairing=c.data.pairing,
        cond_size=None if condition.cache is not None else condition.size, cond_crop=condition.crop,
        cache=condition.cache, pairs_per_page=c.data.pairs_per_page, min_image_size=c.data.min_image_size,
        crop=c.data.crop, flip=c.data.flip, filter_min_similarity=c.data.filter_min_similarity,
        filter_max_similarity=c.data.filter_max_similarity, seed=c.train.seed, rank=rank, world_size=world,
        exclude_pages=[key for key, _, _ in holdout],
    )

    # -- resume ------------------------------------------------------------------------------------------------------
    run = Run(c, accelerator, loss_module, optimizer, ema, generator, None, pickled_state,
              init_from_steps=(init_info or {}).get("steps"))
    data_state = load_checkpoint(run, resume_dir) if resume_dir else None
    if resume_dir:
        log(f"[train] resumed from {resume_dir} at step {run.step}")
    start_step = run.step
    run.position = DataPosition(world, c.data.num_workers, data_state)
    dataset.set_resume_state(data_state, c.data.num_workers, log=log)
    loader = make_loader(dataset, c.train.batch_size, c.data.num_workers)

    if is_main:
        write_json_atomic(os.path.join(out, "config.json"), c.to_dict())
    num_params = sum(p.numel() for p in network.parameters())
    log(f"[train] {num_params / 1e6:.2f}M parameters, preset {c.model.preset}, {net_cfg.resolution}px, {world} "
        f"process(es) on {device.type}, batch {c.train.batch_size} x {c.train.grad_accum} accumulation x {world} = "
        f"{c.train.batch_size * c.train.grad_accum * world}, mixed precision {precision}")
    log(f"[data] {source.description}: {source.num_units} unit(s); pairing {c.data.pairing}; condition from "
        f"{condition.describe()}; {len(holdout)} page(s) held out")
    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(out, "tensorboard"))
    grid = SampleGrid(grid_conditions, condition, net_cfg, diff_cfg, net_precision, c.sample, out, device)

    # -- the loop ----------------------------------------------------------------------------------------------------
    bar = tqdm(total=c.train.max_steps, initial=run.step, disable=not is_main, desc="train pairs", unit="step",
               dynamic_ncols=True, mininterval=1.0)
    meter = Meter(accelerator, writer, bar)
    params = ema.params
    max_norm = c.optim.grad_clip if c.optim.grad_clip > 0 else float("inf")
    data_iter = iter(loader)
    started = time.time()
    network.train()
    while run.step < c.train.max_steps:
        loss_total = torch.zeros((), device=device)
        for micro in range(c.train.grad_accum):
            batch = {"empty": True}
            while batch.get("empty"):  # an empty batch only carries the counts of a worker that stopped
                try:
                    batch = next(data_iter)
                except StopIteration:
                    raise DataError(
                        f"process {rank}: the data gave no usable pair in a whole pass over this process's share "
                        f"of {source.description}. What was read:\n{run.position.stats.report()}"
                    ) from None
                run.position.update(batch)
            target = batch["target"].to(device, non_blocking=True)
            tokens, pooled, keep = condition(batch, run.position.stats)
            last = micro == c.train.grad_accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(loss_module):
                loss = loss_module(target, tokens, pooled, generator, keep)
                accelerator.backward(loss / c.train.grad_accum)
            loss_total += loss.detach() / c.train.grad_accum
            meter.window_images += target.shape[0]
        grad_norm = accelerator.clip_grad_norm_(params, max_norm)
        lr = c.optim.lr * lr_factor(run.step, c.optim, c.train.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
        run.step += 1
        run.images_seen += c.train.batch_size * c.train.grad_accum * world
        bar.update(1)

        step = run.step
        if step % max(c.train.log_every, 1) == 0 or step == c.train.max_steps:
            meter.log(step, loss_total, lr, grad_norm)
        if c.train.checkpoint_every > 0 and step % c.train.checkpoint_every == 0 and step < c.train.max_steps:
            save_checkpoint(run, run.seconds + time.time() - started, log)
        if c.sample.every > 0 and step % c.sample.every == 0 and step < c.train.max_steps:
            sample_grid(run, grid, writer, log)
    bar.close()
    seconds = run.seconds + time.time() - started
    if start_step < run.step or not run_dir.checkpoint_dirs(out) or run_dir.checkpoint_dirs(out)[-1][0] != run.step:
        save_checkpoint(run, seconds, log)
    sample_grid(run, grid, writer, log)

    # -- export and summary ------------------------------------------------------------------------------------------
    stats = DataStats.merged(gather_object([run.position.stats.to_dict()]))
    raw, ema_state = network_state(run, use_ema=False), network_state(run, use_ema=True)
    summary = None
    if is_main:
        export_path = os.path.join(out, "model.safetensors")
        save_model(
            export_path, kind="pair_conditioned",
            network_config=dataclasses.replace(net_cfg, gradient_checkpointing=False), diffusion_config=diff_cfg,
            state_dict=raw, ema_state_dict=ema_state, encoder_info=condition.info,
            training_info={"steps": run.step, "images_seen": run.images_seen, "resolution": net_cfg.resolution,
                           "preset": c.model.preset, "pairing": c.data.pairing, "data": c.data.path,
                           "ema_decay": c.ema.decay, "init_from": c.model.init_from or None,
                           "init_from_steps": run.init_from_steps},
        )
        summary = {
            "steps": run.step, "start_step": start_step, "resumed_from": resume_dir, "processes": world,
            "images_seen": run.images_seen, "seconds": round(seconds, 2), "final_loss": meter.loss,
            "final_grad_norm": meter.grad_norm, "export": export_path, "data": stats.to_dict(),
        }
        write_json_atomic(os.path.join(out, "summary.json"), summary)
        writer.close()
        log(f"[train] done: {run.step} steps in {seconds:.1f} s, final loss {meter.loss:.4f}; exported {export_path}")
        log("[data] summary:\n" + stats.report())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if is_main:
        run_dir.unlock(out)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="folder of page folders, .jsonl/.csv manifest, or tar shards")
    parser.add_argument("--data-format", choices=["auto", "folder", "jsonl", "csv", "tar"], help="default: from the path")
    parser.add_argument("--encoder", help="frozen encoder file (semantica encoder export)")
    parser.add_argument("--cache", help="embedding cache folder from `semantica embed` (then --encoder is optional)")
    parser.add_argument("--preset", help=f"training preset: {', '.join(training_preset_names())} (default tiny)")
    parser.add_argument("--config", help="TOML or YAML config file (sections data, model, optim, ema, train, sample)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=2e-4 --set model.network.base_channels=64")
    parser.add_argument("--init-from", metavar="MODEL",
                        help="start the network from this pair model file's raw weights (model.init_from)")
    parser.add_argument("--pairing", choices=["pairs", "reconstruct"], help="reconstruct = the paper's baseline")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--lr", type=float)
    add_output(parser, "the run folder (default out/train-pairs)", old=("--output-dir",), default=None)
    parser.add_argument("--seed", type=int)
    add_device(parser, cpu_alias=True)
    add_precision(parser, old=("--mixed-precision",))
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--num-workers", type=int, help="dataloader workers per process")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--sample-every", type=int)
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint in --output (or the one given), with its stored "
                        "config")
    parser.add_argument("--override", action="store_true",
                        help="with --resume: let the flags, --set and --config change the stored config")
    parser.add_argument("--fsdp-pickled-state", action="store_true", default=None,
                        help="under FSDP only: save and resume the sharded state in accelerate's pickled format "
                        "(FSDP runs stop without it; DDP and single-process runs never pickle)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def resolve_resume(args, flags: dict, first: PairTrainingConfig) -> tuple[PairTrainingConfig, Optional[str]]:
    """The config and checkpoint of `--resume`: the config stored with the checkpoint, changed only by what is given
    explicitly (`first` is the config the arguments give on their own); a change that contradicts it (other than
    training.config.FREE_ON_RESUME) stops unless --override."""
    is_main = int(os.environ.get("RANK", "0")) == 0  # every process reads the same files; one reports
    log = print if is_main else (lambda message: None)
    resume_dir = run_dir.find_resume_dir(args.resume, first.train.output, log, bool(first.train.fsdp_pickled_state))
    if resume_dir is None:
        log(f"[train] --resume: no checkpoint in {first.train.output}/checkpoints yet, starting from step 0")
        return first, None
    stored = run_dir.stored_config(resume_dir)
    config = resolve_config(args.preset, args.config, args.set, flags, validate=False, base=stored)
    conflicts = config_conflicts(stored, config.to_dict())
    if conflicts and not args.override:
        raise ConfigError(
            f"--resume: the run in {resume_dir} was trained with another config; {'; '.join(conflicts)}. Resume "
            f"without those flags to keep the stored config, or add --override to change it"
        )
    if conflicts:
        log(f"[train] --override: resuming with {'; '.join(conflicts)}")
    return config, resume_dir


def run(args: argparse.Namespace) -> int:
    """`semantica train pairs`; exit status as training/cli.py says (2 with one line for a user's error)."""
    from training.cli import exit_status

    return exit_status(lambda: _run(args), prog="semantica train pairs")


def _run(args: argparse.Namespace) -> int:
    flags = {name: getattr(args, name, None) for name in FLAG_KEYS}
    config, resume = resolve_config(args.preset, args.config, args.set, flags, validate=False), None
    if not args.print_config and int(os.environ.get("RANK", "0")) == 0:
        run_dir.lock(config.train.output)  # before anything slow: a second run stops at once
    if args.resume and not args.print_config:
        config, resume = resolve_resume(args, flags, config)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    validate_config(config)
    train(config, resume=resume)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="semantica train pairs", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
