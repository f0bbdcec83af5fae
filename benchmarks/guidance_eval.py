"""Reward-guided sampling on TinyWorld, judged by the ground truth (CPU).

    python benchmarks/guidance_eval.py --split validation --sweep      # choose settings (validation prompts only)
    python benchmarks/guidance_eval.py --split test                    # report the chosen settings on test

Base model: the shipped SFT baseline `models/tinyworld/sft`; reward: the shipped RISD student
`models/tinyworld/student` (its stored weights). Image i shows prompt i mod P of the split with the noise of seed
10000 + i, the same for every mode (equal seeds: image i of every mode starts from the same noise; best-of-N's
candidate 0 is that noise). Judged by TinyWorld's pixel-reading judge, never by the reward that was optimised:
per-attribute accuracy, all four right, GSB net preference against plain sampling (`net_preference`, tie band 0.2).
Time: wall seconds per image of each mode (batches of 16, one thread), and the extra over plain sampling.
With `--lora DIR` (a reward-tuned LoRA, e.g. the demo's) two more rows: the LoRA alone and guidance on top of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SEED = 10_000

# Candidates tried on the validation split (--sweep); the test split is never used to choose.
SWEEP = [
    ("guidance", {"scale": 0.01}),
    ("guidance", {"scale": 0.02}),
    ("guidance", {"scale": 0.05}),
    ("guidance", {"scale": 0.1}),
    ("guidance", {"scale": 0.2}),
    ("guidance", {"scale": 0.05, "window": (0.0, 0.5)}),
    ("guidance", {"scale": 0.1, "window": (0.0, 0.5)}),
    ("guidance", {"scale": 0.2, "window": (0.0, 0.5)}),
    ("guidance", {"scale": 0.05, "window": (0.5, 1.0)}),
    ("guidance", {"scale": 0.1, "window": (0.5, 1.0)}),
    ("guidance", {"scale": 0.02, "window": (0.5, 1.0)}),
    ("noise", {"iterations": 4, "lr": 0.1, "num_steps": 5}),
    ("noise", {"iterations": 8, "lr": 0.05, "num_steps": 5}),
    ("noise", {"iterations": 8, "lr": 0.1, "num_steps": 5}),
    ("noise", {"iterations": 8, "lr": 0.2, "num_steps": 5}),
    ("noise", {"iterations": 8, "lr": 0.025, "num_steps": 5}),
    ("noise", {"iterations": 8, "lr": 0.0125, "num_steps": 5}),
    ("noise", {"iterations": 8, "lr": 0.05, "num_steps": 10}),
    ("best_of_n", {"n": 4}),
    ("best_of_n", {"n": 8}),
]
# The settings reported on the test split: the best GSB net of each mode on validation
# (benchmarks/results/guidance_validation.txt: guidance +50.0%, noise +47.2%, best-of-8 +41.7% on 36 images).
CHOSEN = [
    ("guidance", {"scale": 0.02}),
    ("noise", {"iterations": 8, "lr": 0.025, "num_steps": 5}),
    ("best_of_n", {"n": 8}),
]

def label(mode: str, options: dict, lora: bool = False) -> str:
    text = ", ".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in options.items())
    return ("LoRA + " if lora else "") + mode + (f" ({text})" if text else "")


def run(pipe, reward, prompts: list[str], mode: str, options: dict, steps: int, batch: int = 16) -> dict:
    """uint8 images `(N, 64, 64, 3)`, their rewards and the wall time of one mode, image i from seed SEED + i."""
    import numpy as np
    import torch

    from zr_align.guidance import generate, mode_options

    images, rewards = [], []
    start = time.perf_counter()
    for first in range(0, len(prompts), batch):  # one batch at a time: equal seeds whatever the batch size
        chunk = prompts[first : first + batch]
        seeds = [SEED + first + i for i in range(len(chunk))]
        out = generate(pipe, chunk, mode, reward, seeds, num_inference_steps=steps,
                       options=mode_options(mode, **options))
        images.append((out.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
        rewards.append(out.reward)
    seconds = time.perf_counter() - start
    return {"images": np.concatenate(images), "reward": float(torch.cat(rewards).mean()),
            "s_per_image": seconds / len(prompts)}


def judged(result: dict, prompts: list[str], baseline: list | None) -> dict:
    from zr_align.tinyworld.judge import (
        judge_images,
        net_preference,
        overall,
        summarize,
    )

    verdicts = judge_images(result["images"], prompts)
    summary = summarize(verdicts)
    row = {"accuracy": summary["accuracy"], "all_correct": summary["all_correct"], "reward": result["reward"],
           "judge": sum(overall(v) for v in verdicts) / len(verdicts), "mean_scores": summary["mean_scores"],
           "s_per_image": result["s_per_image"], "verdicts": verdicts}
    row["gsb"] = net_preference(verdicts, baseline) if baseline is not None else None
    return row


def table(rows: dict, plain_seconds: float) -> str:
    header = ("| mode | size | colour | shape | position | all four | judge score | GSB vs plain (good/same/bad) | net "
              "| mean reward | s/image | extra s/image |")
    lines = [header, "|---" * 12 + "|"]
    for name, row in rows.items():
        acc, gsb = row["accuracy"], row["gsb"]
        versus = f"{gsb['good']}/{gsb['same']}/{gsb['bad']}" if gsb else "-"
        net = f"{gsb['net']:+.1%}" if gsb else "-"
        lines.append(f"| {name} | {acc['size']:.3f} | {acc['color']:.3f} | {acc['shape']:.3f} | {acc['position']:.3f} "
                     f"| {row['all_correct']:.3f} | {row['judge']:.3f} | {versus} | {net} | {row['reward']:.3f} | {row['s_per_image']:.2f} "
                     f"| {row['s_per_image'] - plain_seconds:+.2f} |")
    dimensions = list(next(iter(rows.values()))["mean_scores"])
    lines += ["", "Mean judge score per rubric dimension (1-5; the judge score above is their mean):", "",
              "| mode | " + " | ".join(dimensions) + " |", "|---" * (1 + len(dimensions)) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in row["mean_scores"].values()) + " |"
              for name, row in rows.items()]
    return "\n".join(lines)


def cached(folder: Path | None, name: str, compute) -> dict:
    """`compute()` once per setting: images, mean reward and time are kept in `folder/NAME.npz` (resumable runs,
    and a sweep extended later does not sample again the settings it already has)."""
    import numpy as np

    path = folder / (name.replace(" ", "_").replace("/", "_") + ".npz") if folder is not None else None
    if path is not None and path.is_file():
        data = np.load(path)
        return {"images": data["images"], "reward": float(data["reward"]), "s_per_image": float(data["s_per_image"])}
    result = compute()
    if path is not None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(path, **result)
    return result


def evaluate(split: str, num_images: int, settings: list, steps: int, lora: str | None, cache: Path | None,
             log=print) -> dict:
    import torch

    from zr_align.guidance import load_pipeline, load_reward
    from zr_align.tinyworld.grammar import split_prompts
    from zr_align.tinyworld.judge import net_preference

    torch.set_num_threads(1)
    pool = getattr(split_prompts(0), split)
    prompts = [pool[i % len(pool)] for i in range(num_images)]
    folder = cache / f"{split}_{num_images}_T{steps}" if cache is not None else None
    pipe = load_pipeline(ROOT / "models/tinyworld/sft")
    reward = load_reward(ROOT / "models/tinyworld/student")
    plans = [("plain", pipe, "plain", {})] + [(label(m, o), pipe, m, o) for m, o in settings]
    if lora is not None:
        tuned = load_pipeline(ROOT / "models/tinyworld/sft", lora)
        plans += [("LoRA (plain)", tuned, "plain", {}), (label(*settings[0], lora=True), tuned, *settings[0])]
    rows = {}
    for name, model, mode, options in plans:
        result = cached(folder if "LoRA" not in name else None, name,
                        lambda model=model, mode=mode, options=options: run(model, reward, prompts, mode, options,
                                                                            steps))
        rows[name] = judged(result, prompts, rows["plain"]["verdicts"] if rows else None)
        log(json.dumps({name: {k: v for k, v in rows[name].items() if k != "verdicts"}}), flush=True)
    if lora is not None:
        name = label(*settings[0], lora=True)
        rows[name]["gsb_vs_lora"] = net_preference(rows[name]["verdicts"], rows["LoRA (plain)"]["verdicts"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("validation", "test"), default="test")
    parser.add_argument("--num-images", type=int, default=None, help="default: 100 (test), 36 (validation)")
    parser.add_argument("--sweep", action="store_true", help="every SWEEP setting (validation only)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps T of every mode")
    parser.add_argument("--lora", default=None, help="a reward-tuned LoRA: report it alone and with guidance")
    parser.add_argument("--out", default=None, help="write the report here (default benchmarks/results/...)")
    parser.add_argument("--cache", default="outputs/guidance/eval_cache",
                        help="per-setting images are kept here and reused ('' for no cache)")
    args = parser.parse_args(argv)
    if args.sweep and args.split == "test":
        parser.error("--sweep chooses settings, on the validation split only")
    num_images = args.num_images or (100 if args.split == "test" else 36)
    start = time.perf_counter()
    rows = evaluate(args.split, num_images, SWEEP if args.sweep else CHOSEN, args.steps, args.lora,
                    ROOT / args.cache if args.cache else None)
    minutes = (time.perf_counter() - start) / 60
    text = (f"# Reward-guided sampling on TinyWorld ({args.split} split)\n\n"
            f"`python benchmarks/guidance_eval.py {' '.join(argv if argv is not None else sys.argv[1:])}`: "
            f"{num_images} images (prompt i mod {len(set(_prompts(args.split)))} of the {args.split} split, noise "
            f"seed {SEED} + i in every mode), T={args.steps} DDIM steps, SFT baseline + RISD student reward, judged "
            f"by the ground-truth judge; GSB tie band 0.2. {minutes:.1f} min on 1 CPU thread (shared machine: "
            f"timings +-20%).\n\n{table(rows, rows['plain']['s_per_image'])}\n")
    lora_rows = [(n, r) for n, r in rows.items() if "gsb_vs_lora" in r]
    for name, row in lora_rows:
        g = row["gsb_vs_lora"]
        text += (f"\n{name} vs the LoRA alone: GSB net {g['net']:+.1%} (good {g['good']}, same {g['same']}, "
                 f"bad {g['bad']}). LoRA: {args.lora}\n")
    print(text)
    name = "guidance_validation.txt" if args.split == "validation" else "guidance_eval.txt"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    out.write_text(text)
    return 0


def _prompts(split: str) -> list[str]:
    from zr_align.tinyworld.grammar import split_prompts

    return getattr(split_prompts(0), split)


if __name__ == "__main__":
    sys.exit(main())
