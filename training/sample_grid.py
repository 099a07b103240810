"""The sample grids of `semantica train pairs`: variations of fixed conditions drawn with the EMA weights as the run
goes, one row per condition (the condition first), written to samples/step-N.png and TensorBoard.

The conditions are the first image of each held-out page (`pick_holdout`), so the grids show what the model does on
images it never trained on.
"""
from __future__ import annotations

import os
from typing import Any

import torch


def pick_holdout(source, count: int, min_image_size: int) -> list[tuple[str, str, Any]]:
    """The first `count` pages (in source order) with a readable image: (page key, image id, image [3,H,W])."""
    from training.data import BadImage, decode_image

    picked = []
    if count <= 0:
        return picked
    for page in source.iter_pages():
        for image in page.images:
            try:
                picked.append((page.key, image.id, decode_image(image.read(), min_image_size)))
                break
            except BadImage:
                continue
        if len(picked) >= count:
            break
    return picked


class SampleGrid:
    """Draws and writes the grid of `conditions` (from pick_holdout) for a network config; process 0 only."""

    def __init__(self, conditions, condition, net_cfg, diff_cfg, precision, sample_cfg, output: str, device):
        self.conditions, self.condition = conditions, condition  # condition: training.train_pairs.Condition
        self.net_cfg, self.diff_cfg, self.precision = net_cfg, diff_cfg, precision
        self.cfg, self.output, self.device = sample_cfg, output, device
        self.network = None  # built at the first grid, on process 0 only

    @property
    def wanted(self) -> bool:
        return bool(self.conditions) and self.cfg.per_condition >= 1

    def save(self, ema_state: dict, step: int):
        """Samples with `ema_state` and writes samples/step-N.png; returns (path, grid [3,H,W]) or None."""
        from PIL import Image
        from torchvision.utils import make_grid

        from semantica_core.atomic import atomic_path
        from semantica_core.checkpoint import SemanticaModel
        from semantica_core.diffusion import Denoiser
        from semantica_core.pipeline import sample_variations
        from training.data import fit_square

        shown, embeds = self.condition.of_images(self.conditions)
        if embeds is None:
            return None
        if self.network is None:
            from semantica_core.networks import PairConditionedUNet

            with torch.random.fork_rng(devices=[]):  # its random init is overwritten; it must not move the RNG
                self.network = PairConditionedUNet(self.net_cfg).eval().requires_grad_(False)
        self.network.load_state_dict(ema_state)
        self.network.to(self.device)
        model = SemanticaModel(
            network=self.network, denoiser=Denoiser(self.network, self.diff_cfg, self.precision),
            kind="pair_conditioned", network_config=self.net_cfg.to_dict(), diffusion_config=self.diff_cfg.to_dict(),
            encoder_info=self.condition.info, resolution=self.net_cfg.resolution, channels=self.net_cfg.out_channels,
            path="the training EMA", weights="ema",
        )
        c = self.cfg
        images = sample_variations(
            model, embeds.to(device=self.device, dtype=torch.float32), seed=c.seed, count=c.per_condition,
            steps=c.steps, guidance=c.guidance, sampler=c.sampler, spacing=c.spacing, device=self.device,
        ).cpu()
        k, r = c.per_condition, self.net_cfg.resolution
        tiles = []
        for i, image in enumerate(shown):
            tiles.append(fit_square(image, r, "center"))
            tiles.extend(images[i * k:(i + 1) * k])
        grid = make_grid(torch.stack(tiles), nrow=k + 1, padding=2, pad_value=1.0)
        path = os.path.join(self.output, "samples", f"step-{step:08d}.png")
        array = grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
        return path, grid
