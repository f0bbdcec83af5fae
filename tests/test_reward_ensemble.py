"""`RewardEnsemble`: several reward models as one differentiable reward, and `reward.ensemble` in train_t2i."""

from pathlib import Path

import numpy as np
import pytest
import torch

from zr_align.rewards import RewardEnsemble, ZRewardModel
from zr_align.rewards.compressibility import JpegCompressibility
from zr_align.tinyworld.render import render

STUDENT = Path(__file__).resolve().parents[1] / "models" / "tinyworld" / "student"
PROMPTS = ["a large red circle on the left", "a small blue square at the top", "a large green triangle in the center"]


def _members():
    # Two readers of the same folder that weigh different dimensions: their rewards differ image by image.
    alignment = ZRewardModel.from_pretrained(STUDENT, weights={"alignment": 1.0, "realism": 0.0, "aesthetics": 0.0,
                                                               "plausibility": 0.0})
    realism = ZRewardModel.from_pretrained(STUDENT, weights={"alignment": 0.0, "realism": 1.0, "aesthetics": 0.0,
                                                             "plausibility": 0.0})
    return alignment, realism


def _images() -> torch.Tensor:
    clean = [render(p, seed=i).image for i, p in enumerate(PROMPTS)]
    noisy = np.clip(clean[0].astype(np.float32) + np.random.default_rng(0).normal(0, 40, clean[0].shape), 0, 255)
    pixels = np.stack([*clean, noisy]).astype(np.float32) / 255.0
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def test_the_ensemble_is_the_mean_or_the_minimum_of_its_members_with_their_gradient():
    members = _members()
    images, prompts = _images(), [*PROMPTS, PROMPTS[0]]
    outs = [m(images, prompts) for m in members]
    assert not torch.allclose(outs[0].reward, outs[1].reward)  # the members disagree, so the reduction matters

    x = images.clone().requires_grad_(True)
    mean = RewardEnsemble(list(members))(x, prompts)
    torch.testing.assert_close(mean.reward, (outs[0].reward + outs[1].reward) / 2)
    mean.reward.sum().backward()
    member_grads = []
    for m in members:
        y = images.clone().requires_grad_(True)
        m(y, prompts).reward.sum().backward()
        member_grads.append(y.grad)
    assert x.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, (member_grads[0] + member_grads[1]) / 2, rtol=1e-4, atol=1e-6)

    worst = RewardEnsemble(list(members), reduce="min")(images, prompts)
    torch.testing.assert_close(worst.reward, torch.minimum(outs[0].reward, outs[1].reward))
    for name, dist in mean.scores.items():  # the mixture of the members' distributions
        torch.testing.assert_close(dist.probs, (outs[0].scores[name].probs + outs[1].scores[name].probs) / 2)
        torch.testing.assert_close(dist.probs.sum(-1), torch.ones(len(prompts)))


def test_an_ensemble_refuses_one_member_an_unknown_reduction_and_a_reward_without_a_gradient():
    alignment, realism = _members()
    with pytest.raises(ValueError, match="at least two"):
        RewardEnsemble([alignment])
    with pytest.raises(ValueError, match="reduce"):
        RewardEnsemble([alignment, realism], reduce="max")
    with pytest.raises(ValueError, match="member 1 .*JpegCompressibility.* not differentiable"):
        RewardEnsemble([alignment, JpegCompressibility()])


def test_train_config_loads_an_ensemble_and_refuses_one_without_a_model_folder(tmp_path):
    from accelerate import Accelerator

    from zr_align.diffusion.components import load_reward
    from zr_align.diffusion.config import TrainConfig
    from zr_align.runs import load_config

    base = ["method=draft_k", "model.path=tiny:sd", f"output_dir={tmp_path}", f"reward.path={STUDENT}"]
    config = load_config(None, [*base, f"reward.ensemble=[{STUDENT}]", "reward.ensemble_reduce=min"], TrainConfig)
    reward = load_reward(config, Accelerator(cpu=True))
    assert isinstance(reward, RewardEnsemble) and len(reward.members) == 2 and reward.reduce == "min"
    assert isinstance(load_reward(load_config(None, base, TrainConfig), Accelerator(cpu=True)), ZRewardModel)
    with pytest.raises(ValueError, match="reward.ensemble adds ZRewardModel folders"):
        load_config(None, ["reward.kind=tinyworld_soft_judge", f"reward.ensemble=[{STUDENT}]"], TrainConfig)
    with pytest.raises(ValueError, match="reward.ensemble must be a list of strings"):
        load_config(None, [f"reward.path={STUDENT}", f"reward.ensemble={STUDENT}"], TrainConfig)
    with pytest.raises(ValueError, match="non-empty list"):
        load_config(None, [f"reward.path={STUDENT}", "reward.ensemble=[]"], TrainConfig)
    with pytest.raises(ValueError, match="reward.ensemble_reduce"):
        load_config(None, [f"reward.path={STUDENT}", "reward.ensemble_reduce=max"], TrainConfig)
