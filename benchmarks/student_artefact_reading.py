"""Does a reward model's realism score see the generator's artefacts? On the generator samples of an evaluation
set, the AUC of its realism mean for judged-clean over judged-flagged images (colour shift, blur), and its mean by
the judge's colour measurement (CPU, under a minute).

    python benchmarks/student_artefact_reading.py [--model models/tinyworld/student] \
        [--eval-dir outputs/tinyworld_rewards/data/eval_test] [--sft-model models/tinyworld/sft]

A missing `--eval-dir` is made first with `reward_eval.make_eval_set` (the test split, seed 1, as `zr-align tinyworld
build-rewards` makes it; about a minute). On the SFT model's samples every colour-shift flag comes from the
object's own colour (the judge's core residual above 25), not from the background; the table bins by that
residual, so a realism that falls with it reads the cast a fine-tuned generator can push.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from zr_align.reward_training.evaluate import load_scorer
from zr_align.reward_training.metrics import pairwise_accuracy
from zr_align.tinyworld.judge import SHIFT_CORE, judge
from zr_align.tinyworld.reward_eval import make_eval_set, score_eval_records

BINS = ((0.0, 15.0), (15.0, SHIFT_CORE), (SHIFT_CORE, 35.0), (35.0, float("inf")))


def auc(higher: np.ndarray, lower: np.ndarray) -> float:
    """P(a draw of `higher` > a draw of `lower`), ties counting half: the pairwise accuracy over every pair of one
    image of each group, with the first group preferred."""
    if not len(higher) or not len(lower):
        return float("nan")
    a, b = np.repeat(higher, len(lower)), np.tile(lower, len(higher))
    return pairwise_accuracy(a, b, np.ones_like(a))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/tinyworld/student", help="reward-model folder")
    parser.add_argument("--eval-dir", default="outputs/tinyworld_rewards/data/eval_test")
    parser.add_argument("--sft-model", default="models/tinyworld/sft", help="generator, if the set is made here")
    args = parser.parse_args()
    eval_dir = Path(args.eval_dir)
    if not (eval_dir / "rated.jsonl").is_file():
        make_eval_set(eval_dir, "test", 1, args.sft_model)
    records = score_eval_records(load_scorer(args.model), eval_dir)
    shift, blur, residual, realism = [], [], [], []
    for line in (eval_dir / "rated.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["source"] != "sft_sample":
            continue
        verdict = judge(np.asarray(Image.open(eval_dir / row["image"]).convert("RGB")), row["prompt"])
        shift.append(verdict.artefacts["color_shift"])
        blur.append(verdict.artefacts["blur"])
        residual.append(verdict.measurements.get("core_residual", 0.0))
        realism.append(records[row["image"]]["scores"]["realism"]["mean"])
    if not realism:
        raise SystemExit(f"{eval_dir} has no generator samples: make it with a --sft-model")
    shift, blur, residual, realism = map(np.asarray, (shift, blur, residual, realism))
    print(f"{args.model} on {eval_dir}: {len(realism)} generator samples, colour shift {shift.sum()}, blur {blur.sum()}")
    print(f"realism AUC judged clean > colour-shifted {auc(realism[~shift], realism[shift]):.3f}; "
          f"sharp > blurred {auc(realism[~blur], realism[blur]):.3f}")
    print("| core residual | images | realism mean |\n|---|---|---|")
    for low, high in BINS:
        inside = (residual >= low) & (residual < high)
        if inside.any():
            print(f"| [{low:g}, {high:g}) | {inside.sum()} | {realism[inside].mean():.2f} |")


if __name__ == "__main__":
    main()
