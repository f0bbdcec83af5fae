"""ReNO-style initial-noise optimisation on TinyWorld (< 1 min on a CPU).

    python examples/noise_optimization.py     # from the repository root

A few gradient steps on each image's initial noise through a short (5-step) differentiable sampler, with a
chi-square regulariser that keeps the noise norm typical of a Gaussian; the best iterate by reward is kept and the
stock pipeline samples from it at its own 20 steps.
"""

import torch

from zr_align.guidance import (
    NoiseOptions,
    initial_noise,
    load_pipeline,
    load_reward,
    optimize_noise,
)
from zr_align.guidance.pipelines import run_pipeline
from zr_align.tinyworld.judge import judge_images

torch.set_num_threads(1)
pipe = load_pipeline("models/tinyworld/sft")  # the stock StableDiffusionPipeline; a LoRA: load_pipeline(dir, lora)
reward = load_reward("models/tinyworld/student")
prompts = ["a large red circle on the left", "a small green triangle at the top"]
noise = initial_noise(pipe, seeds=[0, 1])

result = optimize_noise(pipe, reward, prompts, noise, NoiseOptions(iterations=8, lr=0.025, num_steps=5))
print("reward per iterate (short sampler):", [r.numpy().round(3).tolist() for r in result.history])
for name, start in (("initial noise  ", noise), ("optimised noise", result.latents)):
    images = run_pipeline(pipe, prompts, start, num_inference_steps=20)
    pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    right = [sum(v.correct.values()) for v in judge_images(pixels, prompts)]
    print(f"{name}: reward {reward.score(images, prompts).reward.numpy().round(3)}  attributes right (of 4) {right}")
