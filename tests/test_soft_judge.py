"""The differentiable judge stand-in (`zr_align.tinyworld.soft_judge`): it must read what the judge reads, have a
real gradient in the pixels, and plug into the fine-tuning config as `reward.kind: tinyworld_soft_judge`."""

import numpy as np
import pytest
import torch

from zr_align.tinyworld.corrupt import corrupt
from zr_align.tinyworld.grammar import ATTRIBUTES, split_prompts
from zr_align.tinyworld.judge import judge, overall
from zr_align.tinyworld.render import render
from zr_align.tinyworld.soft_judge import SoftJudge

KINDS = ("clean", "wrong_color", "wrong_shape", "wrong_size", "wrong_position", "color_shift")


def _images(kind: str, prompts: list[str], seed: int = 0) -> list[np.ndarray]:
    out = []
    for i, prompt in enumerate(prompts):
        rendered = render(prompt, seed=seed + i)
        out.append(rendered.image if kind == "clean" else corrupt(rendered, kind, seed=seed + i).image)
    return out


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("kind", KINDS)
def test_soft_judge_reads_each_check_like_the_judge(kind):
    prompts = split_prompts(0).test[:18]
    images = _images(kind, prompts)
    soft = SoftJudge().attributes(_tensor(images), prompts)
    verdicts = [judge(image, prompt) for image, prompt in zip(images, prompts)]
    for attribute in ATTRIBUTES:
        truth = np.array([v.correct[attribute] for v in verdicts])
        assert ((soft[attribute].numpy() > 0.5) == truth).all(), (kind, attribute)
    shift = np.array([v.artefacts["color_shift"] for v in verdicts])
    assert ((soft["color_shift"].numpy() > 0.5) == shift).all(), kind
    if kind != "clean":  # not a trivial agreement: the corruption is there to be read
        check = kind.removeprefix("wrong_")
        seen = shift if kind == "color_shift" else ~np.array([v.correct[check] for v in verdicts])
        assert seen.mean() >= 0.5, kind


def test_soft_judge_score_orders_images_as_the_judge_does():
    prompts = split_prompts(0).test[:12]
    clean, wrong = _images("clean", prompts), _images("wrong_position", prompts)
    judge_score = np.array([overall(judge(i, p)) for i, p in zip(clean + wrong, prompts * 2)])
    soft_score = SoftJudge()(_tensor(clean + wrong), prompts * 2).reward.numpy()
    assert (judge_score[:12] - judge_score[12:] == 1.0 / 4).all()  # one attribute: a quarter point
    assert (soft_score[:12] - soft_score[12:] > 0.1).all()
    assert abs(soft_score[:12] - judge_score[:12]).max() < 0.1


def test_soft_judge_gradient_is_finite_on_every_kind_of_image():
    prompts = split_prompts(0).test[:6]
    images = [image for kind in ("clean", "blur", "noise", "clutter", "crop", "low_contrast")
              for image in _images(kind, prompts)] + [np.full((64, 64, 3), 230, dtype=np.uint8)]  # no object at all
    x = _tensor(images).requires_grad_(True)
    SoftJudge()(x, prompts * 6 + prompts[:1]).reward.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_soft_judge_gradient_reaches_the_pixels_and_points_to_the_prompt():
    prompt = "a large red circle on the left"
    wrong_side = render("a large red circle on the right", seed=3).image  # the object sits in the wrong third
    image = _tensor([wrong_side]).requires_grad_(True)
    SoftJudge()(image, [prompt]).reward.sum().backward()
    grad = image.grad[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # a step along the gradient raises the reward (it is a gradient, not noise)
    with torch.no_grad():
        before = SoftJudge()(image, [prompt]).reward
        after = SoftJudge()((image + 0.5 * grad / grad.abs().max()).clamp(0, 1), [prompt]).reward
    assert after > before


def test_soft_judge_refuses_other_image_sizes():
    with pytest.raises(ValueError, match="64, 64"):
        SoftJudge()(torch.rand(1, 3, 32, 32), ["a large red circle on the left"])


def test_train_config_takes_the_soft_judge_as_a_differentiable_reward():
    from zr_align.diffusion.components import load_reward
    from zr_align.diffusion.config import TrainConfig
    from zr_align.runs import load_config

    config = load_config(None, ["method=draft_k", "reward.kind=tinyworld_soft_judge", "model.path=tiny:sd"],
                         TrainConfig)
    reward = load_reward(config, accelerator=None)
    assert isinstance(reward, SoftJudge) and reward.differentiable
    with pytest.raises(ValueError, match="reward.kind"):
        load_config(None, ["reward.kind=tinyworld_judge"], TrainConfig)


def test_reward_options_reach_the_built_in_reward_and_unknown_ones_are_named():
    from zr_align.diffusion.components import load_reward
    from zr_align.diffusion.config import TrainConfig
    from zr_align.runs import load_config

    base = ["method=draft_k", "reward.kind=tinyworld_soft_judge", "model.path=tiny:sd"]
    reward = load_reward(load_config(None, [*base, "reward.options={temperature: 3}"], TrainConfig), None)
    assert reward.temperature == 3
    with pytest.raises(ValueError, match="'scale'.*it takes: temperature"):
        load_reward(load_config(None, [*base, "reward.options={scale: 3}"], TrainConfig), None)
    with pytest.raises(ValueError, match="reward.options are for"):
        load_config(None, ["reward.options={temperature: 3}"], TrainConfig)


def test_a_warmer_soft_judge_has_a_gradient_far_from_the_target_and_still_ranks_renders():
    prompt = "a large red circle on the left"
    far = _tensor([render("a large red circle on the right", seed=3).image])  # two thirds away
    grads = {}
    for t in (1.0, 3.0):
        x = far.clone().requires_grad_(True)
        SoftJudge(temperature=t)(x, [prompt]).reward.sum().backward()
        grads[t] = x.grad.abs().sum()
    assert grads[3.0] > 10 * grads[1.0]
    prompts = split_prompts(0).test[:12]
    clean, wrong = _images("clean", prompts), _images("wrong_position", prompts)
    score = SoftJudge(temperature=3.0)(_tensor(clean + wrong), prompts * 2).reward
    assert (score[:12] > score[12:]).all()  # the segmentation is not softened: only the decisions are
