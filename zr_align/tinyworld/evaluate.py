"""Measuring a TinyWorld generator with the ground-truth judge (never with a learned reward)."""

from __future__ import annotations

import numpy as np

from .grammar import ATTRIBUTES
from .judge import Verdict, judge


def summarize(verdicts: list[Verdict]) -> dict:
    """Per-attribute accuracy, all-attributes-correct rate and mean rubric scores of a list of verdicts."""
    n = len(verdicts)
    return {
        "images": n,
        "accuracy": {a: sum(v.correct[a] for v in verdicts) / n for a in ATTRIBUTES},
        "all_correct": sum(all(v.correct[a] for a in ATTRIBUTES) for v in verdicts) / n,
        "mean_scores": {d: sum(v.scores[d] for v in verdicts) / n for d in verdicts[0].scores},
    }


def judge_images(images: np.ndarray, prompts: list[str]) -> list[Verdict]:
    return [judge(image, prompt) for image, prompt in zip(images, prompts)]


def overall(verdict: Verdict, weights: dict[str, float] | None = None) -> float:
    """The judge's overall score of an image: the (weighted) mean of its rubric scores."""
    weights = weights or {d: 1.0 for d in verdict.scores}
    return sum(weights[d] * verdict.scores[d] for d in weights) / sum(weights.values())


def net_preference(candidate: list[Verdict], baseline: list[Verdict], margin: float = 0.2) -> dict:
    """Good-Same-Bad comparison on paired images (same prompt, same seed): GSB net = (good - bad) / all.

    An image pair is "good" when the candidate's overall judge score beats the baseline's by more than
    `margin` (a tie band like a human's), "bad" when it loses by more, "same" otherwise. The overall score is
    the mean of four rubric scores, so one attribute more or less right moves it by exactly 0.25 and a half point
    on one artefact dimension by 0.125: the default band 0.2 counts every attribute a person would see as a
    difference and ties the smallest artefact changes. (Before 2026-11 it was 0.25, which tied one-attribute
    differences; reports give both.)
    """
    good = bad = 0
    for c, b in zip(candidate, baseline):
        delta = overall(c) - overall(b)
        good += delta > margin
        bad += delta < -margin
    n = len(candidate)
    return {"good": good, "same": n - good - bad, "bad": bad, "net": (good - bad) / n}
