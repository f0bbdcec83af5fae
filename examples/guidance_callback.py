"""Per-step reward guidance inside a stock `StableDiffusionPipeline` call, on TinyWorld (< 1 min on a CPU).

    python examples/guidance_callback.py     # from the repository root

The callback re-runs the UNet with gradients at each guided step, decodes the x0 prediction, scores it with the
RISD student and nudges the latents up the reward gradient. Same prompts, same starting noise with and without it;
the ground-truth judge (not the reward) says which attributes came out right.
"""

import torch
from diffusers import StableDiffusionPipeline

from zr_align import ZRewardModel
from zr_align.guidance import GuidanceOptions, RewardGuidance, initial_noise
from zr_align.tinyworld.judge import judge_images

torch.set_num_threads(1)
pipe = StableDiffusionPipeline.from_pretrained("models/tinyworld/sft", dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
reward = ZRewardModel.from_pretrained("models/tinyworld/student")
prompts = ["a large red circle on the left", "a small blue square at the top", "a large purple triangle at the bottom",
           "a small orange square in the center"]
latents = initial_noise(pipe, seeds=[0, 1, 2, 3])  # the same noise for both calls

plain = pipe(prompts, latents=latents, num_inference_steps=20, output_type="pt").images
guidance = RewardGuidance(pipe, reward, prompts, GuidanceOptions(scale=0.02))
guided = pipe(prompts, latents=latents, num_inference_steps=20, output_type="pt", callback_on_step_end=guidance).images

for name, images in (("plain ", plain), ("guided", guided)):
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    right = [sum(v.correct.values()) for v in judge_images(pixels, prompts)]
    print(f"{name}: reward {reward.score(images, prompts).reward.numpy().round(3)}  attributes right (of 4) {right}")
print("reward of the x0 prediction at each guided step (mean):",
      [(j, round(float(r.mean()), 3)) for j, r in guidance.trace])
