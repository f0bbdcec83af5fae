"""The supervised denoising loss: the SFT baseline and the optional SFT mixing of reward training (SPEC §6)."""

from __future__ import annotations

import torch

from .sampling import DifferentiableSampler


@torch.no_grad()
def encode_images(sampler: DifferentiableSampler, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> scaled latents (the VAE posterior mean: deterministic, sharper than a sample)."""
    vae = sampler.pipe.vae
    z = vae.encode((images * 2.0 - 1.0).to(vae.device, vae.dtype)).latent_dist.mean
    shift = vae.config.get("shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).to(sampler.denoiser.dtype)


def denoising_loss(
    sampler: DifferentiableSampler, latents: torch.Tensor, prompts: list[str], generator: torch.Generator
) -> torch.Tensor:
    """Mean squared error of the denoiser's prediction at a random noise level.

    diffusion: `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`, t ~ U{0..T_train-1}; target eps, or
    `v = sqrt(a_t) eps - sqrt(1 - a_t) x0` for v-prediction. flow: `x_s = (1 - s) x0 + s eps`, s ~ U(0, 1),
    target `eps - x0`, timestep `1000 s`. Classifier-free guidance is not used in training.
    """
    from diffusers import DDPMScheduler

    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    cond = sampler.family.encode(sampler.pipe, list(prompts), sampler.denoiser.device)
    if sampler.family.objective == "flow":
        sigma = torch.rand(batch, generator=generator).to(latents).view(-1, 1, 1, 1)
        x_t = (1.0 - sigma) * latents + sigma * noise
        pred = sampler.family.predict(sampler.pipe, x_t, sigma.flatten() * 1000.0, cond)
        target = noise - latents
    else:
        scheduler = DDPMScheduler.from_config(sampler.pipe.scheduler.config)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(latents.device)
        x_t = scheduler.add_noise(latents, noise, t)
        pred = sampler.family.predict(sampler.pipe, x_t, t, cond)
        target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" \
            else noise
    return torch.nn.functional.mse_loss(pred.float(), target.float())
