"""Reward-model data (JSONL formats, soft labels, bad input), the TinyWorld generator and reward evaluation."""

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from zr_align.cli import main
from zr_align.reward_training.data import PreferencePairs, RatedImages, collate
from zr_align.reward_training.evaluate import evaluate_scorer, format_table, load_scorer
from zr_align.rewards import RewardOutput
from zr_align.rewards.loading import load_image
from zr_align.scores import DEFAULT_BINS, ScoreDistribution
from zr_align.tinyworld.grammar import split_prompts
from zr_align.tinyworld.judge import judge
from zr_align.tinyworld.rationale import RATIONALE_WORDS, rationale_text
from zr_align.tinyworld.render import render
from zr_align.tinyworld.reward_data import make_reward_data

DIMS = ("alignment", "realism", "aesthetics", "plausibility")


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def image_dir(tmp_path):
    """Two 64x64 PNGs next to where the JSONL files go."""
    for name, prompt in (("a.png", "a large red circle on the left"), ("b.png", "a small blue square at the top")):
        Image.fromarray(render(prompt, seed=0).image).save(tmp_path / name)
    return tmp_path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A small generated TinyWorld test split: 6 prompts x 6 images, 6 pairs per prompt."""
    out = tmp_path_factory.mktemp("reward_data")
    stats = make_reward_data(out, "test", images_per_prompt=6, seed=0, num_prompts=6)
    return out, stats


# ----- formats and soft labels -------------------------------------------------------------------------------------
def test_soft_labels_from_ratings_mean_std_and_score(image_dir):
    path = write_jsonl(image_dir / "rated.jsonl", [
        {"image": "a.png", "prompt": "a large red circle on the left", "ratings": {"alignment": [3, 3, 4]},
         "mean": {"realism": 3.3}, "std": {"realism": 0.5}, "score": {"aesthetics": 4.25},
         "rationale": {"alignment": "color red yes"}, "source": "render", "split": "train"},
    ])
    data = RatedImages(path)
    assert data.dimensions == ("alignment", "realism", "aesthetics")
    item = data[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    bins = list(DEFAULT_BINS)
    expected = torch.zeros(9)
    expected[bins.index(3.0)], expected[bins.index(4.0)] = 2 / 3, 1 / 3
    torch.testing.assert_close(item["labels"]["alignment"], expected)
    assert item["mean"]["alignment"] == pytest.approx(10 / 3)
    # mean + std: a discretised Gaussian whose mean is exactly the given mean
    realism = ScoreDistribution(item["labels"]["realism"].double(), DEFAULT_BINS)
    assert realism.mean.item() == pytest.approx(3.3, abs=1e-5) and realism.std.item() > 0.3
    # one score: two-bin interpolation, 4.25 -> half on 4.0, half on 4.5
    aesthetics = item["labels"]["aesthetics"]
    assert aesthetics[bins.index(4.0)] == pytest.approx(0.5) and aesthetics[bins.index(4.5)] == pytest.approx(0.5)
    assert item["rationale"] == {"alignment": "color red yes"} and item["source"] == "render"


def test_repeated_rating_lists_give_equal_separate_labels_and_stay_checked(image_dir):
    line = {"image": "a.png", "prompt": "p", "ratings": {"alignment": [3.0, 3.0, 4.0]}}
    data = RatedImages(write_jsonl(image_dir / "rated.jsonl", [line, line, {**line, "ratings": {"alignment": [4, 3]}}]))
    first, second = data.items[0]["labels"]["alignment"], data.items[1]["labels"]["alignment"]
    assert torch.equal(first, second) and first.data_ptr() != second.data_ptr()  # one histogram, copied per item
    assert data.items[2]["labels"]["alignment"][DEFAULT_BINS.index(4.0)] == 0.5
    # a list seen before with another type is checked again: `true` is not the rating 1.0
    bad = [{**line, "ratings": {"alignment": [1.0, 5.0]}}, {**line, "ratings": {"alignment": [True, 5.0]}}]
    with pytest.raises(ValueError, match="line 2: rating of alignment must be a finite number, got True"):
        RatedImages(write_jsonl(image_dir / "bad.jsonl", bad))


def test_pairs_round_trip_and_collate(image_dir):
    path = write_jsonl(image_dir / "pairs.jsonl", [
        {"prompt": "p", "image_a": "a.png", "image_b": "b.png", "preference": "a", "margin": 0.75,
         "mean_a": {"alignment": 5.0}, "mean_b": {"alignment": 4.0}},
        {"prompt": "p", "image_a": "b.png", "image_b": "a.png", "preference": "tie", "margin": 0.1,
         "mean_a": {"alignment": 4.0}, "mean_b": {"alignment": 4.1}},
        {"prompt": "q", "image_a": "b.png", "image_b": "a.png", "preference": "b"},
    ])
    pairs = PreferencePairs(path)
    assert len(pairs) == 3
    torch.testing.assert_close(pairs.labels, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert math.isnan(pairs[2]["margin"]) and pairs[2]["mean_a"] is None
    batch = collate([pairs[0], pairs[1]])
    assert batch["images_a"].shape == (2, 3, 64, 64)
    torch.testing.assert_close(batch["labels"], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(batch["mean_a"]["alignment"], torch.tensor([5.0, 4.0]))
    assert collate([pairs[0], pairs[2]])["mean_a"] is None  # not every pair has human means


def test_rated_images_are_decoded_once_and_equal_the_files(generated):
    out, _ = generated
    files = [load_image(p) for p in [item["path"] for item in RatedImages(out / "rated.jsonl").items][:6]]
    cached = RatedImages(out / "rated.jsonl")
    for _ in range(2):  # the second pass reads the cache
        for i, image in enumerate(files):
            assert torch.equal(cached[i]["image"], image)
    assert cached._held == 6 * 3 * 64 * 64  # 8-bit, one copy per image
    capped = RatedImages(out / "rated.jsonl", cache_bytes=2 * 3 * 64 * 64)
    assert all(torch.equal(capped[i]["image"], files[i]) for i in range(6)) and capped._held == 2 * 3 * 64 * 64
    off = RatedImages(out / "rated.jsonl", cache_bytes=0)
    assert torch.equal(off[0]["image"], files[0]) and off._held == 0


def test_generated_files_round_trip(generated):
    out, stats = generated
    rated = RatedImages(out / "rated.jsonl")
    pairs = PreferencePairs(out / "pairs.jsonl")
    assert len(rated) == stats["images"] == 36 and len(pairs) == stats["pairs"] == 36
    assert rated.dimensions == DIMS
    batch = collate([rated[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 64, 64)
    assert set(batch["labels"]) == set(DIMS) and batch["labels"]["alignment"].shape == (4, 9)
    torch.testing.assert_close(batch["labels"]["realism"].sum(-1), torch.ones(4))
    # The soft label is the histogram of the 5 ratings, the human mean their mean.
    line = json.loads((out / "rated.jsonl").read_text().splitlines()[0])
    ratings = line["ratings"]["aesthetics"]
    torch.testing.assert_close(rated[0]["labels"]["aesthetics"],
                               ScoreDistribution.from_ratings(ratings).probs.float())
    assert rated[0]["mean"]["aesthetics"] == pytest.approx(np.mean(ratings))
    assert set(rated[0]["rationale"]) == set(DIMS)


# ----- bad input -----------------------------------------------------------------------------------------------------
GOOD_RATED = {"image": "a.png", "prompt": "p", "ratings": {"alignment": [4.0, 4.5]}}


@pytest.mark.parametrize("line, match", [
    ({**GOOD_RATED, "ratings": {"alignment": [4.0, 4.2]}}, r"line 2: rating 4.2 of alignment is not one of the bins "
                                                         r"\[1.0, 1.5, .*5.0\]"),
    ({**GOOD_RATED, "ratings": {"alignment": [4.0, 6.0]}}, "line 2: rating 6 of alignment is not one of the bins"),
    ({**GOOD_RATED, "image": "missing.png"}, r"line 2: image file .*missing.png does not exist"),
    ({"image": "a.png", "ratings": {"alignment": [4.0]}}, r"line 2 lacks field\(s\) \['prompt'\]"),
    ({"image": "a.png", "prompt": "p", "score": {"realism": 3.0}}, "line 2 has no label for dimension 'alignment'"),
    ({"image": "a.png", "prompt": "p", "mean": {"alignment": 3.0}}, "line 2: 'mean' of alignment needs a 'std'"),
    ({"image": "a.png", "prompt": "p", "score": {"alignment": 7.0}}, "line 2: alignment: score 7 is outside"),
    ("{not json", "line 2 is not valid JSON"),
])
def test_rated_bad_input(image_dir, line, match):
    path = write_jsonl(image_dir / "rated.jsonl", [GOOD_RATED, line])
    with pytest.raises(ValueError, match=match):
        RatedImages(path)


GOOD_PAIR = {"prompt": "p", "image_a": "a.png", "image_b": "b.png", "preference": "a", "margin": 0.5}


@pytest.mark.parametrize("line, match", [
    ({**GOOD_PAIR, "image_b": "gone.png"}, r"line 2: image_b file .*gone.png does not exist"),
    ({k: v for k, v in GOOD_PAIR.items() if k != "preference"}, r"line 2 lacks field\(s\) \['preference'\]"),
    ({**GOOD_PAIR, "preference": "A"}, r"line 2: preference must be one of \['a', 'b', 'tie'\], got 'A'"),
    ({**GOOD_PAIR, "margin": "big"}, "line 2: margin must be a finite number"),
])
def test_pairs_bad_input(image_dir, line, match):
    path = write_jsonl(image_dir / "pairs.jsonl", [GOOD_PAIR, line])
    with pytest.raises(ValueError, match=match):
        PreferencePairs(path)


@pytest.mark.parametrize("dataset", [RatedImages, PreferencePairs])
def test_empty_or_missing_file(tmp_path, dataset):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        dataset(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="nope.jsonl does not exist"):
        dataset(tmp_path / "nope.jsonl")


def test_collate_rejects_mixed_sizes(image_dir):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image_dir / "small.png")
    path = write_jsonl(image_dir / "rated.jsonl", [GOOD_RATED, {**GOOD_RATED, "image": "small.png"}])
    data = RatedImages(path)
    with pytest.raises(ValueError, match="must share one size"):
        collate([data[0], data[1]])


# ----- the TinyWorld generator ------------------------------------------------------------------------------------
def test_generator_is_deterministic(generated, tmp_path):
    out, stats = generated
    again = make_reward_data(tmp_path, "test", images_per_prompt=6, seed=0, num_prompts=6)
    assert again == stats
    for name in ("rated.jsonl", "pairs.jsonl", "stats.json", "images/0003_04.png"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    other = make_reward_data(tmp_path / "other", "test", images_per_prompt=6, seed=1, num_prompts=6)
    assert (tmp_path / "other" / "pairs.jsonl").read_bytes() != (out / "pairs.jsonl").read_bytes()
    assert other["images"] == 36


def test_generator_mix_ties_and_rationales(generated):
    out, stats = generated
    sources = stats["images_by_source"]
    assert sources["render"] == 12  # 2 clean renders of each of 6 prompts
    assert sum(v for k, v in sources.items() if k.startswith("corrupt:")) == 24
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    preferences = {p["preference"] for p in pairs}
    assert preferences == {"a", "b", "tie"}  # ties are kept
    assert stats["preferences"]["tie"] == sum(p["preference"] == "tie" for p in pairs) > 0
    assert all(p["image_a"][:11] == p["image_b"][:11] for p in pairs)  # same prompt, same image prefix
    rated = [json.loads(line) for line in (out / "rated.jsonl").read_text().splitlines()]
    words = {w for line in rated for text in line["rationale"].values() for w in text.split()}
    assert words <= set(RATIONALE_WORDS)
    assert {"yes", "no"} <= words


def test_splits_are_disjoint(tmp_path):
    splits = split_prompts(0)
    seen = {}
    for split in ("train", "test"):
        make_reward_data(tmp_path / split, split, images_per_prompt=2, seed=7, num_prompts=5)
        lines = (tmp_path / split / "rated.jsonl").read_text().splitlines()
        seen[split] = {json.loads(line)["prompt"] for line in lines}
    assert seen["test"] <= set(splits.test) and seen["train"] <= set(splits.train)
    assert not seen["train"] & seen["test"]


def test_generator_with_sft_samples(tmp_path):
    from zr_align.tiny.diffusion import tiny_pipeline

    tiny_pipeline("sd", tmp_path / "sft")
    stats = make_reward_data(tmp_path / "data", "validation", images_per_prompt=4, seed=0,
                             sft_model=str(tmp_path / "sft"), sft_fraction=0.5, num_prompts=2, sample_steps=2)
    assert stats["images_by_source"]["sft_sample"] == 4  # 2 of 4 images per prompt
    assert len(RatedImages(tmp_path / "data" / "rated.jsonl")) == 8


def test_swapped_sft_samples_come_from_a_prompt_one_attribute_away(tmp_path):
    from zr_align.tiny.diffusion import tiny_pipeline
    from zr_align.tinyworld.grammar import ATTRIBUTES, parse_prompt
    from zr_align.tinyworld.reward_data import _sft_prompts

    prompts = split_prompts(0).train
    plain = _sft_prompts(prompts, 4, seed=3, swap=0.0)
    assert plain == [p for p in prompts for _ in range(4)]
    drawn = _sft_prompts(prompts, 4, seed=3, swap=0.5)
    assert drawn == _sft_prompts(prompts, 4, seed=3, swap=0.5)  # seeded
    swapped = [(rated, source) for rated, source in zip(plain, drawn) if rated != source]
    assert 0.4 < len(swapped) / len(drawn) < 0.6
    for rated, source in swapped:  # a prompt of the same split, exactly one attribute changed
        assert source in prompts
        a, b = parse_prompt(rated), parse_prompt(source)
        assert sum(getattr(a, x) != getattr(b, x) for x in ATTRIBUTES) == 1
    changed = {x for rated, source in swapped for x in ATTRIBUTES
               if getattr(parse_prompt(rated), x) != getattr(parse_prompt(source), x)}
    assert changed == set(ATTRIBUTES)

    tiny_pipeline("sd", tmp_path / "sft")
    args = dict(images_per_prompt=2, seed=0, sft_model=str(tmp_path / "sft"), sft_fraction=0.5, sample_steps=2,
                recipe="perception")
    base = make_reward_data(tmp_path / "base", "validation", **args)
    stats = make_reward_data(tmp_path / "swap", "validation", sft_swap=1.0, **args)
    rated = {name: [json.loads(line) for line in (tmp_path / name / "rated.jsonl").read_text().splitlines()]
             for name in ("base", "swap")}
    validation = split_prompts(0).validation
    expected = sum(a != b for a, b in zip(_sft_prompts(validation, 1, 0, 0.0), _sft_prompts(validation, 1, 0, 1.0)))
    assert expected > 0 and stats["images_by_source"]["swap"] == expected  # every prompt with a neighbour swaps
    assert "swap" not in base["images_by_source"] and stats["sft_swap"] == 1.0 and "sft_swap" not in base
    # the same rated prompts and renders; only the swapped SFT samples differ, judged against the line's prompt
    assert [r["prompt"] for r in rated["swap"]] == [r["prompt"] for r in rated["base"]]
    for a, b in zip(rated["base"], rated["swap"]):
        same = np.array_equal(np.asarray(Image.open(tmp_path / "base" / a["image"])),
                              np.asarray(Image.open(tmp_path / "swap" / b["image"])))
        assert same == (b["source"] != "sft_sample+swap")
        if b["source"] == "sft_sample+swap":
            assert b["rationale"]["alignment"] == rationale_text(judge(
                np.asarray(Image.open(tmp_path / "swap" / b["image"])), b["prompt"]), "alignment")
    with pytest.raises(ValueError, match=r"sft_swap must be in \[0, 1\], got 1.5"):
        make_reward_data(tmp_path / "bad", "train", sft_swap=1.5, **args)


def test_decoder_roundtrip_sends_drawn_images_through_the_vae_and_leaves_the_rest(tmp_path):
    from zr_align.tiny.diffusion import tiny_pipeline
    from zr_align.tinyworld.sample import decode_roundtrip, load_pipeline

    tiny_pipeline("sd", tmp_path / "sft")
    args = dict(images_per_prompt=4, seed=0, sft_model=str(tmp_path / "sft"), sft_fraction=0.25, sample_steps=2,
                recipe="perception", num_prompts=6)
    runs = {name: make_reward_data(tmp_path / name, "validation", decoder_roundtrip=share, **args)
            for name, share in (("base", 0.0), ("all", 1.0), ("half", 0.5))}
    rated = {name: [json.loads(line) for line in (tmp_path / name / "rated.jsonl").read_text().splitlines()]
             for name in runs}
    pixels = {name: [np.asarray(Image.open(tmp_path / name / r["image"])) for r in rated[name]] for name in runs}
    pipe = load_pipeline(tmp_path / "sft")
    drawn = [i for i, r in enumerate(rated["base"]) if not r["source"].startswith("sft_sample")]
    assert len(drawn) == 18 and "decoder_roundtrip" not in runs["base"] and runs["all"]["decoder_roundtrip"] == 1.0
    assert runs["all"]["images_by_source"]["decoded"] == 18
    expected = decode_roundtrip(pipe, np.stack([pixels["base"][i] for i in drawn]))
    assert max(np.abs(e.astype(int) - pixels["base"][i]).max() for e, i in zip(expected, drawn)) > 20  # changed
    for i, row in enumerate(rated["all"]):
        base = rated["base"][i]
        assert row["prompt"] == base["prompt"]
        if i in drawn:  # the same drawn image, decoded, and labelled by what the judge reads on the decoded one
            assert row["source"] == base["source"] + "+decoded"
            # decoded in other batches: the float sums may differ in the last bit, so one level of rounding
            assert np.abs(pixels["all"][i].astype(int) - expected[drawn.index(i)]).max() <= 1
            assert row["rationale"]["alignment"] == rationale_text(judge(pixels["all"][i], row["prompt"]),
                                                                   "alignment")
        else:  # the generator's samples are untouched
            assert row["source"] == base["source"] == "sft_sample" and np.array_equal(pixels["all"][i],
                                                                                      pixels["base"][i])
    decoded = [i for i, r in enumerate(rated["half"]) if r["source"].endswith("+decoded")]
    assert 4 <= len(decoded) <= 14 and set(decoded) <= set(drawn)
    for i in set(range(len(rated["half"]))) - set(decoded):  # its own random stream: the rest is the base build
        assert np.array_equal(pixels["half"][i], pixels["base"][i]) and rated["half"][i] == rated["base"][i]
    with pytest.raises(ValueError, match=r"decoder_roundtrip needs the SFT model's VAE \(sft_model, --sft-model"):
        make_reward_data(tmp_path / "bad", "train", 2, 0, decoder_roundtrip=0.5)
    with pytest.raises(ValueError, match=r"decoder_roundtrip must be in \[0, 1\], got 2"):
        make_reward_data(tmp_path / "bad", "train", decoder_roundtrip=2, **args)


def test_raw_artefacts_keep_their_images_out_of_the_decoder_and_the_other_coins_as_they_were(tmp_path):
    from zr_align.tiny.diffusion import tiny_pipeline

    tiny_pipeline("sd", tmp_path / "sft")
    args = dict(images_per_prompt=6, seed=1, sft_model=str(tmp_path / "sft"), sft_fraction=0.0, recipe="perception",
                num_prompts=8, artefact_rates={"blur": 0.5, "noise": 0.3})
    runs = {name: make_reward_data(tmp_path / name, "validation", decoder_roundtrip=share, raw_artefacts=raw, **args)
            for name, share, raw in (("base", 0.0, ()), ("half", 0.5, ()), ("raw", 0.5, ("blur",)))}
    rated = {name: [json.loads(line) for line in (tmp_path / name / "rated.jsonl").read_text().splitlines()]
             for name in runs}
    blurred = {i for i, r in enumerate(rated["base"]) if "+blur" in r["source"]}
    decoded = {name: {i for i, r in enumerate(rated[name]) if r["source"].endswith("+decoded")} for name in runs}
    assert 10 <= len(blurred) <= 38 and decoded["half"] & blurred and decoded["half"] - blurred  # both kinds drawn
    assert decoded["raw"] == decoded["half"] - blurred  # the same coins; the blurred images keep theirs unspent
    for i in blurred | set(range(len(rated["raw"]))) - decoded["raw"]:  # left as drawn: the base build's row
        assert rated["raw"][i] == rated["base"][i]
        assert np.array_equal(np.asarray(Image.open(tmp_path / "raw" / rated["raw"][i]["image"])),
                              np.asarray(Image.open(tmp_path / "base" / rated["base"][i]["image"])))
    assert runs["raw"]["raw_artefacts"] == ["blur"] and "raw_artefacts" not in runs["half"]
    with pytest.raises(ValueError, match=r"raw_artefacts: wrong_shape is not an artefact corruption; allowed: blur"):
        make_reward_data(tmp_path / "bad", "train", decoder_roundtrip=0.5, raw_artefacts=("wrong_shape",), **args)


def test_the_shipped_decoder_keeps_what_a_render_shows():
    """A render through the shipped SFT model's VAE: soft edges, the same object (size, colour, position)."""
    from zr_align.tinyworld.sample import decode_roundtrip, load_pipeline

    prompts = split_prompts(0).test[:8]
    renders = np.stack([render(p, seed=i).image for i, p in enumerate(prompts)])
    decoded = decode_roundtrip(load_pipeline("models/tinyworld/sft"), renders, batch_size=3)
    assert decoded.shape == renders.shape and decoded.dtype == np.uint8
    gap = np.abs(decoded.astype(int) - renders.astype(int))
    assert 0.2 < gap.mean() < 8 and gap.max() >= 10  # changed a little (most at the edges), not redrawn
    for prompt, image in zip(prompts, decoded):
        correct = judge(image, prompt).correct
        assert correct["size"] and correct["color"] and correct["position"], (prompt, correct)


def test_generator_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_reward_data(tmp_path, "dev", 4, 0)
    with pytest.raises(ValueError, match="images_per_prompt must be >= 2"):
        make_reward_data(tmp_path, "train", 1, 0)


# ----- evaluation ---------------------------------------------------------------------------------------------------
def oracle_scorer(images, prompts):
    """The ground-truth judge as a reward: its scores as one-bin-ish distributions, reward = mean judge score."""
    verdicts = [judge(image, prompt) for image, prompt in zip(images, prompts)]
    scores = {d: ScoreDistribution.from_score(torch.tensor([v.scores[d] for v in verdicts])) for d in DIMS}
    return RewardOutput(torch.stack([s.mean for s in scores.values()]).mean(0), scores)


def constant_scorer(images, prompts):
    probs = torch.full((len(prompts), 9), 1 / 9)
    return RewardOutput(torch.full((len(prompts),), 3.0), {d: ScoreDistribution(probs, DEFAULT_BINS) for d in DIMS})


METRICS = ("pairs", "decided_pairs", "pairwise_accuracy", "tie_aware_accuracy", "rated", "spearman",
           "spearman_per_dim", "ece", "ece_per_dim", "nll", "images_per_second")


def test_oracle_beats_constant(generated):
    out, _ = generated
    pairs, rated = PreferencePairs(out / "pairs.jsonl"), RatedImages(out / "rated.jsonl")
    oracle = evaluate_scorer(oracle_scorer, pairs, rated, batch_size=8)
    constant = evaluate_scorer(constant_scorer, pairs, rated, batch_size=8)
    assert oracle["pairwise_accuracy"] > 0.9
    assert oracle["spearman"] > 0.8
    assert constant["pairwise_accuracy"] == pytest.approx(0.5)
    assert math.isnan(constant["spearman"])  # constant predictions: undefined rank correlation
    assert oracle["tie_aware_accuracy"] > constant["tie_aware_accuracy"]


def test_evaluate_tiny_reward_model(generated, tiny_reward_dirs):
    out, _ = generated
    scorer = load_scorer(tiny_reward_dirs("qwen2_vl"))
    results = evaluate_scorer(scorer, PreferencePairs(out / "pairs.jsonl"), RatedImages(out / "rated.jsonl"),
                              batch_size=16)
    for key in METRICS:
        assert results[key] is not None, key
    assert 0.0 <= results["pairwise_accuracy"] <= 1.0 and 0.0 <= results["ece"] <= 1.0
    assert set(results["ece_per_dim"]) == set(DIMS) and results["images_per_second"] > 0
    assert results["pairs"] == 36 and results["rated"] == 36
    table = format_table({"tiny": results, "oracle": {"pairs": 36, "pairwise_accuracy": 0.95}})
    assert table.splitlines()[0].split() == ["reward", "pairs", "acc", "tie-acc", "spearman", "ECE", "NLL", "img/s"]
    assert table.splitlines()[3].split()[:3] == ["oracle", "36", "0.950"]


def test_load_scorer_errors(tmp_path, tiny_reward_dirs):
    with pytest.raises(ValueError, match="has no zreward_config.json"):
        load_scorer(tmp_path)
    with pytest.raises(ValueError, match="mode must be one of greedy, sample"):
        load_scorer(tiny_reward_dirs("qwen2_vl"), mode="beam")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
        load_scorer(tiny_reward_dirs("qwen2_vl"), colour=1)


def test_cli_reward_eval_prints_table(generated, tiny_reward_dirs, capsys, tmp_path):
    out, _ = generated
    folder = str(tiny_reward_dirs("qwen2_vl"))
    code = main(["reward", "eval", "--reward", folder, "--data", str(out / "pairs.jsonl"),
                 "--rated", str(out / "rated.jsonl"), "--batch-size", "12", "--json", str(tmp_path / "r.json")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["reward", "pairs", "acc"] and lines[2].startswith(folder)
    assert json.loads((tmp_path / "r.json").read_text())[folder]["pairs"] == 36
    assert main(["reward", "eval", "--reward", folder, "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl does not exist" in capsys.readouterr().err


def test_build_rewards_takes_an_artefact_mix_and_refuses_a_bad_one_before_any_work(tmp_path, capsys):
    from zr_align.recipes.build_rewards import artefact_mix
    from zr_align.tinyworld.reward_data import ARTEFACT_RATES

    assert artefact_mix([]) is None  # the shipped mix
    mix = artefact_mix(["object_cast=0.2", "blur=0.5"])
    assert mix == {**ARTEFACT_RATES, "object_cast": 0.2, "blur": 0.5}
    # the shipped kinds keep their draw order; a new one follows its predecessor in CORRUPTIONS (as the ensemble's
    # object-cast member was built)
    assert list(mix) == ["blur", "noise", "color_shift", "object_cast", "crop", "fragments", "low_contrast", "clutter"]
    for bad, message in (("sparkle=0.1", "unknown artefact 'sparkle'"), ("wrong_color=0.1", "unknown artefact"),
                         ("blur=1.5", "rate in [0, 1]"), ("blur", "rate in [0, 1]"), ("blur=x", "rate in [0, 1]")):
        with pytest.raises(ValueError, match=re.escape(message)):
            artefact_mix([bad])
        args = ["tinyworld", "build-rewards", "--artefact-rate", bad, "--work-dir", str(tmp_path / "work"),
                "--out", str(tmp_path / "out"), "--docs", ""]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message.split("'")[0] in err and "\n" not in err
        assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_ship_models_copies_the_student_only_for_an_ensemble_member(tmp_path):
    from zr_align.recipes.build_rewards import ship_models

    work, out = tmp_path / "work", tmp_path / "out"
    for run in ("gdso", "risd_long"):
        (work / run / "model").mkdir(parents=True)
        (work / run / "model" / "model.safetensors").write_text(run)
    ship_models(work, out / "member", "gdso", ship=("student",))
    assert sorted(p.name for p in (out / "member").iterdir()) == ["student"]
    assert (out / "member" / "student" / "model.safetensors").read_text() == "risd_long"
    ship_models(work, out / "main", "gdso")
    assert (out / "main" / "teacher" / "model.safetensors").read_text() == "gdso"
    assert (out / "main" / "student" / "model.safetensors").read_text() == "risd_long"
    with pytest.raises(ValueError, match="'critic'"):
        ship_models(work, out / "main", "gdso", ship=("critic",))
    from zr_align.recipes.build_rewards import build_reward_models

    with pytest.raises(ValueError, match="'critic'"):  # refused before any data or training
        build_reward_models(tmp_path / "build", out / "never", sft_model=None, docs=None, ship=("critic",))
    assert not (tmp_path / "build").exists() and not (out / "never").exists()
    ship_models(work, out / "reader", "gdso", ship=("teacher",))
    assert sorted(p.name for p in (out / "reader").iterdir()) == ["teacher"]
    bad = [({"sft_fraction": 1.0}, r"sft_fraction must be in \[0, 1\), got 1.0"),
           ({"free_layout": -0.1}, r"free_layout must be in \[0, 1\], got -0.1"),
           ({"teacher_init": "tinyworld:student"}, "is a student; use tinyworld:teacher"),
           ({"teacher_init": "tinyworld:teacher:flat"}, "optionally followed by the rotary layout")]
    for kwargs, message in bad:  # the recipe, too, is refused before any work
        with pytest.raises(ValueError, match=message):
            build_reward_models(tmp_path / "build", out / "never", sft_model=None, docs=None, **kwargs)
        assert not (tmp_path / "build").exists()


def test_the_shipped_teacher_is_the_better_on_validation_or_the_one_named(tmp_path, capsys):
    from zr_align.recipes.build_rewards import build_reward_models, pick_teacher

    scores = {"teacher_sft": 0.93, "gdso": 0.92}
    assert pick_teacher(scores) == "teacher_sft"
    assert pick_teacher({"teacher_sft": 0.91, "gdso": 0.92}, "validation") == "gdso"
    assert pick_teacher(scores, "gdso") == "gdso" and pick_teacher(scores, "teacher_sft") == "teacher_sft"
    with pytest.raises(ValueError, match="teacher_choice must be one of validation, teacher_sft, gdso, got 'grpo'"):
        pick_teacher(scores, "grpo")
    with pytest.raises(ValueError, match="teacher_choice must be one of"):  # refused before any data or training
        build_reward_models(tmp_path / "build", tmp_path / "never", sft_model=None, docs=None, teacher_choice="best")
    assert not (tmp_path / "build").exists()
    assert main(["tinyworld", "build-rewards", "--teacher-choice", "best", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("zr-align tinyworld: error: teacher_choice must be one of validation, teacher_sft, gdso, "
                   "got 'best'") and not (tmp_path / "w").exists()


def test_a_teacher_only_build_trains_no_student():
    from zr_align.recipes.build_rewards import RUNS, planned_runs

    names = lambda runs: [name for name, _ in runs]  # noqa: E731
    assert names(planned_runs(False, ("teacher",))) == ["teacher_sft", "gdso"]
    assert names(planned_runs(False, ("student",))) == ["teacher_sft", "gdso", "risd_long"]
    assert names(planned_runs(False, ("teacher", "student"))) == ["teacher_sft", "gdso", "risd_long"]
    assert planned_runs(True, ("teacher",)) == RUNS  # the table's build trains every baseline whatever ships
    for ship in (("teacher",), ("student",)):  # each run keeps its own config file
        assert all((name, file) in RUNS for name, file in planned_runs(False, ship))


def test_build_rewards_cli_takes_the_recipe_and_ships_one_model(capsys):
    from zr_align.cli import main

    with pytest.raises(SystemExit):
        main(["tinyworld", "build-rewards", "--student-only", "--teacher-only"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["tinyworld", "build-rewards", "--free-layout", "2", "--work-dir", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["zr-align tinyworld: error: free_layout must be in [0, 1], got 2.0; e.g. 0.3"]
    assert main(["tinyworld", "build-rewards", "--sft-swap", "-1", "--work-dir", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "zr-align tinyworld: error: sft_swap must be in [0, 1], got -1.0; e.g. 0.3"
    assert main(["tinyworld", "build-rewards", "--decoder-roundtrip", "1.5", "--work-dir", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "zr-align tinyworld: error: decoder_roundtrip must be in [0, 1], got 1.5; e.g. 0.3"
    assert main(["tinyworld", "build-rewards", "--decoder-roundtrip", "0.5", "--sft-model", "/nonexistent/sft",
                 "--work-dir", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zr-align tinyworld: error: decoder_roundtrip needs the SFT model's VAE") and "\n" not in err
    assert main(["tinyworld", "build-rewards", "--raw-artefact", "wrong_size", "--work-dir", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zr-align tinyworld: error: raw_artefacts: wrong_size is not an artefact corruption; allowed:")
    assert "\n" not in err
