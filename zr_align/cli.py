"""`zr-align` command line. Subcommands are registered in `COMMANDS`."""

from __future__ import annotations

import argparse
import json
import sys


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


def _add_tinyworld_judge(sub) -> None:
    p = sub.add_parser("judge", help="judge images with TinyWorld's ground-truth judge; one JSON line per image, "
                                     "then a summary line")
    p.add_argument("--prompts", required=True, help='JSONL file, one {"image": file name, "prompt": ...} per line')
    p.add_argument("--images", default=None, help="folder the image names are relative to (default: the JSONL's)")


def _run_tinyworld_judge(args) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .tinyworld.grammar import ATTRIBUTES
    from .tinyworld.judge import judge

    index = Path(args.prompts)
    if not index.is_file():
        raise ValueError(f"prompt file {index} does not exist")
    root = Path(args.images) if args.images is not None else index.parent
    records = [(n, json.loads(line)) for n, line in enumerate(index.read_text().splitlines(), 1) if line.strip()]
    if not records:
        raise ValueError(f"prompt file {index} has no lines")
    verdicts = []
    for number, record in records:
        name = record.get("image", record.get("file_name"))
        if name is None or "prompt" not in record:
            raise ValueError(f"{index} line {number} needs 'image' and 'prompt' fields")
        if not (root / name).is_file():
            raise ValueError(f"{index} line {number}: image {root / name} does not exist")
        with Image.open(root / name) as image:
            pixels = np.asarray(image.convert("RGB"))
        verdict = judge(pixels, record["prompt"])
        verdicts.append(verdict)
        print(json.dumps({"image": name, **verdict.to_record()}))
    summary = {
        "images": len(verdicts),
        "accuracy": {a: sum(v.correct[a] for v in verdicts) / len(verdicts) for a in ATTRIBUTES},
        "mean_scores": {d: sum(v.scores[d] for v in verdicts) / len(verdicts) for d in verdicts[0].scores},
    }
    print(json.dumps({"summary": summary}))
    return 0


# `zr-align tinyworld NAME ...`: name -> (add arguments, run), like `COMMANDS`.
TINYWORLD_COMMANDS = {
    "judge": (_add_tinyworld_judge, _run_tinyworld_judge),
}


def _add_tinyworld(sub) -> None:
    p = sub.add_parser("tinyworld", help="TinyWorld, the built-in miniature world (SPEC §8)")
    tinyworld = p.add_subparsers(dest="tinyworld_command", required=True)
    for add, _ in TINYWORLD_COMMANDS.values():
        add(tinyworld)


def _run_tinyworld(args) -> int:
    return TINYWORLD_COMMANDS[args.tinyworld_command][1](args)


# name -> (add arguments, run)
COMMANDS = {
    "score": (_add_score, _run_score),
    "tinyworld": (_add_tinyworld, _run_tinyworld),
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
