"""Where does a TinyWorld teacher misread? Its greedy rationale against the judge's, check by check, with how close
the judge's own measurement sits to the threshold that decides that check (CPU, a few minutes).

    python benchmarks/teacher_reading_margins.py [--teacher models/tinyworld/teacher] \
        [--eval-dir outputs/reward_ordering/test] [--sources sft_sample] [--confusion position] [--json OUT.json] \
        [--by-distance]

A check whose measurement is within a hair of the judge's threshold (a bounding-box centre 1 px from a third
of the canvas, a shape half-way between two prototypes) is a coin toss for any reader of a 64 px image that went
through a VAE; a miss far from the threshold is a failure to see. The table gives, per check, the accuracy on all
images, the number of misses, how many of those are borderline (the bands below), and the accuracy on the images
that are not borderline; `--by-distance` adds the accuracy per band of that distance, with each band's share of
the images.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from zr_align.reward_training.teacher import ReasoningTeacher
from zr_align.tinyworld.grammar import CANVAS
from zr_align.tinyworld.judge import (
    BLUR_SHARPNESS,
    SHAPE_PROTOTYPES,
    SHIFT_BACKGROUND,
    SHIFT_CORE,
    SIZE_THRESHOLD,
    judge,
)
from zr_align.tinyworld.reward_eval import readings

# check -> (measurement -> distance to the deciding threshold, band within which it counts as borderline)
THIRDS = (CANVAS / 3, 2 * CANVAS / 3)


def _shape_gap(m: dict) -> float:
    features = (m["fill"], m["corner_fill"], m["taper"])
    distances = sorted(math.dist(features, p) for p in SHAPE_PROTOTYPES.values())
    return distances[1] - distances[0]


def _shift_gap(m: dict) -> float:
    # flagged when the background is far from gray or the core colour far from its palette line
    return min(abs(m["background_shift"] - SHIFT_BACKGROUND) / SHIFT_BACKGROUND,
               abs(m.get("core_residual", 0.0) - SHIFT_CORE) / SHIFT_CORE)


MARGINS = {
    "size": (lambda m: abs(m["extent"] - SIZE_THRESHOLD), 1.0, "px of bounding box"),
    "position": (lambda m: min(abs(v - t) for v in (m["center_x"], m["center_y"]) for t in THIRDS), 1.0,
                 "px from a third"),
    "shape": (_shape_gap, 0.05, "feature distance, 2nd - 1st prototype"),
    "blur": (lambda m: abs(m["sharpness"] - BLUR_SHARPNESS), 0.05, "sharpness"),
    "shift": (_shift_gap, 0.2, "relative distance to either threshold"),
}
# check -> the edges of the distance bands of `--by-distance` (in the units of MARGINS)
DISTANCE_EDGES = {"size": (1, 2, 3), "position": (1, 2, 3), "shape": (0.05, 0.1, 0.2, 0.3), "blur": (0.05, 0.1, 0.2),
                  "shift": (0.2, 0.4, 0.6)}


def _by_distance(table: dict) -> None:
    """Accuracy per band of the judge's distance to its threshold: how reading falls off near the threshold, and
    how many of the images sit there."""
    print("\n| check | distance to the threshold | images | share | accuracy |\n|---|---|---|---|---|")
    for check, edges in DISTANCE_EDGES.items():
        pairs = table.get(check, {}).get("gaps", [])
        if not pairs:
            continue
        gaps, hits = np.array([g for g, _ in pairs]), np.array([h for _, h in pairs])
        bounds = (0.0, *edges, math.inf)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            inside = (gaps >= lo) & (gaps < hi)
            band = f"< {hi:g}" if lo == 0 else (f">= {lo:g}" if hi == math.inf else f"{lo:g} - {hi:g}")
            accuracy = f"{hits[inside].mean():.3f}" if inside.any() else "-"
            print(f"| {check} | {band} {MARGINS[check][2]} | {inside.sum()} | {inside.mean():.3f} | {accuracy} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/tinyworld/teacher")
    parser.add_argument("--eval-dir", default="outputs/reward_ordering/test")
    parser.add_argument("--sources", nargs="+", default=["sft_sample"], help="image sources (prefixes) to read")
    parser.add_argument("--json")
    parser.add_argument("--by-distance", action="store_true",
                        help="also the accuracy per band of the judge's distance to its threshold")
    parser.add_argument("--confusion", nargs="*", default=["position"],
                        help="checks whose misses are also counted as (judge's, teacher's) pairs")
    args = parser.parse_args()
    rows = readings(ReasoningTeacher.from_pretrained(args.teacher), args.eval_dir, sources=tuple(args.sources))
    table = {}
    for row in rows:
        measured = judge(np.asarray(Image.open(Path(args.eval_dir) / row["image"]).convert("RGB")),
                         row["prompt"]).measurements
        for check, (truth, said) in row["checks"].items():
            entry = table.setdefault(check, {"n": 0, "hits": 0, "misses": [], "clear_n": 0, "clear_hits": 0})
            hit = said == truth
            entry["n"] += 1
            entry["hits"] += hit
            if check in MARGINS and "extent" in measured:
                gap = float(MARGINS[check][0](measured))
                clear = gap >= MARGINS[check][1]
                entry.setdefault("gaps", []).append((gap, bool(hit)))
                entry["clear_n"] += clear
                entry["clear_hits"] += clear and hit
                if not hit:
                    entry["misses"].append({"image": row["image"], "judge": truth, "teacher": said, "gap": gap})
            elif not hit:
                entry["misses"].append({"image": row["image"], "judge": truth, "teacher": said, "gap": None})

    print(f"{args.teacher} on {len(rows)} images of {args.eval_dir} (sources {', '.join(args.sources)})\n")
    print("| check | images | accuracy | misses | borderline misses | accuracy off the border | border band |")
    print("|---|---|---|---|---|---|---|")
    for check, e in table.items():
        if check in MARGINS:
            band = MARGINS[check][1]
            border = sum(m["gap"] is not None and m["gap"] < band for m in e["misses"])
            clear = f"{e['clear_hits'] / e['clear_n']:.3f} ({e['clear_n']})" if e["clear_n"] else "-"
            print(f"| {check} | {e['n']} | {e['hits'] / e['n']:.3f} | {len(e['misses'])} | {border} | {clear} | "
                  f"< {band} {MARGINS[check][2]} |")
        else:
            print(f"| {check} | {e['n']} | {e['hits'] / e['n']:.3f} | {len(e['misses'])} | - | - | - |")
    for check in args.confusion:
        pairs = Counter(f"{m['judge']} -> {m['teacher']}" for m in table.get(check, {}).get("misses", []))
        print(f"\n{check} misses, judge's -> teacher's: " + ", ".join(f"{k} {v}" for k, v in pairs.most_common(8)))
    if args.by_distance:
        _by_distance(table)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
