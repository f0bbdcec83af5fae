"""One entry point for the sampling modes, at equal seeds: what `zr-align generate`, the custom pipeline in
`pipelines/zreward_pipeline.py` and the benchmarks call."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .best_of_n import BestOfNOptions, best_of_n
from .callback import GuidanceOptions, RewardGuidance
from .noise import NoiseOptions, optimize_noise
from .pipelines import (
    CANDIDATE_SEED_STRIDE,
    initial_noise,
    pipeline_family,
    run_pipeline,
    score_images,
)

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
    run = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
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


def mode_options(mode: str, **values):
    """The options dataclass of `mode` with the given fields (None: the field's default); None for plain mode.
    A field the mode does not have is a one-line `ValueError` naming the mode's fields."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    values = {k: v for k, v in values.items() if v is not None}
    allowed = {f.name for f in fields(MODES[mode])} if MODES[mode] is not None else set()
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"mode {mode} has no option {unknown[0]!r}"
                         + (f"; its options: {', '.join(sorted(allowed))}" if allowed else ""))
    return MODES[mode](**values) if MODES[mode] is not None else None


def generate_folder(pipe, prompts: list[str], out_dir, mode: str, reward=None, seed: int = 0, batch_size: int = 16,
                    **kwargs) -> Path:
    """`generate` over `prompts` in batches (image `i` from seed `seed + i`), written to `out_dir` as `00000.png`,
    ... and `samples.jsonl`: one `{"image", "prompt", "seed", "mode", "reward"}` line per image. `kwargs` go to
    `generate` (num_inference_steps, guidance_scale, size, options)."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        seeds = [seed + start + i for i in range(len(chunk))]
        result = generate(pipe, chunk, mode, reward, seeds, **kwargs)
        pixels = (result.images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        rewards = result.reward.tolist() if result.reward is not None else [None] * len(chunk)
        for i, (image, prompt, value) in enumerate(zip(pixels, chunk, rewards)):
            name = f"{start + i:05d}.png"
            Image.fromarray(image).save(out_dir / name)
            lines.append(json.dumps({"image": name, "prompt": prompt, "seed": seeds[i], "mode": mode,
                                     "reward": value}))
    index = out_dir / "samples.jsonl"
    index.write_text("\n".join(lines) + "\n")
    return index
