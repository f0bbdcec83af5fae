"""How repeatable is the judge's own reading of an image, and how well does a teacher read where it is repeatable?
(CPU, a few minutes.)

    python benchmarks/judge_stability.py [--eval-dir outputs/gen_test] [--sources sft_sample] \
        [--teacher models/tinyworld/teacher] [--out benchmarks/results/judge_stability_generator.txt]

Every image is judged again after changes no one can see: three draws of 8-bit dither (each channel of each pixel
moved by -1, 0 or +1 level of 255) and two quarter-pixel shifts (right, down; bilinear, edges repeated). A check
(size, colour, shape, position, each artefact) is *stable* on an image when all five copies get the judge's call
on the original. On an unstable image the label rests on a level or a fraction of a pixel: no reader of a 64 px
image, the judge itself included, can be expected to match it more often than the copies agree. The table gives
per check the share of stable images, how often a copy agrees with the original, and, with `--teacher`, the
teacher's greedy reading accuracy on all images, on the stable ones and on the others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from zr_align.tinyworld.judge import judge
from zr_align.tinyworld.rationale import RATIONALE_DIMENSIONS, rationale_text
from zr_align.tinyworld.reward_eval import rationale_checks, readings


def copies(pixels: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Five unseeable changes of a uint8 `(H, W, 3)` image: three dithers of +-1 level, two quarter-pixel shifts."""
    rng = np.random.default_rng(seed)
    image = pixels.astype(np.float32)
    out = [np.clip(image + rng.integers(-1, 2, size=image.shape), 0, 255) for _ in range(3)]
    for axis in (1, 0):  # right, then down: a quarter of the neighbour's value on the far side
        before = np.concatenate([np.take(image, [0], axis=axis), image], axis=axis)
        before = np.take(before, range(image.shape[axis]), axis=axis)
        out.append(0.75 * image + 0.25 * before)
    return [np.round(c).astype(np.uint8) for c in out]


def calls(pixels: np.ndarray, prompt: str) -> dict[str, str]:
    """The judge's call per check ("value yes|no" for attributes, "yes|no" for artefacts)."""
    verdict = judge(pixels, prompt)
    found = {}
    for dim in RATIONALE_DIMENSIONS:
        found.update(rationale_checks(rationale_text(verdict, dim), dim))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", default="outputs/gen_test",
                        help="rated images; the set of benchmarks/results/teacher_reading_margins_generator.txt")
    parser.add_argument("--sources", nargs="+", default=["sft_sample"], help="image sources (prefixes) to use")
    parser.add_argument("--teacher", help="also read every image with this teacher (greedy)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    eval_dir = Path(args.eval_dir)
    rated = [json.loads(line) for line in (eval_dir / "rated.jsonl").read_text().splitlines()]
    rated = [r for r in rated if r["source"].startswith(tuple(args.sources))]
    said = {}
    if args.teacher:
        from zr_align.reward_training.teacher import ReasoningTeacher

        rows = readings(ReasoningTeacher.from_pretrained(args.teacher), eval_dir, sources=tuple(args.sources))
        said = {row["image"]: {c: s for c, (_, s) in row["checks"].items()} for row in rows}
    table: dict[str, dict] = {}
    for i, record in enumerate(rated):
        pixels = np.asarray(Image.open(eval_dir / record["image"]).convert("RGB"))
        truth = calls(pixels, record["prompt"])
        again = [calls(c, record["prompt"]) for c in copies(pixels, seed=i)]
        for check, value in truth.items():
            e = table.setdefault(check, {"n": 0, "stable": 0, "dither": 0, "agree": 0, "copies": 0, "hit": 0,
                                         "hit_stable": 0})
            same = [a.get(check) == value for a in again]
            stable = all(same)
            e["dither"] += all(same[:3])
            hit = said.get(record["image"], {}).get(check) == value
            e["n"] += 1
            e["stable"] += stable
            e["agree"] += sum(same)
            e["copies"] += len(same)
            e["hit"] += hit
            e["hit_stable"] += hit and stable
    lines = [f"judge on {len(rated)} images of {eval_dir} (sources {', '.join(args.sources)}); five unseeable copies "
             f"each (3 dithers of +-1/255, 2 quarter-pixel shifts)" + (f"; teacher {args.teacher}" if said else ""),
             "", "| check | images | stable images | stable under the dithers | copies agreeing | teacher: all | stable | "
             "unstable |", "|---|---|---|---|---|---|---|---|"]
    for check, e in table.items():
        unstable = e["n"] - e["stable"]
        teacher = "- | - | -"
        if said:
            on_unstable = f"{(e['hit'] - e['hit_stable']) / unstable:.3f} ({unstable})" if unstable else "- (0)"
            teacher = f"{e['hit'] / e['n']:.3f} | {e['hit_stable'] / max(e['stable'], 1):.3f} | {on_unstable}"
        lines.append(f"| {check} | {e['n']} | {e['stable'] / e['n']:.3f} | {e['dither'] / e['n']:.3f} | "
                     f"{e['agree'] / e['copies']:.3f} | {teacher} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
