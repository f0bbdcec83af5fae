"""Scoring throughput of the TinyWorld student vs the teacher (greedy rationale; N sampled rationales).

    python benchmarks/reward_throughput.py [--teacher models/tinyworld/teacher] [--student models/tinyworld/student]
                                           [--batch 16] [--n 4] [--repeats 5]

Same batch of 64x64 renders for every mode, no gradient, `repeats` timed runs after a warm-up
(`zr_align.reward_training.metrics.throughput`).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    import numpy as np
    import torch

    from zr_align.reward_training.metrics import throughput
    from zr_align.reward_training.teacher import ReasoningTeacher
    from zr_align.rewards import ZRewardModel
    from zr_align.tinyworld.grammar import split_prompts
    from zr_align.tinyworld.render import render

    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default="models/tinyworld/teacher")
    parser.add_argument("--student", default="models/tinyworld/student")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="sampled rationales of the N-sample teacher")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    prompts = [split_prompts(0).test[i % 36] for i in range(args.batch)]
    images = torch.from_numpy(np.stack([render(p, seed=i).image for i, p in enumerate(prompts)]))
    images = images.permute(0, 3, 1, 2).float() / 255
    student = ZRewardModel.from_pretrained(args.student)
    teacher = ReasoningTeacher.from_pretrained(args.teacher)
    modes = {
        "student (one forward)": lambda x: student.score(x, prompts, batch_size=args.batch),
        "teacher, greedy rationale": lambda x: teacher.score(x, prompts, mode="greedy"),
        f"teacher, {args.n} sampled rationales": lambda x: teacher.score(x, prompts, mode="sample",
                                                                         num_rationales=args.n),
    }
    params = {"student": sum(p.numel() for p in student.model.parameters()),
              "teacher": sum(p.numel() for p in teacher.model.parameters())}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} images 64x64; "
          f"params teacher {params['teacher']:,}, student {params['student']:,} "
          f"({params['student'] / params['teacher']:.2f}x)")
    rates = {name: throughput(fn, images, repeats=args.repeats) for name, fn in modes.items()}
    base = rates["student (one forward)"]
    for name, rate in rates.items():
        print(f"{name:<34}{rate:>9.1f} images/s   student is {base / rate:5.1f}x faster")


if __name__ == "__main__":
    main()
