"""One entry point for the sampling modes, at equal seeds: what `zr-align generate`, the custom pipeline in
`pipelines/zreward_pipeline.py` and the benchmarks call."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..diffusion.datasets import LATENTS_FILE
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
    without a reward); `latents` the initial noise each image was sampled from (guidance then moves the path);
    `final_latents` `(B, C, h, w)` the latents the images were decoded from (scaled as the denoiser sees them:
    what the SFT loss of `zr_align.diffusion` trains on when a folder stores them, see `generate_folder`).
    Best-of-N only: `rejected_latents` and `rejected_reward`, the final latents and reward of the candidate the
    reward scored lowest."""

    images: torch.Tensor
    reward: torch.Tensor | None
    latents: torch.Tensor
    final_latents: torch.Tensor
    rejected_latents: torch.Tensor | None = None
    rejected_reward: torch.Tensor | None = None


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
        return GuidedSamples(chosen.images, chosen.reward, chosen.latents, chosen.final_latents,
                             chosen.rejected_latents, chosen.rejected_reward)
    callback = None
    if mode == "guidance":
        callback = RewardGuidance(pipe, reward, prompts, options)
    elif mode == "noise":
        latents = optimize_noise(pipe, reward, prompts, latents, options, guidance_scale).latents
    images, final = run_pipeline(pipe, prompts, latents, callback=callback, return_latents=True, **run)
    values = score_images(reward, images, prompts).cpu() if reward is not None else None
    return GuidedSamples(images, values, latents, final)


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
                    save_latents: bool = False, save_pairs: bool = False, **kwargs) -> Path:
    """`generate` over `prompts` in batches (image `i` from seed `seed + i`), written to `out_dir` as `00000.png`,
    ... and `samples.jsonl`: one `{"image", "prompt", "seed", "mode", "reward"}` line per image. `kwargs` go to
    `generate` (num_inference_steps, guidance_scale, size, options).

    `save_latents`: also `latents.safetensors` (`"latents"`: `(N, C, h, w)`, row `i` the final latents of image
    `i`, which its line names as `"latent": i`). Such a folder is SFT data that skips the VAE encoder
    (`data.sft_data=FOLDER`): the denoiser learns the very latents the samples were decoded from.

    `save_pairs` (mode best_of_n, n >= 2): preference pairs for Diffusion-DPO (`method: dpo`,
    `data.pairs=FOLDER`): rows `N + i` of `latents.safetensors` hold the final latents of prompt `i`'s
    lowest-reward candidate, and `pairs.jsonl` one `{"prompt", "chosen": i, "rejected": N + i, "reward_chosen",
    "reward_rejected", "seed"}` line per prompt. Implies `save_latents`.
    """
    from PIL import Image
    from safetensors.torch import save_file

    if save_pairs and (mode != "best_of_n" or (kwargs.get("options") or BestOfNOptions()).n < 2):
        raise ValueError("save_pairs needs mode best_of_n with n >= 2 candidates (the best and the worst of them)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, pairs, finals, rejected = [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        seeds = [seed + start + i for i in range(len(chunk))]
        result = generate(pipe, chunk, mode, reward, seeds, **kwargs)
        pixels = (result.images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        rewards = result.reward.tolist() if result.reward is not None else [None] * len(chunk)
        finals.append(result.final_latents.cpu())
        if save_pairs:
            rejected.append(result.rejected_latents.cpu())
            pairs += [{"prompt": prompt, "chosen": start + i, "rejected": len(prompts) + start + i,
                       "reward_chosen": rewards[i], "reward_rejected": float(result.rejected_reward[i]),
                       "seed": seeds[i]} for i, prompt in enumerate(chunk)]
        for i, (image, prompt, value) in enumerate(zip(pixels, chunk, rewards)):
            name = f"{start + i:05d}.png"
            Image.fromarray(image).save(out_dir / name)
            line = {"image": name, "prompt": prompt, "seed": seeds[i], "mode": mode, "reward": value}
            lines.append(json.dumps(line | ({"latent": start + i} if save_latents or save_pairs else {})))
    if save_latents or save_pairs:
        save_file({"latents": torch.cat(finals + rejected).contiguous()}, str(out_dir / LATENTS_FILE))
    if save_pairs:
        (out_dir / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    index = out_dir / "samples.jsonl"
    index.write_text("\n".join(lines) + "\n")
    return index
