"""Which rubric dimension makes a TinyWorld reward model rank a pair wrong? Over the pairs of one kind that it
ranks against the judge, the mean (and the lowest) difference of each dimension's expected score, the judge's
preferred image minus the other (CPU, about a minute per teacher on a large set: every image is scored).

    python benchmarks/misranked_pairs.py --model models/tinyworld/teacher \
        [--eval-dir outputs/reward_ordering/validation] [--kind clean_vs_one]

A dimension with a negative mean is the one that outvoted the rest: e.g. on clean-vs-one-wrong pairs a positive
alignment difference and a larger negative realism one mean that the model saw the wrong attribute and misread an
artefact on the clean render.
"""

from __future__ import annotations

import argparse

import numpy as np

from zr_align.reward_training.evaluate import load_scorer
from zr_align.tinyworld.reward_eval import KINDS, pair_hits, score_eval_records


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a reward folder (repeatable)")
    parser.add_argument("--eval-dir", default="outputs/reward_ordering/validation")
    parser.add_argument("--kind", default="clean_vs_one", choices=KINDS)
    args = parser.parse_args()
    print(f"{args.kind} pairs of {args.eval_dir} (a tied reward counts as misranked)\n")
    print("| model | misranked | per dimension: mean [lowest] of preferred − other |\n|---|---|---|")
    for path in args.model:
        records = score_eval_records(load_scorer(path), args.eval_dir)
        rewards = {image: record["reward"] for image, record in records.items()}
        missed = [r for r in pair_hits(rewards, args.eval_dir) if r["kind"] == args.kind and r["hit"] < 1]
        gaps: dict[str, list[float]] = {}
        for row in missed:
            for dim, score in records[row["preferred"]]["scores"].items():
                gaps.setdefault(dim, []).append(score["mean"] - records[row["other"]]["scores"][dim]["mean"])
        cells = [f"{d}: {np.mean(v):+.2f} [{np.min(v):+.2f}]" for d, v in gaps.items()]
        print(f"| {path} | {len(missed)} | " + "; ".join(cells) + " |")


if __name__ == "__main__":
    main()
