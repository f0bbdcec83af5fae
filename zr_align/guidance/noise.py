"""Initial-noise optimisation, after ReNO (Eyring et al., "ReNO: Enhancing One-step Text-to-Image Models through
Reward-based Noise Optimization", 2024).

The model stays frozen; the initial noise z of each image is the variable. Each iteration runs the engine's
differentiable sampler (`zr_align.diffusion.sampling`, method "full": every step carries the gradient, each step
checkpointed) from z for `num_steps` steps, scores the decoded image and takes one normalised gradient step on

    loss(z) = -reward(decode(sample(z))) + reg_weight * K(z),

where K is the negative log-likelihood of ||z||^2 under the chi-square law with d = z.numel() degrees of freedom
(minus its minimum): the squared norm of a d-dimensional standard Gaussian concentrates near d, so K keeps the
optimised noise on the shell where the model has seen its inputs (ReNO's noise regulariser has the same aim).
The iterate with the best reward is kept per image; iteration 0 is the given noise, so the result is never below
it by the reward. A short sampler (few steps) keeps each iteration cheap; the final image comes from the stock
pipeline at its own number of steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .gradients import step_direction
from .pipelines import denoiser_of, frozen, make_sampler, require_differentiable


@dataclass
class NoiseOptions:
    """Initial-noise optimisation (`optimize_noise`). Each iteration costs `num_steps` denoiser calls forward, the
    same again recomputed in backward plus their backward, one decode and one reward call with backward."""

    iterations: int = 8  # gradient steps on the noise (iterations + 1 evaluations; the best is kept)
    # step length: the noise moves by lr * (unit-RMS gradient) per iteration; 0.025 was best on TinyWorld's
    # validation prompts (0.2 no better than plain)
    lr: float = 0.025
    num_steps: int = 5  # steps of the differentiable sampler inside the loop (memory grows with them: one latent each)
    reg_weight: float = 0.01  # weight of the chi-square norm regulariser K(z)

    def __post_init__(self):
        for name in ("iterations", "num_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"noise optimisation {name} must be an integer >= 1; got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"noise optimisation lr must be > 0; got {self.lr!r}")
        if not self.reg_weight >= 0:
            raise ValueError(f"noise optimisation reg_weight must be >= 0; got {self.reg_weight!r}")


@dataclass
class NoiseResult:
    """`latents`: the best initial noise per image `(B, C, h, w)`; `reward`: its reward `(B,)` under the short
    sampler; `history`: the `(B,)` reward of every iterate (index 0: the given noise)."""

    latents: torch.Tensor
    reward: torch.Tensor
    history: list[torch.Tensor] = field(default_factory=list)


def chi_square_penalty(z: torch.Tensor) -> torch.Tensor:
    """Per image `(B,)`: -log p(||z||^2) under chi-square(d), minus its minimum (at ||z||^2 = d - 2), d = z[0].numel().

    log p(r2) = (d/2 - 1) log r2 - r2 / 2 + const; differentiable.
    """
    d = z[0].numel()
    r2 = z.flatten(1).pow(2).sum(dim=1)
    k, mode = d / 2 - 1, d - 2
    return (r2 / 2 - k * torch.log(r2)) - (mode / 2 - k * math.log(mode))


def optimize_noise(pipe, reward, prompts: list[str], latents: torch.Tensor, options: NoiseOptions | None = None,
                   guidance_scale: float = 1.0) -> NoiseResult:
    """Optimise the initial noise `latents` `(B, C, h, w)` of `prompts` for `reward` (see the module docstring).

    Runs with gradients enabled whatever the caller's mode; the pipeline's weights are frozen only inside.
    """
    options = options if options is not None else NoiseOptions()
    require_differentiable(reward, "noise")
    sampler = make_sampler(pipe, latents, options.num_steps, guidance_scale, checkpoint_steps=True)
    z = latents.detach().float().clone()
    best, best_reward, history = z.clone(), torch.full((len(z),), -math.inf), []
    with torch.enable_grad(), frozen(denoiser_of(pipe), pipe.vae):
        for iteration in range(options.iterations + 1):
            last = iteration == options.iterations
            z.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                images = sampler.sample(prompts, "full", latents=z.to(latents.dtype)).images
                value = reward(images, list(prompts)).reward.float()
            current = value.detach().cpu()
            history.append(current)
            better = current > best_reward
            best[better.to(z.device)] = z.detach()[better.to(z.device)]
            best_reward = torch.where(better, current, best_reward)
            if last:
                break
            loss = (-value + options.reg_weight * chi_square_penalty(z)).sum()
            (grad,) = torch.autograd.grad(loss, z)
            z = z.detach() - options.lr * step_direction(grad)
    return NoiseResult(best.to(latents.dtype), best_reward, history)
