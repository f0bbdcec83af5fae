"""Held-out evaluation of TinyWorld reward models by pair kind, reading accuracy, and the GSB tie band."""

import json

import numpy as np
import pytest
import torch

from zr_align.reward_training.teacher import ReasoningTeacher
from zr_align.rewards.output import RewardOutput
from zr_align.scores import DEFAULT_BINS, ScoreDistribution
from zr_align.tinyworld.judge import judge, net_preference
from zr_align.tinyworld.render import render
from zr_align.tinyworld.reward_eval import (
    KINDS,
    evaluate_kinds,
    make_eval_set,
    pair_hits,
    rationale_checks,
    reading_accuracy,
    readings,
    score_eval_images,
    score_eval_records,
)
from zr_align.tinyworld.reward_models import build_reward_model

DIMS = ("alignment", "realism", "aesthetics", "plausibility")


def judge_scorer(images, prompts):
    """The ground truth as a scorer: reward = the judge's mean rubric score."""
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    verdicts = [judge(p, prompt) for p, prompt in zip(pixels, prompts)]
    scores = {d: ScoreDistribution.from_score(torch.tensor([v.scores[d] for v in verdicts])) for d in DIMS}
    return RewardOutput(torch.stack([s.mean for s in scores.values()]).mean(0), scores)


def prompt_copier(images, prompts):
    """A reward that ignores the image: what a blind model that copies the prompt can at best do."""
    probs = torch.full((len(prompts), 9), 1 / 9)
    return RewardOutput(torch.full((len(prompts),), 3.0), {d: ScoreDistribution(probs, DEFAULT_BINS) for d in DIMS})


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    stats = make_eval_set(out, "validation", seed=0, pairs_per_kind=14)
    return out, stats


def test_eval_set_kinds_and_ground_truth(eval_set):
    out, stats = eval_set
    assert stats["pairs"]["clean_vs_one"] == stats["pairs"]["one_vs_two"] == 14
    assert stats["pairs"]["quality"] == 14 and stats["pairs"]["generator"] == 0  # no SFT model given
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    rated = {r["image"]: r for r in map(json.loads, (out / "rated.jsonl").read_text().splitlines())}
    for p in pairs:
        a, b = (sum(rated[p[k]]["scores"].values()) for k in ("image_a", "image_b"))
        assert (a > b) == (p["preference"] == "a")  # the judge decides; no tie band
        if p["kind"] == "clean_vs_one":  # one attribute: 1 point of alignment
            assert abs(a - b) == pytest.approx(1.0)
    assert {p["preference"] for p in pairs} == {"a", "b"}  # the better image is not always first


def test_judge_scorer_is_perfect_and_a_blind_one_is_chance(eval_set):
    out, _ = eval_set
    perfect = evaluate_kinds(score_eval_images(judge_scorer, out), out)
    blind = evaluate_kinds(score_eval_images(prompt_copier, out), out)
    assert perfect["all"] == 1.0
    assert blind == {k: 0.5 for k in (*KINDS[:3], "all")}


def test_reading_accuracy_parses_checks_and_rejects_a_blind_reader(eval_set):
    assert rationale_checks("size large yes color blue no shape circle yes position left yes", "alignment") == {
        "size": "large yes", "color": "blue no", "shape": "circle yes", "position": "left yes"}
    assert rationale_checks("blur no noise yes shift no", "realism") == {"blur": "no", "noise": "yes", "shift": "no"}
    out, _ = eval_set
    teacher = ReasoningTeacher(build_reward_model("teacher", teacher=True))  # random: reads nothing
    reading = reading_accuracy(teacher, out, limit=12)
    assert set(reading) == {"size", "color", "shape", "position", "blur", "noise", "shift", "faded", "clutter",
                            "fragments", "crop"}
    assert max(reading[a] for a in ("size", "color", "shape", "position")) < 0.5


def test_pair_hits_and_readings_are_the_rows_behind_the_figures(eval_set):
    out, _ = eval_set
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    perfect, blind = (pair_hits(score_eval_images(scorer, out), out) for scorer in (judge_scorer, prompt_copier))
    assert [(r["kind"], r["prompt"]) for r in perfect] == [(p["kind"], p["prompt"]) for p in pairs]
    assert {r["hit"] for r in perfect} == {1.0} and {r["hit"] for r in blind} == {0.5}  # a tied reward: half
    reversed_judge = {name: -reward for name, reward in score_eval_images(judge_scorer, out).items()}
    assert {r["hit"] for r in pair_hits(reversed_judge, out)} == {0.0}  # preferring the worse image: no hit
    judged = score_eval_images(judge_scorer, out)
    assert all(judged[r["preferred"]] > judged[r["other"]] for r in perfect)  # the rows name the judge's choice
    records = score_eval_records(judge_scorer, out)
    assert records.keys() == judged.keys()
    assert all(abs(records[name]["reward"] - judged[name]) < 1e-4 and records[name]["scores"] for name in judged)

    teacher = ReasoningTeacher(build_reward_model("teacher", teacher=True))
    rows = readings(teacher, out, sources=("render",), limit=5)
    rated = [r for r in map(json.loads, (out / "rated.jsonl").read_text().splitlines()) if r["source"] == "render"]
    assert [r["image"] for r in rows] == [r["image"] for r in rated[:5]]
    for row, record in zip(rows, rated):  # the judge's side of each check is the stored rationale
        truth = {c: v for d, text in record["rationale"].items() for c, v in rationale_checks(text, d).items()}
        assert {c: judge_said for c, (judge_said, _) in row["checks"].items()} == truth
    hits = [float(said == truth) for row in rows for truth, said in [row["checks"]["position"]]]
    assert reading_accuracy(teacher, out, sources=("render",), limit=5)["position"] == pytest.approx(np.mean(hits))


def test_gsb_tie_band_counts_one_attribute():
    prompt = "a large red circle on the left"
    right = judge(render(prompt, seed=0).image, prompt)
    wrong = judge(render("a large blue circle on the left", seed=0).image, prompt)
    assert net_preference([right], [wrong]) == {"good": 1, "same": 0, "bad": 0, "net": 1.0}
    assert net_preference([right], [wrong], margin=0.25)["same"] == 1  # the old band tied it
