"""Reward models: the `Reward` protocol, its output, the VLM families and `ZRewardModel`, `RewardEnsemble`."""

from .ensemble import RewardEnsemble
from .families import FAMILIES, VLMFamily, get_family
from .output import Reward, RewardOutput
from .zreward import ZRewardConfig, ZRewardModel

__all__ = ["FAMILIES", "Reward", "RewardEnsemble", "RewardOutput", "VLMFamily", "ZRewardConfig", "ZRewardModel",
           "get_family"]
