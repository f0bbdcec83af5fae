"""The shipped TinyWorld weights: they load offline with stock classes, and the shipped student is a working
differentiable reward (the gradient tests of the reward core)."""

from pathlib import Path

import pytest
import torch

from zr_align.reward_training.teacher import ReasoningTeacher
from zr_align.rewards import ZRewardModel
from zr_align.tinyworld.render import render

MODELS = Path(__file__).resolve().parents[1] / "models" / "tinyworld"
PROMPTS = ["a large red circle on the left", "a small blue square at the top", "a large green triangle in the center"]


def renders():
    return torch.stack([torch.from_numpy(render(p, seed=i).image.copy()).permute(2, 0, 1).float() / 255
                        for i, p in enumerate(PROMPTS)])


def test_shipped_weights_are_small():
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total <= 30 * 2**20, f"TinyWorld weights take {total / 2**20:.1f} MB"


def test_sft_model_loads_in_the_stock_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODELS / "sft", dtype=torch.float32)
    assert pipe.scheduler.config.rescale_betas_zero_snr  # built with the recipe's zero terminal SNR
    image = pipe(PROMPTS[0], num_inference_steps=4, output_type="np", height=64, width=64).images[0]
    assert image.shape == (64, 64, 3) and image.std() > 0.01


def test_generate_returns_the_latents_its_images_decode_from():
    """`sample.generate(output_type="latent")`: the same noise per image as the PNG path, before decoding."""
    from zr_align.tinyworld.sample import generate, load_pipeline

    pipe = load_pipeline(MODELS / "sft")
    images = generate(pipe, PROMPTS, seed=7, steps=4, batch_size=2)
    latents = generate(pipe, PROMPTS, seed=7, steps=4, batch_size=2, output_type="latent")
    assert latents.shape == (3, 4, 16, 16)
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    pixels = ((decoded / 2 + 0.5).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    assert abs(pixels - images.astype("float32")).max() <= 1.0  # the pipeline's own decode, rounded to uint8
    with pytest.raises(ValueError, match="output_type must be 'np' or 'latent'"):
        generate(pipe, PROMPTS, output_type="pil")


@pytest.fixture(scope="module")
def student():
    return ZRewardModel.from_pretrained(MODELS / "student")


def test_student_gradient_is_finite_nonzero_and_per_sample(student):
    images = renders().requires_grad_(True)
    out = student(images, PROMPTS)
    out.reward[0].backward()
    assert torch.isfinite(images.grad).all() and images.grad[0].abs().sum() > 0
    assert torch.count_nonzero(images.grad[1:]) == 0


def test_student_batch_equals_one_by_one(student):
    images = renders()
    with torch.no_grad():
        batch = student(images, PROMPTS).reward
        single = torch.cat([student(images[i : i + 1], PROMPTS[i : i + 1]).reward for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_student_and_teacher_prefer_the_matching_image(student):
    """The judge says a red circle on the left matches its prompt and a blue one does not; so must the models."""
    right = render("a large red circle on the left", seed=0).image
    wrong = render("a large blue circle on the left", seed=0).image
    images = torch.stack([torch.from_numpy(x.copy()).permute(2, 0, 1).float() / 255 for x in (right, wrong)])
    prompts = ["a large red circle on the left"] * 2
    with torch.no_grad():
        s = student(images, prompts).scores["alignment"].mean
    t = ReasoningTeacher.from_pretrained(MODELS / "teacher").score(images, prompts).scores["alignment"].mean
    assert s[0] > s[1] and t[0] > t[1]


def test_shipped_reward_models_read_the_image(student, tmp_path):
    """Fresh held-out pairs (validation prompts, a seed of their own): one attribute wrong, one more wrong, one
    artefact. A model that copies the prompt sits at 0.5 on every kind (tests/test_reward_eval.py)."""
    from zr_align.reward_training.evaluate import load_scorer
    from zr_align.tinyworld.reward_eval import (
        evaluate_kinds,
        make_eval_set,
        score_eval_images,
    )

    make_eval_set(tmp_path, "validation", seed=11, pairs_per_kind=21)
    assert student.config.layout == "joint"  # one forward per image for all four dimensions
    # the teacher, the RISD student and the two other members of the demo's reward ensemble
    for name in ("student", "teacher", "ensemble/cast/student", "ensemble/sharp/student"):
        accuracy = evaluate_kinds(score_eval_images(load_scorer(MODELS / name), tmp_path), tmp_path)
        for kind in ("clean_vs_one", "one_vs_two", "quality"):
            assert accuracy[kind] >= 0.8, (name, accuracy)
