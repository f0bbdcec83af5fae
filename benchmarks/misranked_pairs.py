"""Which rubric dimension makes a TinyWorld reward model rank a pair wrong? Over the pairs of one kind that it
ranks against the judge, the mean (and the lowest) difference of each dimension's expected score, the judge's
preferred image minus the other (CPU, about a minute per model on a large set).

    python benchmarks/misranked_pairs.py --model models/tinyworld/teacher \
        [--eval-dir outputs/reward_ordering/validation] [--kind clean_vs_one]

A dimension with a negative mean is the one that outvoted the rest: e.g. on clean-vs-one-wrong pairs a positive
alignment difference and a larger negative realism one mean that the model saw the wrong attribute and misread an
artefact on the clean render.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from zr_align.reward_training.evaluate import load_scorer
from zr_align.tinyworld.reward_eval import KINDS, load_images


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a reward folder (repeatable)")
    parser.add_argument("--eval-dir", default="outputs/reward_ordering/validation")
    parser.add_argument("--kind", default="clean_vs_one", choices=KINDS)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    eval_dir = Path(args.eval_dir)
    pairs = [p for p in map(json.loads, (eval_dir / "pairs.jsonl").read_text().splitlines()) if p["kind"] == args.kind]
    prompts = {r["image"]: r["prompt"] for r in map(json.loads, (eval_dir / "rated.jsonl").read_text().splitlines())}
    images = sorted({p[side] for p in pairs for side in ("image_a", "image_b")})
    print(f"{len(pairs)} {args.kind} pairs of {eval_dir}\n")
    print("| model | misranked | per dimension: mean [lowest] of preferred − other |\n|---|---|---|")
    for path in args.model:
        scorer, records = load_scorer(path), {}
        for start in range(0, len(images), args.batch_size):
            chunk = images[start:start + args.batch_size]
            out = scorer(load_images(eval_dir, chunk), [prompts[i] for i in chunk])
            records.update(zip(chunk, out.to_records()))
        gaps: dict[str, list[float]] = {}
        for p in pairs:
            preferred, other = (p["image_a"], p["image_b"])[:: 1 if p["preference"] == "a" else -1]
            if records[preferred]["reward"] > records[other]["reward"]:
                continue
            for dim, score in records[preferred]["scores"].items():
                gaps.setdefault(dim, []).append(score["mean"] - records[other]["scores"][dim]["mean"])
        missed = len(next(iter(gaps.values()), []))
        cells = [f"{d}: {np.mean(v):+.2f} [{np.min(v):+.2f}]" for d, v in gaps.items()]
        print(f"| {path} | {missed} | " + "; ".join(cells) + " |")


if __name__ == "__main__":
    main()
