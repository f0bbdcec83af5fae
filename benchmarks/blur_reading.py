"""Does a TinyWorld teacher see blur? Its greedy "blur yes" rate by the judge's sharpness (threshold
`judge.BLUR_SHARPNESS`), on blurred images of a reward-data folder (source with "+blur", e.g. the teacher's own
training data) and on the blurred copies of an evaluation set (source "blur"); CPU, a minute per teacher.

    python benchmarks/blur_reading.py --teacher models/tinyworld/teacher \
        --data outputs/tinyworld_rewards_reader/data/train --eval-dir outputs/reward_ordering/validation [--limit 200]

The rationale's blur check is what the teacher says; the judge's sharpness is what the image holds. A teacher that
says "yes" only far below the threshold cannot tell a blurred render from a sharp one (docs/tinyworld_rewards.md,
session 28).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from zr_align.reward_training.teacher import ReasoningTeacher
from zr_align.tinyworld.judge import BLUR_SHARPNESS, judge
from zr_align.tinyworld.reward_eval import readings

BANDS = (0.0, 0.2, 0.25, 0.3, BLUR_SHARPNESS, np.inf)


def _subset(folder: Path, keep, limit: int | None, out: Path) -> Path:
    """A view of `folder` with only the rated rows `keep` accepts (the first `limit`): its own rated.jsonl, the
    images linked."""
    rows = [json.loads(line) for line in (folder / "rated.jsonl").read_text().splitlines()]
    rows = [r for r in rows if keep(r["source"])][:limit]
    out.mkdir(parents=True)
    (out / "rated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "images").symlink_to((folder / "images").resolve())
    return out


def blur_by_sharpness(teacher, folder: Path) -> None:
    """Print the judge's and the teacher's "blur yes" rates, and the teacher's per band of sharpness."""
    sharpness, said, truth = [], [], []
    for row in readings(teacher, folder):
        measured = judge(np.asarray(Image.open(folder / row["image"]).convert("RGB")), row["prompt"]).measurements
        sharpness.append(measured.get("sharpness", np.nan))
        truth.append(row["checks"]["blur"][0] == "yes")
        said.append(row["checks"]["blur"][1] == "yes")
    sharpness, said, truth = map(np.array, (sharpness, said, truth))
    print(f"images {len(said)}: judge says blur {truth.mean():.3f}, teacher {said.mean():.3f}, "
          f"agreement {(said == truth).mean():.3f}")
    print("\n| sharpness | images | teacher says blur |\n|---|---|---|")
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        inside = (sharpness >= lo) & (sharpness < hi)
        if inside.any():
            print(f"| {lo:g} - {hi:g} | {inside.sum()} | {said[inside].mean():.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/tinyworld/teacher")
    parser.add_argument("--data", required=True, help="a reward-data folder (make_reward_data): its +blur images")
    parser.add_argument("--eval-dir", required=True, help="an evaluation set (make_eval_set): its blurred copies")
    parser.add_argument("--limit", type=int, default=200, help="blurred images read from --data")
    args = parser.parse_args()
    teacher = ReasoningTeacher.from_pretrained(args.teacher)
    with tempfile.TemporaryDirectory() as tmp:
        for view, name, folder, keep, limit in (
            ("data", f"{args.data}, blurred images", args.data, lambda s: "+blur" in s, args.limit),
            ("eval", f"{args.eval_dir}, blurred copies", args.eval_dir, lambda s: s.split("+")[0] == "blur", None),
        ):
            print(f"\n## {args.teacher} on {name}\n")
            blur_by_sharpness(teacher, _subset(Path(folder), keep, limit, Path(tmp, view)))


if __name__ == "__main__":
    main()
