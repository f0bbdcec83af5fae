"""`zr-align` command line. Subcommands are registered in `COMMANDS`."""

from __future__ import annotations

import argparse
import json
import sys

from .reward_training.commands import REWARD_COMMANDS
from .tinyworld.commands import TINYWORLD_COMMANDS


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score images with a reward-model folder; one JSON line per image")
    p.add_argument("--reward", required=True, help="reward-model folder (written by ZRewardModel.save_pretrained)")
    p.add_argument("--prompt", required=True, help="the text prompt the images were generated from")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--kappa", type=float, default=None, help="override the risk penalty of the stored config")
    p.add_argument("images", nargs="+", help="image files")


def _run_score(args) -> int:
    from .rewards import ZRewardModel

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


# name -> (add arguments, run)
COMMANDS = {
    "score": (_add_score, _run_score),
    "tinyworld": command_group("tinyworld", "TinyWorld, the built-in miniature world (SPEC §8)", TINYWORLD_COMMANDS),
    "reward": command_group("reward", "reward-model training, data and evaluation (SPEC §3-4)", REWARD_COMMANDS),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zr-align", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except ValueError as error:  # our one-line input errors: no traceback for the user
        print(f"zr-align {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
