"""`zr-align compare`: TinyWorld-family models sampled on the same prompts and seeds, judged, compared pairwise
with bootstrap intervals; resumable samples; one-line errors for bad input. Tiny random pipelines, 4 steps."""

import json
import re

import numpy as np
import pytest
import torch

from zr_align.cli import main
from zr_align.lora import add_lora, save_lora
from zr_align.tiny.diffusion import tiny_pipeline
from zr_align.tinyworld import compare
from zr_align.tinyworld.compare import ModelSpec, bootstrap_ratio, compare_models

PROMPTS = ["a large red circle on the left", "a small blue square at the top", "a large green triangle in the center"]
FAST = dict(steps=4, batch_size=4, progress=False)


def _lora(family: str, out, seed: int):
    """A LoRA on a tiny `family` pipeline's UNet whose up-projections are random (peft starts them at zero)."""
    pipe = tiny_pipeline(family)
    config = add_lora(pipe.unet, family, rank=4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    save_lora(out, type(pipe), pipe.unet, config)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny `sd` pipeline folder, two LoRAs for it, an `sdxl` folder and an `sdxl` LoRA, prompt files."""
    root = tmp_path_factory.mktemp("compare")
    tiny_pipeline("sd", root / "sd")
    tiny_pipeline("sdxl", root / "sdxl")
    paths = {"sd": root / "sd", "sdxl": root / "sdxl", "lora": _lora("sd", root / "lora", seed=0),
             "lora2": _lora("sd", root / "lora2", seed=1), "sdxl_lora": _lora("sdxl", root / "sdxl_lora", seed=0)}
    for n in (2, 3):
        (root / f"p{n}.txt").write_text("\n".join(PROMPTS[:n]) + "\n")
        paths[f"p{n}"] = root / f"p{n}.txt"
    return {k: str(v) for k, v in paths.items()}


def _index(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_compare_samples_judges_and_compares_with_intervals(tiny, tmp_path):
    models = [ModelSpec("base", tiny["sd"]), ModelSpec("tuned", tiny["sd"], tiny["lora"])]
    result = compare_models(models, tmp_path, prompts=tiny["p3"], num_images=7, **FAST)
    records = _index(tmp_path / "samples" / "tuned")
    assert [set(r) for r in records] == [{"file", "prompt", "seed", "model"}] * 7
    assert [r["prompt"] for r in records] == [PROMPTS[i % 3] for i in range(7)]  # image i: prompt i mod P
    assert [r["seed"] for r in records] == list(range(10_000, 10_007)) and records[0]["model"] == "tuned"
    base = compare.load_samples(tmp_path / "samples" / "base", 7)
    tuned = compare.load_samples(tmp_path / "samples" / "tuned", 7)
    assert base.shape == tuned.shape == (7, 64, 64, 3) and not np.array_equal(base, tuned)  # the LoRA acts
    (pair,) = result["pairs"]
    assert (pair["candidate"], pair["reference"]) == ("tuned", "base")
    assert pair["good"] + pair["same"] + pair["bad"] == 7
    assert pair["net_interval"]["low"] <= pair["net"] == pair["net_interval"]["value"] <= pair["net_interval"]["high"]
    for entry in result["models"].values():
        assert set(entry["accuracy"]) == {"size", "color", "shape", "position", "all_correct"}
        assert all(a["low"] <= a["value"] <= a["high"] for a in entry["accuracy"].values())
    assert json.loads((tmp_path / "compare.json").read_text()) == result
    assert "| tuned vs base |" in (tmp_path / "compare.md").read_text()


def test_the_same_model_on_the_same_seeds_ties_everywhere(tiny, tmp_path):
    models = [ModelSpec("a", tiny["sd"]), ModelSpec("b", tiny["sd"])]
    result = compare_models(models, tmp_path, prompts=tiny["p3"], num_images=5, **FAST)
    for i in range(5):
        a, b = (tmp_path / "samples" / name / f"{i:05d}.png" for name in "ab")
        assert a.read_bytes() == b.read_bytes()
    (pair,) = result["pairs"]
    assert (pair["good"], pair["bad"], pair["net_interval"]) == (0, 0, {"value": 0.0, "low": 0.0, "high": 0.0})


def test_an_interrupted_compare_resumes_without_regenerating(tiny, tmp_path, monkeypatch):
    real, calls = compare.generate, []

    def counted(pipe, prompts, seed, steps):
        calls.append(seed)
        if calls == [10_000, 10_004] and interrupt:
            raise KeyboardInterrupt  # killed while sampling the second batch
        return real(pipe, prompts, seed=seed, steps=steps)

    monkeypatch.setattr(compare, "generate", counted)
    models, folder = [ModelSpec("tuned", tiny["sd"], tiny["lora"])], tmp_path / "run" / "samples" / "tuned"
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        compare_models(models, tmp_path / "run", prompts=tiny["p3"], num_images=10, **FAST)
    assert len(_index(folder)) == 4
    with open(folder / "samples.jsonl", "a") as index:
        index.write('{"file": "00004.png", "pro')  # a line torn by the kill
    finished = {i: (folder / f"{i:05d}.png").stat().st_mtime_ns for i in range(4)}
    interrupt, calls[:] = False, []
    compare_models(models, tmp_path / "run", prompts=tiny["p3"], num_images=10, **FAST)
    assert calls == [10_004, 10_008]  # only the missing batches
    assert {i: (folder / f"{i:05d}.png").stat().st_mtime_ns for i in range(4)} == finished
    assert [r["seed"] for r in _index(folder)] == list(range(10_000, 10_010))
    compare_models(models, tmp_path / "straight", prompts=tiny["p3"], num_images=10, **FAST)
    for i in range(10):  # the same images as an uninterrupted run
        assert (folder / f"{i:05d}.png").read_bytes() == (tmp_path / "straight" / "samples" / "tuned" /
                                                            f"{i:05d}.png").read_bytes()
    calls[:] = []
    compare_models(models, tmp_path / "run", prompts=tiny["p3"], num_images=10, **FAST)
    assert calls == []  # a finished comparison reruns without sampling


def test_samples_steered_by_other_sampler_weights_are_not_reused(tiny, tmp_path):
    """A guidance arm's samples depend on the reward model that steers it, not only on the pipeline: samples
    steered by other weights are refused (the demo replaces them), the same weights reuse them."""
    calls = []

    def sampler(pipe, prompts, seed, steps):
        calls.append(seed)
        return compare.generate(pipe, prompts, seed=seed, steps=steps)

    def spec(weights):
        return [ModelSpec("steered", tiny["sd"], sampler=sampler, sampler_label="steered", sampler_weights=weights)]

    compare_models(spec(tiny["lora"]), tmp_path, prompts=tiny["p2"], num_images=2, **FAST)
    assert len(calls) == 1
    compare_models(spec(tiny["lora"]), tmp_path, prompts=tiny["p2"], num_images=2, **FAST)
    assert len(calls) == 1  # the same steering weights: reused
    with pytest.raises(ValueError, match="holds samples of another model or sampler"):
        compare_models(spec(tiny["lora2"]), tmp_path, prompts=tiny["p2"], num_images=2, **FAST)
    compare_models(spec(tiny["lora2"]), tmp_path, prompts=tiny["p2"], num_images=2, replace_stale=True, **FAST)
    assert len(calls) == 2  # sampled again


def test_samples_of_another_model_are_refused_or_replaced(tiny, tmp_path):
    compare_models([ModelSpec("m", tiny["sd"], tiny["lora"])], tmp_path, prompts=tiny["p2"], num_images=2, **FAST)
    other = [ModelSpec("m", tiny["sd"], tiny["lora2"])]
    with pytest.raises(ValueError, match="holds samples of another model or sampler"):
        compare_models(other, tmp_path, prompts=tiny["p2"], num_images=2, **FAST)
    with pytest.raises(ValueError, match="other prompts or seeds"):
        compare_models([ModelSpec("m", tiny["sd"], tiny["lora"])], tmp_path, prompts=tiny["p2"], num_images=2,
                       seed=5, **FAST)
    compare_models(other, tmp_path, prompts=tiny["p2"], num_images=2, replace_stale=True, **FAST)
    assert json.loads((tmp_path / "samples" / "m" / "model.json").read_text())["lora"] == tiny["lora2"]


def test_compare_command_with_a_yaml_config(tiny, tmp_path, capsys):
    config = tmp_path / "arms.yaml"
    config.write_text(f"models:\n  base: {{model: {tiny['sd']}}}\n"
                      f"  tuned: {{model: {tiny['sd']}, lora: {tiny['lora']}}}\n"
                      f"prompts: {tiny['p2']}\nnum_images: 4\nsteps: 2\n")
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "out"), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| tuned vs base |" in printed and "noise seeds 3...6" in printed


@pytest.mark.parametrize("case, message", [
    ("missing_lora", "LoRA folder .* does not exist"),
    ("lengths", r"prompt lists differ in length \(.*p3.txt has 3, .*p2.txt has 2\)"),
    ("family", r"is a StableDiffusionXLPipeline \(family sdxl\); compare samples TinyWorld models"),
    ("lora_family", "model a: .*the LoRA was trained on another model"),
    ("not_tinyworld_prompt", "p.txt prompt 1: prompt 'a cat' is not of the form"),
])
def test_bad_input_is_one_line_and_samples_nothing(tiny, tmp_path, capsys, case, message):
    (tmp_path / "p.txt").write_text("a cat\n")
    args = {
        "missing_lora": ["--model", f"a={tiny['sd']}", "--lora", f"a={tmp_path / 'nowhere'}"],
        "lengths": ["--model", f"a={tiny['sd']}", "--model", f"b={tiny['sd']}", "--prompts", f"a={tiny['p3']}",
                    "--prompts", f"b={tiny['p2']}"],
        "family": ["--model", f"a={tiny['sd']}", "--model", f"b={tiny['sdxl']}"],
        "lora_family": ["--model", f"a={tiny['sd']}", "--lora", f"a={tiny['sdxl_lora']}"],
        "not_tinyworld_prompt": ["--model", f"a={tiny['sd']}", "--prompts", str(tmp_path / "p.txt")],
    }[case]
    assert main(["compare", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("zr-align compare: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "samples").exists()


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_prompts():
    rng, widths = np.random.default_rng(0), []
    for num_prompts in (10, 40, 160, 640):
        signs = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.5, 0.3], size=5 * num_prompts)  # 5 images per prompt
        units = np.arange(len(signs)) % num_prompts
        sums, counts = np.bincount(units, signs), np.bincount(units)
        interval = bootstrap_ratio(sums, counts)
        assert interval.low <= interval.value <= interval.high
        assert interval.value == pytest.approx(signs.mean())
        assert bootstrap_ratio(sums, counts) == interval  # seeded: the same data, the same interval
        widths.append(interval.high - interval.low)
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4  # ~ 1/sqrt(prompts)


def test_bootstrap_resamples_prompts_not_images():
    """Images of one prompt move together: with prompt-level effects the interval is wider than one that
    treats 100 images of 4 prompts as 100 independent draws."""
    per_prompt = np.array([1.0, 1.0, -1.0, 0.0])
    signs = np.repeat(per_prompt, 25)
    units = np.repeat(np.arange(4), 25)
    by_prompt = bootstrap_ratio(np.bincount(units, signs), np.bincount(units))
    by_image = bootstrap_ratio(signs, np.ones_like(signs))
    assert (by_prompt.high - by_prompt.low) > 2 * (by_image.high - by_image.low)
