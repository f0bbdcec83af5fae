"""Several reward models scored as one: the mean (or the minimum) of their rewards.

A single learned reward is over-optimised where it misreads: fine-tuning finds the images it scores high for the
wrong reason. Members trained on different data rarely share those blind spots, so a reward that needs every
member to agree is harder to exploit (the idea of Coste et al., "Reward Model Ensembles Help Mitigate
Overoptimization", 2023: mean and worst-case optimisation of an ensemble). Each member keeps its own rubric
weights, kappa and clamp; the ensemble only combines their scalar rewards, and reports the members' mean
distribution per dimension.
"""

from __future__ import annotations

import torch

from ..runs.checks import check_choice
from ..scores import ScoreDistribution
from .output import RewardOutput

REDUCTIONS = ("mean", "min")


class RewardEnsemble(torch.nn.Module):
    """Differentiable rewards combined image by image.

    Args:
        members (`list`): rewards called as `member(images, prompts) -> RewardOutput` (e.g. `ZRewardModel`s).
        reduce (`str`): `mean` (the average reward) or `min` (the worst member per image: the most conservative).

    Raises:
        `ValueError`: with fewer than two members, an unknown `reduce`, or a member that is not differentiable.
    """

    differentiable = True

    def __init__(self, members: list, reduce: str = "mean"):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two reward models, got {len(members)}; use the one "
                             "model directly")
        check_choice("reduce", reduce, REDUCTIONS)
        for i, member in enumerate(members):
            if not getattr(member, "differentiable", False):
                raise ValueError(f"ensemble member {i} ({type(member).__name__}) is not differentiable")
        self.members = torch.nn.ModuleList(members)
        self.reduce = reduce

    def forward(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        outputs = [member(images, prompts) for member in self.members]
        rewards = torch.stack([out.reward for out in outputs])  # (M, B)
        reward = rewards.mean(0) if self.reduce == "mean" else rewards.min(0).values
        return RewardOutput(reward=reward, scores=_mean_scores(outputs))


def _mean_scores(outputs: list[RewardOutput]) -> dict[str, ScoreDistribution]:
    """Per dimension the members' mixture distribution, for the dimensions every member scores on the same bins."""
    scores = {}
    for name, first in outputs[0].scores.items():
        dists = [out.scores.get(name) for out in outputs]
        if any(d is None or d.values.shape != first.values.shape or not torch.equal(d.values, first.values)
               for d in dists):
            continue
        scores[name] = ScoreDistribution(torch.stack([d.probs for d in dists]).mean(0), first.values)
    return scores
