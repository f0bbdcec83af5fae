"""Training curves of a fine-tuning run measured after the fact: every checkpoint's weights (a LoRA, or every
denoiser weight with `model.trainable: full`) sampled on the validation prompts (the same noise each time), scored
by the ground-truth judge and by the reward model.

The trainer logs the reward of its own training batches (`metrics.jsonl`) but not what the judge would say; its
checkpoints (`OUT/checkpoints/step_N`) hold the trained weights, so the curve is measured here without touching
the run (its seeds and results stay exactly as they were).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..diffusion.components import make_trainable
from ..diffusion.config import TrainConfig, load_train_config
from ..diffusion.export import TRAINED_STATE_FILE
from ..runs import TrainableState, checkpoint_step, list_checkpoints
from ..tinyworld.grammar import ATTRIBUTES
from ..tinyworld.judge import judge_images
from ..tinyworld.sample import generate, load_pipeline



def evaluate_images(images: np.ndarray, prompts: list[str], reward_model) -> dict:
    """Judge accuracy (per attribute and all four) and the reward model's mean on uint8 `(N, H, W, 3)` images."""
    verdicts = judge_images(images, prompts)
    point = {a: float(np.mean([v.correct[a] for v in verdicts])) for a in ATTRIBUTES}
    point["all_correct"] = float(np.mean([all(v.correct.values()) for v in verdicts]))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
    point["reward_mean"] = float(reward_model.score(x, prompts, batch_size=32).reward.mean())
    return point


def trained_weights(pipe, config: TrainConfig) -> TrainableState:
    """The weights a run trains, on `pipe` (its base, loaded afresh) and named as the trainer checkpoints them
    (`make_trainable`, the trainer's own choice), in eval mode, so that each of the run's checkpoints loads with
    `load_state_dict`."""
    trained, _ = make_trainable(pipe, pipe.unet, config)
    for module in trained.values():
        module.eval()
    return TrainableState(trained)


def checkpoint_curve(run_dir, base_model, prompts: list[str], reward_model, seed: int = 20_000, steps: int = 20,
                     start: dict | None = None, progress: bool = True, label: str = "") -> list[dict]:
    """`[{"step": 0, ...}, {"step": N, ...}, ...]`: `evaluate_images` of the base model (or `start`, its result
    computed once for several runs) and of every complete checkpoint of the run in `run_dir`.

    Args:
        run_dir: a `train_t2i.py` output folder with `config.yaml` and `checkpoints/step_N`.
        base_model: the pipeline folder the run started from.
        prompts: one image per entry; image `i` uses the noise of seed `seed + i` at every checkpoint.
    """
    from tqdm.auto import tqdm

    config = load_train_config(Path(run_dir) / "config.yaml")
    pipe = load_pipeline(base_model)
    checkpoints = list_checkpoints(Path(run_dir) / "checkpoints")
    points = []
    with tqdm(total=len(checkpoints) + (start is None), desc=f"curve {label}".strip(), disable=not progress) as bar:
        if start is None:
            start = evaluate_images(generate(pipe, prompts, seed=seed, steps=steps), prompts, reward_model)
            bar.update(1)
        points.append({"step": 0, **start})
        weights = trained_weights(pipe, config)
        for checkpoint in checkpoints:
            weights.load_state_dict(torch.load(checkpoint / TRAINED_STATE_FILE, weights_only=True))
            images = generate(pipe, prompts, seed=seed, steps=steps)
            points.append({"step": checkpoint_step(checkpoint), **evaluate_images(images, prompts, reward_model)})
            bar.update(1)
    return points
