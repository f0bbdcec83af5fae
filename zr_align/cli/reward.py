"""`zr-align reward ...`: reward-model data, training (GDSO, RISD and baselines) and evaluation."""

from __future__ import annotations

import json
from pathlib import Path


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate reward folders on preference pairs (and rated images); prints a table")
    p.add_argument("--reward", required=True, nargs="+", metavar="DIR",
                   help="reward folders (ZRewardModel students or reasoning teachers), one table row each")
    p.add_argument("--data", required=True, metavar="PAIRS.jsonl", help="preference pairs (held-out)")
    p.add_argument("--rated", default=None, metavar="RATED.jsonl",
                   help="rated images, for Spearman, calibration (ECE) and NLL")
    p.add_argument("--mode", default="greedy", choices=("greedy", "sample"),
                   help="teachers only: one greedy rationale, or the average over --num-rationales sampled ones")
    p.add_argument("--num-rationales", type=int, default=4, help="teachers only, with --mode sample")
    p.add_argument("--batch-size", type=int, default=16, help="images per scorer call (also the timing batch)")
    p.add_argument("--tie-eps", type=float, default=0.05, help="predicted-tie band of the tie-aware accuracy")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every metric to this JSON file")


def _run_eval(args) -> int:
    from ..reward_training.data import PreferencePairs, RatedImages
    from ..reward_training.evaluate import evaluate_scorer, format_table, load_scorer

    pairs = PreferencePairs(args.data)
    rated = RatedImages(args.rated) if args.rated is not None else None
    results = {}
    for folder in args.reward:
        scorer = load_scorer(folder, mode=args.mode, num_rationales=args.num_rationales)
        results[folder] = evaluate_scorer(scorer, pairs, rated, batch_size=args.batch_size, tie_eps=args.tie_eps)
    print(format_table(results))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _add_make_data(sub) -> None:
    p = sub.add_parser("make-data", help="generate TinyWorld rated images + preference pairs for one prompt split")
    p.add_argument("--out", required=True, help="output folder: images/, rated.jsonl, pairs.jsonl, stats.json")
    p.add_argument("--split", required=True, choices=("train", "validation", "test"))
    p.add_argument("--images-per-prompt", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-model", default=None, help="TinyWorld pipeline folder whose samples join the images")
    p.add_argument("--sft-fraction", type=float, default=0.3)
    p.add_argument("--num-prompts", type=int, default=None, help="a seeded subset of the split's prompts")
    p.add_argument("--pairs-per-prompt", type=int, default=None, help="default: --images-per-prompt")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation/test prompt split")


def _run_make_data(args) -> int:
    from ..tinyworld.reward_data import make_reward_data

    stats = make_reward_data(args.out, args.split, args.images_per_prompt, args.seed, sft_model=args.sft_model,
                             sft_fraction=args.sft_fraction, num_prompts=args.num_prompts,
                             pairs_per_prompt=args.pairs_per_prompt, split_seed=args.split_seed)
    print(json.dumps(stats))
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a reward model (teacher SFT, GDSO, GRPO, RewardDance, student SFT, "
                                     "RISD, OPD)")
    p.add_argument("--config", required=True, help="YAML of zr_align.reward_training.config.RewardTrainConfig")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoints/step_N folder")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. max_steps=100 gdso.rollouts=8")


def _run_train(args) -> int:
    from ..reward_training.config import RewardTrainConfig
    from ..reward_training.trainer import train_reward_model
    from ..runs import load_config
    from ..tinyworld.reward_models import initial_model

    config = load_config(args.config, args.overrides, RewardTrainConfig)
    path = train_reward_model(config, resume=args.resume, model=initial_model(config))
    print(json.dumps({"model": str(path)}))
    return 0


# `zr-align reward NAME ...`: name -> (add arguments, run)
REWARD_COMMANDS = {
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "make-data": (_add_make_data, _run_make_data),
}
