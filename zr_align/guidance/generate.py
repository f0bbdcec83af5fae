"""One entry point for the sampling modes, at equal seeds: what `zr-align generate`, the custom pipeline in
`pipelines/zreward_pipeline.py` and the benchmarks call."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .best_of_n import BestOfNOptions, best_of_n
from .callback import GuidanceOptions, RewardGuidance
from .noise import NoiseOptions, optimize_noise
from .pipelines import CANDIDATE_SEED_STRIDE, initial_noise, pipeline_family, run_pipeline, score_images

# mode -> its options dataclass ("plain": the stock pipeline alone, the baseline every mode is compared with)
MODES = {"plain": None, "guidance": GuidanceOptions, "noise": NoiseOptions, "best_of_n": BestOfNOptions}


@dataclass
class GuidedSamples:
    """`images` `(B, 3, H, W)` in [0, 1]; `reward` `(B,)` the reward of those images (no graph; None in plain mode
    without a reward); `latents` the initial noise each image was sampled from (guidance then moves the path)."""

    images: torch.Tensor
    reward: torch.Tensor | None
    latents: torch.Tensor


def generate(pipe, prompts: list[str], mode: str = "guidance", reward=None, seeds: list[int] | None = None,
             num_inference_steps: int = 20, guidance_scale: float = 1.0, size: int | None = None,
             options=None) -> GuidedSamples:
    """Generate one image per prompt with a stock pipeline (`sd`, `sdxl` or `sd3` family) in `mode`.

    Args:
        pipe: the stock pipeline (with a LoRA if wanted: `zr_align.guidance.pipelines.load_lora`).
        mode: "plain", "guidance" (per-step reward guidance), "noise" (initial-noise optimisation) or "best_of_n".
        reward: a reward callable (differentiable for guidance and noise); optional in plain mode.
        seeds: image `i` starts from the noise of seed `seeds[i]` in every mode (default `0 .. B-1`).
        options: the mode's options (`GuidanceOptions`, `NoiseOptions`, `BestOfNOptions`); defaults if None.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    pipeline_family(pipe)  # an unsupported pipeline is refused before anything runs
    if MODES[mode] is not None:
        if reward is None:
            raise ValueError(f"mode {mode} needs a reward")
        options = options if options is not None else MODES[mode]()
        if not isinstance(options, MODES[mode]):
            raise ValueError(f"mode {mode} takes {MODES[mode].__name__}, not {type(options).__name__}")
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt")
    latents = initial_noise(pipe, seeds, size)
    run = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    if mode == "best_of_n":
        candidates = [initial_noise(pipe, [s + k * CANDIDATE_SEED_STRIDE for s in seeds], size) if k else latents
                      for k in range(options.n)]
        chosen = best_of_n(pipe, reward, prompts, candidates, options=options, **run)
        return GuidedSamples(chosen.images, chosen.reward, chosen.latents)
    callback = None
    if mode == "guidance":
        callback = RewardGuidance(pipe, reward, prompts, options)
    elif mode == "noise":
        latents = optimize_noise(pipe, reward, prompts, latents, options, guidance_scale).latents
    images = run_pipeline(pipe, prompts, latents, callback=callback, **run)
    values = score_images(reward, images, prompts).cpu() if reward is not None else None
    return GuidedSamples(images, values, latents)
