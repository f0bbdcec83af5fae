"""How well TinyWorld's ground-truth judge reads its own world (CPU, numpy; about 10 s).

    python benchmarks/tinyworld_judge.py [--clean 1000] [--per-corruption 100] [--seed 0]

Clean: per-attribute accuracy of the judge on renders of the held-out test split (random layouts), and the share
scored 5 on every dimension. Corruptions: for each kind, the share of images where the dimension it targets is
lowered (< 5), the mean score of that dimension, the share where another dimension is lowered too (side effects),
and the share with a wrong attribute: for `wrong_*` kinds this is the detection rate of the changed attribute,
for the others a side effect.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zr_align.tinyworld import CORRUPTIONS, corrupt, judge, render, split_prompts
from zr_align.tinyworld.corrupt import WRONG_ATTRIBUTE
from zr_align.tinyworld.grammar import ATTRIBUTES


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clean", type=int, default=1000, help="clean renders from the test split")
    parser.add_argument("--per-corruption", type=int, default=100, help="images per corruption kind")
    parser.add_argument("--seed", type=int, default=0, help="seeds the prompt split and every layout")
    args = parser.parse_args()
    test = split_prompts(args.seed).test
    print(f"test split: {len(test)} prompts; {args.clean} clean renders, {args.per_corruption} per corruption")

    correct = dict.fromkeys(ATTRIBUTES, 0)
    perfect = 0
    start = time.perf_counter()
    for i in range(args.clean):
        prompt = test[i % len(test)]
        verdict = judge(render(prompt, np.random.default_rng([args.seed, 1, i])).image, prompt)
        for attribute, ok in verdict.correct.items():
            correct[attribute] += ok
        perfect += all(s == 5.0 for s in verdict.scores.values())
    per_image = (time.perf_counter() - start) / max(args.clean, 1)
    print("clean accuracy: " + ", ".join(f"{a} {c / args.clean:.3f}" for a, c in correct.items())
          + f"; all scores 5.0: {perfect / args.clean:.3f}; render+judge {1000 * per_image:.1f} ms/image")

    n = args.per_corruption
    print(f"{'corruption':<16}{'dimension':<14}{'lowered':>8}{'mean':>6}{'other dim':>10}{'wrong attr':>11}")
    for kind, corruption in CORRUPTIONS.items():
        lowered, total, side, wrong = 0, 0.0, 0, 0
        for i in range(n):
            prompt = test[i % len(test)]
            rendered = render(prompt, np.random.default_rng([args.seed, 2, i]))
            verdict = judge(corrupt(rendered, kind, np.random.default_rng([args.seed, 3, i])).image, prompt)
            lowered += verdict.scores[corruption.dimension] < 5.0
            total += verdict.scores[corruption.dimension]
            side += any(s < 5.0 for d, s in verdict.scores.items() if d != corruption.dimension)
            wrong += (not verdict.correct[WRONG_ATTRIBUTE[kind]]) if kind in WRONG_ATTRIBUTE else verdict.num_wrong > 0
        label = "detected" if kind in WRONG_ATTRIBUTE else "side"
        print(f"{kind:<16}{corruption.dimension:<14}{lowered / n:>8.2f}{total / n:>6.2f}{side / n:>10.2f}"
              f"{wrong / n:>7.2f} {label}")


if __name__ == "__main__":
    main()
