"""zr_align: score-distribution reward models (Z-Reward) as a differentiable reward for diffusion post-training."""

from .rewards import Reward, RewardOutput, ZRewardConfig, ZRewardModel
from .rubrics import DEFAULT_DIMENSIONS, Rubric
from .scores import DEFAULT_BINS, ScoreDistribution

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_DIMENSIONS",
    "Reward",
    "RewardOutput",
    "Rubric",
    "ScoreDistribution",
    "ZRewardConfig",
    "ZRewardModel",
]
