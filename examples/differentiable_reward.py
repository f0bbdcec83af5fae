"""The reward plugin in 20 lines: score images with a Z-Reward model and back-propagate into the pixels.

    python examples/differentiable_reward.py [REWARD_DIR]

Without REWARD_DIR a tiny random Qwen2-VL reward model is built (scores are meaningless, gradients are real).
"""

import sys
import tempfile

import torch

from zr_align import ZRewardModel
from zr_align.preprocess import from_signed
from zr_align.testing import tiny_reward_model

folder = sys.argv[1] if len(sys.argv) > 1 else tiny_reward_model("qwen2_vl", tempfile.mkdtemp())
reward_model = ZRewardModel.from_pretrained(folder, kappa=0.5)  # risk-aware: penalise uncertain scores

decoded = torch.rand(2, 3, 64, 64) * 2 - 1  # stand-in for a VAE decoder's output in [-1, 1]
decoded.requires_grad_(True)
out = reward_model(from_signed(decoded), ["a large red circle on the left", "a small blue square at the top"])
out.reward.mean().backward()

for i, record in enumerate(out.to_records()):
    means = {d: round(s["mean"], 3) for d, s in record["scores"].items()}
    print(f"image {i}: reward {record['reward']:.3f}  means {means}")
print(f"d reward / d pixels: norm {decoded.grad.norm():.3e}, finite {bool(torch.isfinite(decoded.grad).all())}")
