"""Validation grids of a fine-tuning run: the fixed validation prompts, sampled with the same seed every time."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: Path, columns: int = 4) -> None:
    """Images `(N, 3, H, W)` in [0, 1] as one PNG, `columns` per row."""
    from PIL import Image

    rows = math.ceil(len(images) / columns)
    _, h, w = images.shape[1:]
    grid = torch.ones(3, rows * h, min(columns, len(images)) * w)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image.clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)


@torch.no_grad()
def validate(sampler, config, accelerator, step: int, all_ranks: bool = False) -> None:
    """`output_dir/validation/step_N.png` of `data.validation_prompts`, written by the main process; also to
    TensorBoard. The main process samples alone, unless `all_ranks` (sharded weights: FSDP, ZeRO-3, where every
    denoiser call gathers weights from every rank)."""
    if not config.data.validation_prompts or not (accelerator.is_main_process or all_ranks):
        return
    generator = torch.Generator().manual_seed(config.seed)
    images = sampler.sample(config.data.validation_prompts, "draft_k", generator).images.cpu()
    if not accelerator.is_main_process:
        return
    save_grid(images, Path(config.output_dir) / "validation" / f"step_{step}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step)
