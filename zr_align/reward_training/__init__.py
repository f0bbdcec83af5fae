"""Training objectives and metrics for score-distribution reward models: GDSO, RISD and baselines (Z-Reward: GDSO and RISD)."""

from .losses import (
    PolicyLossOutput,
    clipped_policy_loss,
    distribution_reward,
    group_advantages,
    marginalize,
    opd_reverse_kl,
    pointwise_kl,
    reward_dance_loss,
    risd_loss,
    sample_score_tokens,
    score_accuracy_reward,
    thurstone_fidelity,
)
from .metrics import (
    distribution_nll,
    expected_calibration_error,
    pairwise_accuracy,
    spearman,
    throughput,
)

__all__ = [
    "PolicyLossOutput",
    "clipped_policy_loss",
    "distribution_nll",
    "distribution_reward",
    "expected_calibration_error",
    "group_advantages",
    "marginalize",
    "opd_reverse_kl",
    "pairwise_accuracy",
    "pointwise_kl",
    "reward_dance_loss",
    "risd_loss",
    "sample_score_tokens",
    "score_accuracy_reward",
    "spearman",
    "thurstone_fidelity",
    "throughput",
]
