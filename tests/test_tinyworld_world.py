"""Tests for `zr_align.tinyworld`: grammar, renderer, corruptions, judge, annotators and the CLI (CPU, fast)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from zr_align.cli import main
from zr_align.diffusion.datasets import load_prompts
from zr_align.rubrics import DEFAULT_DIMENSIONS
from zr_align.scores import DEFAULT_BINS
from zr_align.tinyworld import (
    CORRUPTIONS,
    AnnotatorPanel,
    Attributes,
    Ratings,
    all_prompts,
    corrupt,
    judge,
    parse_prompt,
    render,
    split_prompts,
)
from zr_align.tinyworld.corrupt import WRONG_ATTRIBUTE
from zr_align.tinyworld.grammar import ATTRIBUTES, COLORS, POSITION_CELLS, VALUES
from zr_align.tinyworld.judge import label_components
from zr_align.tinyworld.render import Look, draw, free_layout, free_look


def test_all_prompts_are_the_default_training_prompts():
    prompts = all_prompts()
    assert prompts == load_prompts(None)  # no prompt file: the whole grammar
    assert len(prompts) == len(set(prompts)) == 2 * 6 * 3 * 5
    assert prompts[0] == "a small red circle on the left"


def test_grammar_round_trip():
    for prompt in all_prompts():
        assert parse_prompt(prompt).prompt == prompt
    assert parse_prompt("  A Large  RED circle on the left. ") == Attributes("large", "red", "circle", "on the left")


@pytest.mark.parametrize("prompt, word, allowed", [
    ("a huge red circle on the left", "'huge'", "small, large"),
    ("a small pink circle on the left", "'pink'", "red, green, blue, yellow, purple, orange"),
    ("a small red hexagon on the left", "'hexagon'", "circle, square, triangle"),
    ("a small red circle in the corner", "'in the corner'", "on the left, on the right, at the top"),
])
def test_parse_errors_name_the_unknown_word(prompt, word, allowed):
    with pytest.raises(ValueError) as error:
        parse_prompt(prompt)
    message = str(error.value)
    assert word in message and allowed in message and "\n" not in message


def test_parse_error_for_a_prompt_without_the_form():
    with pytest.raises(ValueError, match="is not of the form"):
        parse_prompt("red circle")


def test_splits_are_disjoint_cover_every_value_and_are_seeded():
    splits = split_prompts(seed=0)
    train, val, test = map(set, (splits.train, splits.validation, splits.test))
    assert (len(train), len(val), len(test)) == (126, 18, 36)
    assert not (train & test or train & val or val & test)
    assert train | val | test == set(all_prompts())
    for split in (train, val, test):
        seen = [parse_prompt(p) for p in split]
        for attribute in ATTRIBUTES:
            assert {getattr(a, attribute) for a in seen} == set(VALUES[attribute])
    assert split_prompts(seed=0) == splits
    assert split_prompts(seed=1).test != splits.test


def test_render_is_deterministic_and_follows_the_layout_rules():
    a, b = render("a large blue triangle at the top", seed=7), render("a large blue triangle at the top", seed=7)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.scene == b.scene
    assert not np.array_equal(a.image, render("a large blue triangle at the top", seed=8).image)
    # Size jitter within +-15%, centre within the position's third, background exact light gray.
    rng = np.random.default_rng(0)
    for prompt in all_prompts()[::7]:
        scene = render(prompt, rng).scene
        nominal = 16 if scene.size == "small" else 32
        assert 0.85 * nominal <= scene.extent <= 1.15 * nominal
        row, col = POSITION_CELLS[scene.position]
        assert col * 64 / 3 < scene.center[0] < (col + 1) * 64 / 3 and row * 64 / 3 < scene.center[1] < (row + 1) * 64 / 3
        assert scene.extent / 2 < min(scene.center) and max(scene.center) < 64 - scene.extent / 2
    np.testing.assert_array_equal(a.image[0, 0], [230, 230, 230])


def test_render_is_anti_aliased_with_exact_palette_colours():
    rendered = render("a large purple circle in the center", seed=0, jitter=False)
    image, scene = rendered.image, rendered.scene
    np.testing.assert_array_equal(image[32, 32], COLORS["purple"])
    levels = {tuple(p) for p in image.reshape(-1, 3)}
    assert len(levels) > 3  # partial-coverage edge pixels between background and purple
    np.testing.assert_array_equal(draw(scene), image)



def test_looks_between_the_prototypes_read_as_the_judge_decides():
    """`Look`: rounded corners turn a square into what the judge reads as a circle (a triangle later), and a colour
    mixed with another palette colour moves off its palette line; `free_look` draws both over those boundaries."""
    scene = render("a large red square in the center", seed=0, jitter=False).scene
    np.testing.assert_array_equal(draw(scene, look=Look()), draw(scene))
    for shape, sharp, rounded in (("square", "square", "circle"), ("triangle", "triangle", "circle")):
        seen = [judge(draw(replace(scene, shape=shape), look=Look(rounding=r)), scene.prompt).observed["shape"]
                for r in (0.0, 0.05, 0.25)]
        assert seen == [sharp, sharp, rounded]
    mixed = Look(rgb=tuple(0.6 * np.asarray(COLORS["red"]) + 0.4 * np.asarray(COLORS["blue"])))
    verdict = judge(draw(scene, look=mixed), scene.prompt)
    assert verdict.measurements["core_residual"] > 25 and verdict.artefacts["color_shift"]
    rng = np.random.default_rng(0)
    looks = [free_look("red", rng) for _ in range(200)]
    assert 70 < sum(look.rgb is not None for look in looks) < 130
    assert 70 < sum(look.rounding > 0 for look in looks) < 130 and max(look.rounding for look in looks) <= 0.2
    free = [free_layout(parse_prompt(scene.prompt), rng) for _ in range(200)]
    assert all(s.extent / 2 < min(s.center) and max(s.center) < 64 - s.extent / 2 for s in free)
    assert min(s.extent for s in free) < 14 and max(s.extent for s in free) > 36

def test_label_components_8_connected():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one component
    mask[4:6, 4:7] = True
    mask[7, 0] = True
    labels, count = label_components(mask)
    assert count == 3
    assert labels[0, 0] == labels[1, 1] != labels[4, 4]
    assert sorted(np.bincount(labels.ravel())[1:].tolist()) == [1, 2, 6]


def test_judge_reads_clean_renders_of_the_test_split():
    test = split_prompts().test
    n = 200
    correct = dict.fromkeys(ATTRIBUTES, 0)
    perfect = 0
    for i in range(n):
        prompt = test[i % len(test)]
        verdict = judge(render(prompt, np.random.default_rng([11, i])).image, prompt)
        for attribute, ok in verdict.correct.items():
            correct[attribute] += ok
        perfect += all(s == 5.0 for s in verdict.scores.values())
    assert all(c / n >= 0.99 for c in correct.values()), correct
    assert perfect / n >= 0.99


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_each_corruption_lowers_its_dimension(kind):
    test, dimension = split_prompts().test, CORRUPTIONS[kind].dimension
    n, lowered, detected = 40, 0, 0
    for i in range(n):
        prompt = test[i % len(test)]
        corrupted = corrupt(render(prompt, np.random.default_rng([12, i])), kind, np.random.default_rng([13, i]))
        assert corrupted.kind == kind and corrupted.dimension == dimension
        verdict = judge(corrupted.image, prompt)
        lowered += verdict.scores[dimension] < 5.0
        if kind in WRONG_ATTRIBUTE:
            detected += not verdict.correct[WRONG_ATTRIBUTE[kind]]
    assert lowered / n >= 0.95
    if kind in WRONG_ATTRIBUTE:
        assert detected / n >= 0.98


def test_corruptions_are_seeded_and_wrong_attributes_change_the_scene():
    rendered = render("a small green square on the right", seed=3)
    a, b = corrupt(rendered, "noise", seed=5), corrupt(rendered, "noise", seed=5)
    np.testing.assert_array_equal(a.image, b.image)
    changed = corrupt(rendered, "wrong_color", seed=5)
    assert changed.scene.color != "green" and changed.scene.shape == "square"
    assert changed.scene.center == rendered.scene.center
    with pytest.raises(ValueError, match="unknown corruption 'smudge'"):
        corrupt(rendered, "smudge")


def test_object_cast_moves_the_object_off_its_palette_line_and_leaves_the_background():
    rendered = render("a large blue square in the center", seed=2)
    cast = corrupt(rendered, "object_cast", seed=3)
    np.testing.assert_array_equal(cast.image[:6, :6], rendered.image[:6, :6])  # a corner of the background
    assert cast.scene == rendered.scene and cast.dimension == "realism"
    clean, shifted = judge(rendered.image, rendered.scene.prompt), judge(cast.image, rendered.scene.prompt)
    assert not clean.artefacts["color_shift"] and shifted.artefacts["color_shift"]
    assert shifted.measurements["background_shift"] < 1.0  # flagged by the object's colour, not a cast of all
    assert shifted.measurements["core_residual"] > 25.0 > clean.measurements["core_residual"]


def test_judge_rejects_a_wrong_image():
    image = render("a large red circle in the center", seed=0).image
    verdict = judge(image, "a large blue square in the center")
    assert verdict.observed["color"] == "red" and verdict.observed["shape"] == "circle"
    assert not verdict.correct["color"] and not verdict.correct["shape"]
    assert verdict.scores["alignment"] == 3.0
    assert judge(image, "a large red circle in the center").scores["alignment"] == 5.0


def test_judge_accepts_tensors_and_pil_and_rejects_bad_input():
    from PIL import Image

    prompt = "a small orange triangle at the bottom"
    image = render(prompt, seed=1).image
    expected = judge(image, prompt)
    as_tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    assert judge(as_tensor, prompt).observed == expected.observed
    assert judge(Image.fromarray(image), prompt).scores == expected.scores
    with pytest.raises(ValueError, match="64x64"):
        judge(np.zeros((32, 32, 3), dtype=np.uint8), prompt)
    with pytest.raises(ValueError, match="'tiny'"):
        judge(image, "a tiny orange triangle at the bottom")


def test_judge_without_an_object():
    blank = np.full((64, 64, 3), 230, dtype=np.uint8)
    verdict = judge(blank, "a small red circle on the left")
    assert verdict.observed == dict.fromkeys(ATTRIBUTES) and verdict.scores["alignment"] == 1.0
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert set(judge(noise, "a small red circle on the left").scores) == set(DEFAULT_DIMENSIONS)


def test_scores_are_on_the_bins():
    rendered = render("a large yellow square on the left", seed=2)
    for kind in CORRUPTIONS:
        for score in judge(corrupt(rendered, kind, seed=4).image, rendered.scene.prompt).scores.values():
            assert score in DEFAULT_BINS


def test_annotators_are_reproducible_and_on_the_bins():
    scores = {"alignment": 4.0, "realism": 3.0, "aesthetics": 4.5, "plausibility": 5.0}
    first = AnnotatorPanel(seed=3).rate(scores, seed=9)
    assert first == AnnotatorPanel(seed=3).rate(scores, seed=9)
    assert first != AnnotatorPanel(seed=3).rate(scores, seed=10)
    assert set(first.ratings) == set(DEFAULT_DIMENSIONS)
    assert all(len(r) == 5 and set(r) <= set(DEFAULT_BINS) for r in first.ratings.values())
    dist = first.distributions()["realism"]
    torch.testing.assert_close(dist.probs.sum(), torch.tensor(1.0))
    assert dist.mean.item() == pytest.approx(first.mean()["realism"])


def test_annotator_noise_is_largest_on_aesthetics():
    panel = AnnotatorPanel(num_raters=200, seed=0)
    ratings = panel.rate(dict.fromkeys(DEFAULT_DIMENSIONS, 3.0), seed=1).ratings
    spread = {d: np.std(r) for d, r in ratings.items()}
    assert spread["aesthetics"] > max(spread["alignment"], spread["realism"], spread["plausibility"])


def test_preferences_with_human_ties():
    panel = AnnotatorPanel(tie_threshold=0.25)
    high = Ratings(dict.fromkeys(DEFAULT_DIMENSIONS, [5.0, 4.5, 4.5, 4.5]))  # mean 4.625
    close = Ratings(dict.fromkeys(DEFAULT_DIMENSIONS, [4.5, 4.5, 4.5, 4.5]))  # 0.125 lower: a tie
    low = Ratings(dict.fromkeys(DEFAULT_DIMENSIONS, [3.0, 3.5, 3.5, 3.0]))
    assert panel.prefer(high, close).winner == "tie"
    assert panel.prefer(high, low).winner == "a" and panel.prefer(low, high).winner == "b"
    # A noiseless panel prefers a clean image to its corrupted copy, and ties an image with itself.
    quiet = AnnotatorPanel(bias_std=dict.fromkeys(DEFAULT_DIMENSIONS, 0.0), noise_std=dict.fromkeys(DEFAULT_DIMENSIONS, 0.0))
    rendered = render("a large green circle at the top", seed=0)
    prompt = rendered.scene.prompt
    assert quiet.compare(rendered.image, corrupt(rendered, "wrong_shape", seed=0).image, prompt, seed=0).winner == "a"
    assert quiet.compare(rendered.image, rendered.image, prompt, seed=0).winner == "tie"


def test_cli_judge_prints_one_line_per_image_and_a_summary(tmp_path, capsys):
    from PIL import Image

    lines = []
    for i, prompt in enumerate(["a small red circle on the left", "a large blue square at the top"]):
        Image.fromarray(render(prompt, seed=i).image).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "prompt": prompt}))
    lines.append(json.dumps({"image": "0.png", "prompt": "a large green triangle at the bottom"}))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["tinyworld", "judge", "--prompts", str(tmp_path / "prompts.jsonl"), "--images", str(tmp_path)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 4
    assert out[0]["image"] == "0.png" and out[0]["scores"]["alignment"] == 5.0
    assert out[2]["attributes"]["color"] == {"expected": "green", "observed": "red", "correct": False}
    summary = out[3]["summary"]
    assert summary["images"] == 3 and summary["accuracy"]["color"] == pytest.approx(2 / 3)
    assert set(summary["mean_scores"]) == set(DEFAULT_DIMENSIONS)


def test_cli_judge_reports_a_missing_image_in_one_line(tmp_path, capsys):
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"image": "nope.png", "prompt": "a small red circle on the left"}))
    assert main(["tinyworld", "judge", "--prompts", str(tmp_path / "prompts.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope.png" in err and "does not exist" in err and "\n" not in err
