"""Best-of-N: generate N candidates per prompt with the stock pipeline and keep the one the reward scores highest.

No gradient anywhere (the reward's batched `score`), so any reward works, differentiable or not. Cost: N plain
samples plus N reward scores per image; peak memory is one candidate batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pipelines import run_pipeline, score_images


@dataclass
class BestOfNOptions:
    """Best-of-N reranking (`best_of_n`): N times the sampling cost, plus N reward scores per image."""

    n: int = 8  # candidates per prompt (candidate 0 is the plain sample's own noise); cost grows linearly
    batch_size: int = 16  # images per reward `score` call

    def __post_init__(self):
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"best-of-N needs n >= 1 candidates; got {self.n!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"best-of-N batch_size must be an integer >= 1; got {self.batch_size!r}")


@dataclass
class BestOfN:
    """`images` `(B, 3, H, W)` in [0, 1] and `reward` `(B,)` of the chosen candidates, `chosen` `(B,)` their index,
    `latents` their initial noise, `final_latents` the latents their images were decoded from; `rewards` `(N, B)`
    of every candidate; `rejected_latents` and `rejected_reward` those of the candidate with the lowest reward
    (with the chosen one, a preference pair for Diffusion-DPO: `generate_folder(save_pairs=True)`)."""

    images: torch.Tensor
    reward: torch.Tensor
    chosen: torch.Tensor
    latents: torch.Tensor
    rewards: torch.Tensor
    final_latents: torch.Tensor
    rejected_latents: torch.Tensor
    rejected_reward: torch.Tensor


def best_of_n(pipe, reward, prompts: list[str], candidates: list[torch.Tensor], num_inference_steps: int,
              guidance_scale: float = 1.0, options: BestOfNOptions | None = None) -> BestOfN:
    """Sample every candidate noise `candidates[k]` `(B, C, h, w)` with the stock pipeline and keep, per image, the
    candidate with the highest reward (the first one on ties)."""
    options = options if options is not None else BestOfNOptions(n=len(candidates))
    if len(candidates) != options.n:
        raise ValueError(f"best-of-N with n={options.n} needs {options.n} candidate noises; got {len(candidates)}")
    images, finals, rewards = [], [], []
    for latents in candidates:
        image, final = run_pipeline(pipe, prompts, latents, num_inference_steps, guidance_scale, return_latents=True)
        images.append(image)
        finals.append(final)
        rewards.append(score_images(reward, images[-1], prompts, options.batch_size).cpu())
    rewards = torch.stack(rewards)  # (N, B)
    chosen = rewards.argmax(dim=0)  # (B,); argmax returns the first maximum
    rejected = rewards.argmin(dim=0)
    batch = torch.arange(len(prompts))
    stacked = torch.stack(images)  # (N, B, 3, H, W)
    finals = torch.stack(finals)  # (N, B, C, h, w)
    on_device = chosen.to(candidates[0].device), batch.to(candidates[0].device)
    return BestOfN(stacked[chosen, batch], rewards[chosen, batch], chosen, torch.stack(candidates)[on_device], rewards,
                   finals[chosen.to(finals.device), batch.to(finals.device)],
                   finals[rejected.to(finals.device), batch.to(finals.device)], rewards[rejected, batch])
