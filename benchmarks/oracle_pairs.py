"""How far could a perfect reward carry the TinyWorld demo? Best-of-N with the ground-truth judge as the reward.

    python benchmarks/oracle_pairs.py pairs --out outputs/pools/oracle_pairs [--n 6] [--seed 400000]
    python benchmarks/oracle_pairs.py select [--split validation] [--n 6] [--images 200]

`pairs`: the Diffusion-DPO pairs of `zr-align generate --mode best_of_n --save-pairs` (the 126 train prompts four
times, seeds from `--seed`), ranked by the judge's overall score instead of a reward model; pairs the judge ties
(best and worst equal) are left out of `pairs.jsonl`. Train on them with `method=dpo data.pairs=OUT` (e.g. in
`zr-align tinyworld demo --eval-split validation`) and compare with pairs ranked by the shipped student: the gap
is what a better ranking alone could add to this fine-tuning method.

`select`: the same best-of-N at sampling time on the held-out split's images (image i: prompt i mod P, candidate 0
the plain sample of noise seed 10000 + i), GSB of the chosen candidate over candidate 0 when the judge chooses
and when the shipped student chooses: the ceiling of selecting among N samples of the SFT model.

The judge is the ground truth, so nothing here is a reward to ship: it is a diagnostic (CPU, minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from zr_align.diffusion.datasets import load_prompts
from zr_align.guidance import generate_folder, load_pipeline, load_reward
from zr_align.guidance.best_of_n import BestOfNOptions
from zr_align.guidance.generate import generate
from zr_align.rewards.output import RewardOutput
from zr_align.tinyworld.judge import judge, net_preference, overall, summarize


class JudgeReward:
    """The judge's overall score (mean of its four rubric scores) as a non-differentiable batched reward."""

    def score(self, images: torch.Tensor, prompts: list[str], batch_size: int = 16) -> RewardOutput:
        values = [overall(judge(image, prompt)) for image, prompt in zip(images.float().cpu(), prompts)]
        return RewardOutput(torch.tensor(values))


def make_pairs(args) -> None:
    prompts = load_prompts("tinyworld:train") * args.repeats
    pipe = load_pipeline(args.model)
    start = time.perf_counter()
    generate_folder(pipe, prompts, args.out, "best_of_n", JudgeReward(), seed=args.seed, save_pairs=True,
                    num_inference_steps=20, options=BestOfNOptions(n=args.n))
    pairs_file = Path(args.out) / "pairs.jsonl"
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    kept = [p for p in pairs if p["reward_chosen"] > p["reward_rejected"]]
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in kept))
    gap = sum(p["reward_chosen"] - p["reward_rejected"] for p in kept) / max(1, len(kept))
    print(json.dumps({"prompts": len(prompts), "n": args.n, "pairs kept": len(kept), "tied, left out":
                      len(pairs) - len(kept), "mean judge gap": round(gap, 3),
                      "minutes": round((time.perf_counter() - start) / 60, 1)}))


def select(args) -> None:
    split = load_prompts(f"tinyworld:{args.split}")
    prompts = [split[i % len(split)] for i in range(args.images)]
    pipe = load_pipeline(args.model)
    rankers = {"judge": JudgeReward(), "student": load_reward(args.reward, device=pipe.device)}
    rows = {name: [] for name in rankers}
    base = []
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start:start + args.batch_size]
        seeds = [10000 + start + i for i in range(len(chunk))]
        for name, ranker in rankers.items():
            chosen = generate(pipe, chunk, "best_of_n", ranker, seeds, options=BestOfNOptions(n=args.n)).images
            rows[name] += [judge(image, p) for image, p in zip(chosen, chunk)]
        base += [judge(image, p) for image, p in zip(generate(pipe, chunk, "plain", seeds=seeds).images, chunk)]
    for name, verdicts in rows.items():
        summary = summarize(verdicts)
        print(json.dumps({"ranker": name, "split": args.split, "n": args.n, "images": len(verdicts),
                          "gsb": net_preference(verdicts, base), "all four": round(summary["all_correct"], 3),
                          "color shift": round(summary["artefacts"]["color_shift"], 3)}))
    summary = summarize(base)
    print(json.dumps({"ranker": "none (candidate 0)", "all four": round(summary["all_correct"], 3),
                      "color shift": round(summary["artefacts"]["color_shift"], 3)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("--out", required=True)
    p.add_argument("--repeats", type=int, default=4, help="times the train prompts are written")
    p.add_argument("--seed", type=int, default=400000)
    s = sub.add_parser("select")
    s.add_argument("--split", default="validation")
    s.add_argument("--images", type=int, default=200)
    s.add_argument("--reward", default="models/tinyworld/student")
    s.add_argument("--batch-size", type=int, default=16)
    for q in (p, s):
        q.add_argument("--model", default="models/tinyworld/sft")
        q.add_argument("--n", type=int, default=6)
    args = parser.parse_args()
    make_pairs(args) if args.command == "pairs" else select(args)


if __name__ == "__main__":
    main()
