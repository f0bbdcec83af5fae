"""`zr-align` command line. Subcommands are registered in `COMMANDS`."""

from __future__ import annotations

import argparse
import json
import sys

from .reward_training.commands import REWARD_COMMANDS
from .tinyworld.commands import TINYWORLD_COMMANDS


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score images with a reward-model folder; one JSON line per image")
    p.add_argument("--reward", required=True, help="reward-model folder (written by ZRewardModel.save_pretrained)")
    p.add_argument("--prompt", required=True, help="the text prompt the images were generated from")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (>= 1)")
    p.add_argument("--kappa", type=float, default=None, help="override the risk penalty of the stored config")
    p.add_argument("images", nargs="+", help="image files")


def _run_score(args) -> int:
    from .rewards import ZRewardModel
    from .rewards.loading import load_image

    for path in args.images:  # every image readable before the model loads: a bad one fails in a second
        load_image(path)
    overrides = {} if args.kappa is None else {"kappa": args.kappa}
    model = ZRewardModel.from_pretrained(args.reward, **overrides)
    out = model.score(args.images, [args.prompt] * len(args.images), batch_size=args.batch_size)
    for path, record in zip(args.images, out.to_records()):
        print(json.dumps({"image": path, "prompt": args.prompt, **record}))
    return 0


def command_group(name: str, help: str, commands: dict):
    """`zr-align NAME SUB ...` for a registry `commands` of SUB -> (add arguments, run)."""

    def add(sub) -> None:
        parser = sub.add_parser(name, help=help)
        group = parser.add_subparsers(dest=f"{name}_command", required=True)
        for add_arguments, _ in commands.values():
            add_arguments(group)

    def run(args) -> int:
        return commands[getattr(args, f"{name}_command")][1](args)

    return add, run


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="plan the peak GPU memory of one reward fine-tuning step, without weights")
    p.add_argument("--config", required=True, help="a train_t2i.py YAML config (e.g. configs/sdxl.yaml)")
    p.add_argument("--gpu-memory", help="a budget such as 24GB or 80GiB: suggest the switches and batch that fit")
    p.add_argument("--architecture", help="diffusion architecture (configs/architectures); default: the family's")
    p.add_argument("--reward-architecture", help="reward VLM architecture; default qwen2_5_vl_3b")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, as for train_t2i.py")


def _run_plan(args) -> int:
    from .architectures import setup_models
    from .memory_plan import parse_size, plan_report
    from .train_config import load_config

    budget = parse_size(args.gpu_memory) if args.gpu_memory else None
    config = load_config(args.config, args.overrides)
    setup = setup_models(config, args.architecture, args.reward_architecture)
    print(json.dumps(plan_report(config, setup, budget), indent=1))
    return 0


# name -> (add arguments, run)
COMMANDS = {
    "score": (_add_score, _run_score),
    "plan": (_add_plan, _run_plan),
    "tinyworld": command_group("tinyworld", "TinyWorld, the built-in miniature world (SPEC §8)", TINYWORLD_COMMANDS),
    "reward": command_group("reward", "reward-model training, data and evaluation (SPEC §3-4)", REWARD_COMMANDS),
}


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Input errors (`ValueError`, and a missing or unreadable file) print one line on stderr
    and return 2; `--debug` shows the traceback instead."""
    parser = argparse.ArgumentParser(prog="zr-align", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an input error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except (ValueError, OSError) as error:  # our one-line input errors: no traceback for the user
        if args.debug:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"zr-align {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
