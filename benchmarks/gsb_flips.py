"""What decides a TinyWorld demo's GSB? For every arm of a finished `zr-align tinyworld demo` (or `compare`) folder,
the judge's checks that flip between the base image and the arm's image of the same prompt and noise, counted
separately over the pairs the arm wins ("good") and loses ("bad") by more than the tie band (CPU, seconds).

    python benchmarks/gsb_flips.py outputs/demo [outputs/val/NAME ...] [--reference base]

A "fixed" check is wrong (an attribute) or flagged (an artefact) in the reference image and right or clear in
the arm's; a "broken" one the other way round. An artefact flag costs realism points (colour shift 1.5, i.e. 0.375
of the overall score, more than the 0.2 band), so a check that sits near its threshold on generator samples can
swing many pairs both ways.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from zr_align.tinyworld.compare import load_samples
from zr_align.tinyworld.judge import Verdict, judge, overall


def flipped(before: Verdict, after: Verdict) -> list[str]:
    """Checks right (attributes) or clear (artefacts) in `after` and wrong or flagged in `before`."""
    attributes = [a for a, ok in after.correct.items() if ok and not before.correct[a]]
    artefacts = [f"artefact {k}" for k, flagged in before.artefacts.items() if flagged and not after.artefacts[k]]
    return attributes + artefacts


def arm_flips(compare_dir: Path, arm: str, reference: str, margin: float) -> dict:
    samples = compare_dir / "samples"
    records = [json.loads(line) for line in (samples / reference / "samples.jsonl").read_text().splitlines()]
    images = {name: load_samples(samples / name, len(records)) for name in (reference, arm)}
    result = {"good": 0, "bad": 0, "fixed in good": Counter(), "broken in bad": Counter()}
    for i, record in enumerate(records):
        ref, cand = (judge(images[name][i], record["prompt"]) for name in (reference, arm))
        delta = overall(cand) - overall(ref)
        if delta > margin:
            result["good"] += 1
            result["fixed in good"].update(flipped(ref, cand))
        elif delta < -margin:
            result["bad"] += 1
            result["broken in bad"].update(flipped(cand, ref))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="demo output folders (with compare/) or compare folders")
    parser.add_argument("--reference", default="base")
    args = parser.parse_args()
    for folder in map(Path, args.folders):
        compare_dir = folder / "compare" if (folder / "compare").is_dir() else folder
        settings = json.loads((compare_dir / "compare.json").read_text())["settings"]
        arms = sorted(p.name for p in (compare_dir / "samples").iterdir() if p.is_dir() and p.name != args.reference)
        print(f"\n{folder} (against {args.reference}, tie band {settings['margin']})\n")
        print("| arm | good | bad | fixed in the good pairs | broken in the bad pairs |")
        print("|---|---|---|---|---|")
        for arm in arms:
            r = arm_flips(compare_dir, arm, args.reference, settings["margin"])
            fixed = ", ".join(f"{k} {v}" for k, v in r["fixed in good"].most_common())
            broken = ", ".join(f"{k} {v}" for k, v in r["broken in bad"].most_common())
            print(f"| {arm} | {r['good']} | {r['bad']} | {fixed} | {broken} |")


if __name__ == "__main__":
    main()
