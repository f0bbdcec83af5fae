"""Evaluating reward models on held-out human data (Z-Reward's RISD): preference accuracy, Spearman, calibration, speed.

A *scorer* is any callable `scorer(images, prompts) -> RewardOutput` taking a float tensor `(B, 3, H, W)` in
[0, 1] and `B` prompt strings; it needs no gradient. [`load_scorer`] makes one from a reward folder: a
`ZRewardModel` (the student, one forward pass) or a reasoning teacher (greedy or sampled rationales).
[`evaluate_scorer`] scores every distinct image of the evaluation files once and computes the metrics of
`metrics.py`; [`format_table`] prints one row per reward.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch

from ..rewards.loading import load_image
from ..rewards.output import RewardOutput
from ..rewards.zreward import CONFIG_NAME, ZRewardConfig, ZRewardModel
from .data import PreferencePairs, RatedImages
from .metrics import (
    distribution_nll,
    expected_calibration_error,
    pairwise_accuracy,
    spearman,
    throughput,
)

Scorer = Callable[[torch.Tensor, list], RewardOutput]
TEACHER_MODES: tuple[str, ...] = ("greedy", "sample")


def _zreward_scorer(model: ZRewardModel) -> Scorer:
    device = model.bin_values.device

    @torch.inference_mode()
    def scorer(images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return model(images.to(device), prompts)

    scorer.model = model
    return scorer


def load_scorer(path, **options) -> Scorer:
    """A scorer from a reward folder with `zreward_config.json`.

    A `ZRewardModel` folder gives its forward pass under `torch.inference_mode`. A folder whose config has a
    (non-null) `"teacher"` section is a reasoning teacher: it is loaded with
    `zr_align.reward_training.teacher.ReasoningTeacher.from_pretrained(path)` and scores through its
    `scorer(mode=..., num_rationales=...)`.

    Args:
        path: the reward folder.
        mode (`str`, *optional*, defaults to "greedy"): teacher only: "greedy" (one greedy rationale) or "sample"
            (the score distribution averaged over `num_rationales` sampled rationales). Ignored for a student.
        num_rationales (`int`, *optional*, defaults to 4): teacher only, for `mode="sample"`.
        device (`str`, *optional*, defaults to "cpu"): student only: where the model runs.
        **overrides: student only: fields of the stored `ZRewardConfig` to replace (e.g. `kappa=0.5`).

    Raises:
        `ValueError`: if the folder has no `zreward_config.json`, or an option is unknown or invalid.
    """
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise ValueError(f"{path} has no {CONFIG_NAME}; pass a reward folder written by save_pretrained")
    options = dict(options)
    mode = options.pop("mode", "greedy")
    num_rationales = options.pop("num_rationales", 4)
    if mode not in TEACHER_MODES:
        raise ValueError(f"mode must be one of {', '.join(TEACHER_MODES)}, got {mode!r}")
    if not (isinstance(num_rationales, int) and num_rationales >= 1):
        raise ValueError(f"num_rationales must be an integer >= 1, got {num_rationales!r}")
    if json.loads(config_file.read_text()).get("teacher"):
        if options:
            raise ValueError(f"options {sorted(options)} do not apply to the reasoning teacher in {path}; "
                             "it takes mode and num_rationales")
        from .teacher import ReasoningTeacher

        return ReasoningTeacher.from_pretrained(path).scorer(mode=mode, num_rationales=num_rationales)
    device = options.pop("device", "cpu")
    allowed = {f.name for f in fields(ZRewardConfig)} - {"family", "rubric", "bin_token_ids", "teacher"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for a ZRewardModel; allowed: mode, num_rationales, "
                         f"device, {', '.join(sorted(allowed))}")
    return _zreward_scorer(ZRewardModel.from_pretrained(path, **options).to(device))


def _score_images(scorer: Scorer, keys: list[tuple[str, str]], batch_size: int):
    """Score each `(image path, prompt)` once: rewards `(N,)` and per-dimension distributions `(N, K)`.

    Consecutive images of one size share a batch of at most `batch_size`. Returns the rewards, `{dim: probs}`,
    `{dim: bin values}` and the first batch (images, prompts), which is reused for timing.
    """
    rewards, probs, values, first = [], {}, {}, None
    start = 0
    while start < len(keys):
        images = [load_image(keys[start][0])]
        while start + len(images) < len(keys) and len(images) < batch_size:
            image = load_image(keys[start + len(images)][0])
            if image.shape != images[0].shape:
                break
            images.append(image)
        batch = torch.stack(images)
        prompts = [prompt for _, prompt in keys[start:start + len(images)]]
        first = first or (batch, prompts)
        out = scorer(batch, prompts)
        rewards.append(out.reward.detach().float().cpu())
        for dim, dist in out.scores.items():
            probs.setdefault(dim, []).append(dist.probs.detach().float().cpu())
            values[dim] = dist.values.detach().float().cpu()
        start += len(images)
    return torch.cat(rewards), {d: torch.cat(p) for d, p in probs.items()}, values, first


def evaluate_scorer(
    scorer: Scorer,
    pairs: PreferencePairs,
    rated: RatedImages | None = None,
    batch_size: int = 16,
    tie_eps: float = 0.05,
    timing_repeats: int = 3,
) -> dict:
    """Score held-out pairs (and rated images) and compute the reward-model metrics of Z-Reward's evaluation.

    Each distinct (image, prompt) is scored once; pairs and rated images may share images.

    Args:
        scorer: `scorer(images (B, 3, H, W) in [0, 1], prompts) -> RewardOutput`.
        pairs ([`PreferencePairs`]): human preferences.
        rated ([`RatedImages`], *optional*): human ratings; needed for Spearman, ECE and NLL.
        batch_size (`int`, *optional*, defaults to 16): images per scorer call.
        tie_eps (`float`, *optional*, defaults to 0.05): predicted rewards closer than this are a predicted tie
            in the tie-aware accuracy (fixed beforehand, never tuned on the evaluated set).
        timing_repeats (`int`, *optional*, defaults to 3): timed calls on the first batch for the throughput.

    Returns:
        `dict` with `pairs`, `decided_pairs` (human non-ties), `pairwise_accuracy` (human ties dropped, a
        predicted tie counts 1/2; NaN when every pair is a tie), `tie_aware_accuracy`, and with `rated`:
        `rated`, `spearman` (predicted reward vs the mean over dimensions of the human mean scores),
        `spearman_per_dim` (expected score vs human mean), `ece` (mean over dimensions; the predicted
        distribution vs the human modal bin), `ece_per_dim`, `nll` (mean over dimensions, soft labels), else
        None for those; and `images_per_second` (the scorer on one batch of `timing_batch` images).

    Raises:
        `ValueError`: if `batch_size` < 1, or the scorer's bins differ from the rated images'.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys: dict[tuple[str, str], int] = {}
    for item in pairs.items:
        for side in ("path_a", "path_b"):
            keys.setdefault((str(item[side]), item["prompt"]), len(keys))
    if rated is not None:
        for item in rated.items:
            keys.setdefault((str(item["path"]), item["prompt"]), len(keys))
    key_list = list(keys)
    reward, probs, values, (timing_images, timing_prompts) = _score_images(scorer, key_list, batch_size)

    index_a = torch.tensor([keys[(str(it["path_a"]), it["prompt"])] for it in pairs.items])
    index_b = torch.tensor([keys[(str(it["path_b"]), it["prompt"])] for it in pairs.items])
    human = pairs.labels
    decided = int((human != 0.5).sum())
    results = {
        "pairs": len(pairs),
        "decided_pairs": decided,
        "pairwise_accuracy": pairwise_accuracy(reward[index_a], reward[index_b], human) if decided else math.nan,
        "tie_aware_accuracy": pairwise_accuracy(reward[index_a], reward[index_b], human, tie_aware=True,
                                                tie_eps=tie_eps),
        "tie_eps": tie_eps,
        "rated": None, "spearman": None, "spearman_per_dim": None, "ece": None, "ece_per_dim": None, "nll": None,
    }
    if rated is not None:
        index = torch.tensor([keys[(str(it["path"]), it["prompt"])] for it in rated.items])
        results.update(_rated_metrics(rated, reward[index], {d: p[index] for d, p in probs.items()}, values))
    results["images_per_second"] = throughput(lambda x: scorer(x, timing_prompts), timing_images,
                                              repeats=timing_repeats, warmup=0)
    results["timing_batch"] = len(timing_prompts)
    return results


_COLUMNS = (  # (header, result key, format)
    ("pairs", "pairs", "{:d}"),
    ("acc", "pairwise_accuracy", "{:.3f}"),
    ("tie-acc", "tie_aware_accuracy", "{:.3f}"),
    ("spearman", "spearman", "{:.3f}"),
    ("ECE", "ece", "{:.3f}"),
    ("NLL", "nll", "{:.3f}"),
    ("img/s", "images_per_second", "{:.1f}"),
)


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table, one row per reward (`name -> evaluate_scorer result`); missing or NaN values read "-"."""

    def cell(value, fmt: str) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return fmt.format(value)

    header = ["reward", *(h for h, _, _ in _COLUMNS)]
    rows = [[name, *(cell(r.get(key), fmt) for _, key, fmt in _COLUMNS)] for name, r in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _rated_metrics(rated: RatedImages, reward: torch.Tensor, probs: dict, values: dict) -> dict:
    """Spearman (overall and per dimension), calibration (ECE) and NLL of the scores of the rated images."""
    dims = [d for d in rated.dimensions if d in probs]
    if not dims:
        raise ValueError(f"the scorer returns dimensions {sorted(probs)}, none of the rated dimensions "
                         f"{list(rated.dimensions)}")
    bins = torch.tensor(rated.bins, dtype=torch.float32)
    # Calibration needs the model's bins to be the labels' bins; a model on other bins (e.g. RewardDance's
    # yes/no = 1.0/5.0) gets Spearman but no ECE / NLL.
    same_bins = all(values[d].shape == bins.shape and torch.allclose(values[d], bins, atol=1e-5) for d in dims)
    labels = {d: torch.stack([it["labels"][d] for it in rated.items]) for d in dims}
    ece = {d: expected_calibration_error(probs[d], labels[d]) for d in dims} if same_bins else None
    nll = {d: distribution_nll(probs[d], labels[d]) for d in dims} if same_bins else None
    expected = {d: (probs[d] * values[d]).sum(-1) for d in dims}
    human_mean = {d: [it["mean"][d] for it in rated.items] for d in dims}
    return dict(
        rated=len(rated),
        spearman=spearman(reward, rated.human_means()) if len(rated) > 1 else math.nan,
        spearman_per_dim={d: spearman(expected[d], human_mean[d]) if len(rated) > 1 else math.nan for d in dims},
        ece=sum(ece.values()) / len(ece) if ece else None,
        ece_per_dim=ece,
        nll=sum(nll.values()) / len(nll) if nll else None,
    )


__all__ = ["Scorer", "TEACHER_MODES", "evaluate_scorer", "format_table", "load_scorer"]
