"""The reward plugin contract: a reward is a callable `reward(images, prompts) -> RewardOutput` (README: "The reward plugin")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..scores import ScoreDistribution


@dataclass
class RewardOutput:
    """What a reward returns for a batch of `B` images.

    Args:
        reward (`torch.Tensor` of shape `(B,)`): the scalar reward, e.g. `sum_d w_d E_d - kappa * sigma_d`.
        scores (`dict[str, ScoreDistribution]`): one distribution per rubric dimension, batch `(B,)`.
    """

    reward: torch.Tensor
    scores: dict[str, ScoreDistribution] = field(default_factory=dict)

    def detach(self) -> "RewardOutput":
        return RewardOutput(self.reward.detach(), {k: v.detach() for k, v in self.scores.items()})

    def to_records(self) -> list[dict]:
        """One JSON-ready dict per image (reward, and per dimension mean, std, probs). Not on the gradient path."""
        reward = self.reward.detach().cpu().tolist()
        records = []
        for i, value in enumerate(reward):
            dims = {}
            for name, dist in self.scores.items():
                dist = dist.detach()
                probs = dist.probs[i].cpu()
                dims[name] = {
                    "mean": float(dist.mean[i]),
                    "std": float(dist.std[i]),
                    "probs": [round(p, 6) for p in probs.tolist()],
                }
            records.append({"reward": value, "scores": dims})
        return records


@runtime_checkable
class Reward(Protocol):
    """A reward for diffusion post-training.

    `images` is a float tensor `(B, 3, H, W)` in [0, 1]; `prompts` has `B` strings. A reward whose
    `differentiable` is True keeps the autograd graph from `RewardOutput.reward` to `images`; trainers that
    back-propagate through the reward refuse one that is not.
    """

    differentiable: bool

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput: ...
