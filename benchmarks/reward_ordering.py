"""Is one TinyWorld reward model really better than another? Pairwise accuracy per kind on large evaluation sets,
with the difference of two models and its 95% interval from a bootstrap over *prompts* (pairs of one prompt are
not independent), on the same pairs for both models (CPU; minutes per model, plus the sets once).

    python benchmarks/reward_ordering.py --set test=outputs/reward_ordering/test \
        --set validation=outputs/reward_ordering/validation \
        --model risd=outputs/tinyworld_rewards/risd_t2/model --model student_sft=... --model opd=... \
        --compare risd:student_sft --compare risd:opd [--sampled NAME] [--make-sets] [--json OUT.json]

`--make-sets` first writes the sets named by `--set` with `reward_eval.make_eval_set` (600 pairs of each
synthetic kind, up to 1,200 generator pairs; seeds 11 / 12, disjoint from the shipped 120-pair sets of
`build-rewards`, seeds 1 / 2), with SFT samples of `--sft-model`. The shipped sets hold 90-120 pairs per kind,
where a gap of 3-4 points between two students is within the noise (`docs/tinyworld_rewards.md`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from zr_align.reward_training.evaluate import load_scorer
from zr_align.tinyworld.compare import bootstrap_ratio, unit_sums
from zr_align.tinyworld.reward_eval import (
    KINDS,
    kind_accuracy,
    make_eval_set,
    pair_hits,
    score_eval_images,
)

SET_SEEDS = {"test": 11, "validation": 12}
SAMPLES_PER_PROMPT = {"test": 40, "validation": 80}  # 36 / 18 prompts: about 1,440 SFT samples each


def difference(a: list[dict], b: list[dict], kind: str):
    """Mean hit of `a` minus `b` over the pairs of `kind` ("all": every pair), with its 95% interval from
    resampling prompts (`compare.bootstrap_ratio`). `a` and `b` are `pair_hits` rows of the same pairs."""
    rows = [(x["prompt"], x["hit"] - y["hit"]) for x, y in zip(a, b, strict=True) if kind in ("all", x["kind"])]
    unit = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompt for prompt, _ in rows))}  # first-seen order
    units = np.array([unit[prompt] for prompt, _ in rows])
    return bootstrap_ratio(*unit_sums([diff for _, diff in rows], units, len(unit)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", required=True, help="SPLIT=FOLDER (test or validation)")
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER of a reward model")
    parser.add_argument("--sampled", action="append", default=[],
                        help="NAME of a --model teacher to score after 4 sampled rationales (default: greedy)")
    parser.add_argument("--compare", action="append", default=[], help="A:B, two model names: A minus B")
    parser.add_argument("--make-sets", action="store_true", help="write the sets first (see above)")
    parser.add_argument("--sft-model", default="models/tinyworld/sft")
    parser.add_argument("--json", help="write every figure here too")
    args = parser.parse_args()
    sets = dict(item.split("=", 1) for item in args.set)
    models = dict(item.split("=", 1) for item in args.model)
    for pair in args.compare:
        if any(name not in models for name in pair.split(":")):
            parser.error(f"--compare {pair}: both names must be given with --model (known: {', '.join(models)})")

    def options(name: str) -> dict:
        return {"mode": "sample", "num_rationales": 4} if name in args.sampled else {}

    if args.make_sets:
        for split, folder in sets.items():
            stats = make_eval_set(folder, split, SET_SEEDS[split], args.sft_model, pairs_per_kind=600,
                                  generator_pairs=1200, samples_per_prompt=SAMPLES_PER_PROMPT[split])
            print(f"{split}: {stats}", flush=True)

    report = {}
    for split, folder in sets.items():
        torch.manual_seed(0)  # sampled rationales draw from the global RNG: the same figures on every run
        counts = json.loads(Path(folder, "stats.json").read_text())["pairs"]
        hits = {name: pair_hits(score_eval_images(load_scorer(path, **options(name)), folder), folder)
                for name, path in models.items()}
        print(f"\n## {split} ({folder}): pairs " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        print("\n| model | " + " | ".join(KINDS) + " | all |\n|---|" + "---|" * (len(KINDS) + 1))
        report[split] = {"pairs": counts, "accuracy": {}, "differences": {}}
        for name, rows in hits.items():
            acc = report[split]["accuracy"][name] = kind_accuracy(rows)
            print(f"| {name} | " + " | ".join(f"{acc.get(k, float('nan')):.3f}" for k in (*KINDS, "all")) + " |")
        if args.compare:
            print("\n| difference | " + " | ".join(KINDS) + " | all |\n|---|" + "---|" * (len(KINDS) + 1))
        for pair in args.compare:
            a, b = pair.split(":")
            cells, report[split]["differences"][pair] = [], {}
            for kind in (*KINDS, "all"):
                interval = difference(hits[a], hits[b], kind)
                report[split]["differences"][pair][kind] = interval.to_dict()
                cells.append(f"{100 * interval.value:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]")
            print(f"| {a} − {b} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
