"""Reward-guided sampling with stock diffusers pipelines (README: "Reward-guided sampling"): no training.

- `RewardGuidance`: a `callback_on_step_end` that moves the latents along the reward gradient of the x0
  prediction at chosen steps (`callback.py`);
- `optimize_noise`: ReNO-style optimisation of the initial noise through a short differentiable sampler (`noise.py`);
- `best_of_n`: N candidates per prompt, the reward keeps the best (`best_of_n.py`);
- `generate`: any of them (or plain sampling) from per-image seeds (`generate.py`).

Built on the fine-tuning engine (`zr_align.diffusion`: x0 prediction, decoding) and the reward (`zr_align.rewards`);
neither of them imports this package.
"""

from .best_of_n import BestOfN, BestOfNOptions, best_of_n
from .callback import GuidanceOptions, RewardGuidance
from .generate import MODES, GuidedSamples, generate, generate_folder, mode_options
from .noise import NoiseOptions, NoiseResult, chi_square_penalty, optimize_noise
from .pipelines import initial_noise, load_lora, load_pipeline, load_reward

__all__ = [
    "MODES",
    "BestOfN",
    "BestOfNOptions",
    "GuidanceOptions",
    "GuidedSamples",
    "NoiseOptions",
    "NoiseResult",
    "RewardGuidance",
    "best_of_n",
    "chi_square_penalty",
    "generate",
    "generate_folder",
    "initial_noise",
    "load_lora",
    "load_pipeline",
    "load_reward",
    "mode_options",
    "optimize_noise",
]
