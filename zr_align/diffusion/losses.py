"""The losses of diffusion fine-tuning, in one place: the reward objective (with its normaliser), the KL term
to the base model, the supervised denoising loss of SFT (and of the optional SFT mixing of reward training), and
guidance distillation at high noise.

    loss = -loss_scale * normalise(reward).mean() + kl_weight * KL + sft_weight * denoising_loss
           + cfg_distill_weight * guidance_distillation_loss

The ideas: reward backprop through the sampler (DRaFT, Clark et al. 2023; ReFL, Xu et al. 2023); the KL term
as the mean squared difference of the LoRA and base predictions along the trajectory (as in DPOK's KL
regulariser, Fan et al. 2023); SFT is the standard denoising score-matching loss (Ho et al. 2020).
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def encode_images(sampler, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> scaled latents (the VAE posterior mean: deterministic, sharper than a sample)."""
    vae = sampler.pipe.vae
    z = vae.encode((images * 2.0 - 1.0).to(vae.device, vae.dtype)).latent_dist.mean
    shift = vae.config.get("shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).to(sampler.denoiser.dtype)


def _noised(sampler, latents: torch.Tensor, generator: torch.Generator, window: float = 1.0):
    """`(x_t, timestep, target)` of the denoising loss at one random noise level per sample (see `denoising_loss`),
    drawn from the top `window` share of the noise range (1: all of it)."""
    from diffusers import DDPMScheduler

    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if sampler.family.objective == "flow":
        u = torch.rand(batch, generator=generator).to(latents).view(-1, 1, 1, 1)
        sigma = u if window == 1.0 else 1.0 - window * u
        return (1.0 - sigma) * latents + sigma * noise, sigma.flatten() * 1000.0, noise - latents
    scheduler = DDPMScheduler.from_config(sampler.pipe.scheduler.config)
    steps = scheduler.config.num_train_timesteps
    low = steps - max(1, round(window * steps))
    t = torch.randint(low, steps, (batch,), generator=generator).to(latents.device)
    x_t = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    return x_t, t, target


def denoising_loss(sampler, latents: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
    """Mean squared error of the denoiser's prediction at a random noise level.

    diffusion: `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`, t ~ U{0..T_train-1}; target eps, or
    `v = sqrt(a_t) eps - sqrt(1 - a_t) x0` for v-prediction. flow: `x_s = (1 - s) x0 + s eps`, s ~ U(0, 1),
    target `eps - x0`, timestep `1000 s`. Classifier-free guidance is not used in training.
    """
    x_t, t, target = _noised(sampler, latents, generator)
    cond = sampler.family.encode(sampler.pipe, list(prompts), sampler.denoiser.device)
    pred = sampler.family.predict(sampler.pipe, x_t, t, cond, sampler.wrapped)
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def classifier_free_guidance(uncond: torch.Tensor, text: torch.Tensor, scale: float, rescale: float = 0.0,
                             center: bool = False) -> torch.Tensor:
    """The guided prediction `g = u + scale (c - u)` from the predictions without / with the prompt. `center`:
    `g = c + (scale - 1) (d - mean(d))`, `d = c - u` less its mean over the spatial axes per sample and channel, so
    guidance moves the layout and leaves the global tint to `c`. `rescale` r (guidance rescale, Lin et al. 2024):
    `r g std(c) / std(g) + (1 - r) g`, stds per sample."""
    direction = text - uncond
    if center:
        direction = direction - direction.mean(dim=tuple(range(2, direction.ndim)), keepdim=True)
        guided = text + (scale - 1.0) * direction
    else:
        guided = uncond + scale * direction
    if rescale > 0:
        dims = tuple(range(1, guided.ndim))
        rescaled = guided * text.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
        guided = rescale * rescaled + (1.0 - rescale) * guided
    return guided


def guidance_distillation_loss(sampler, teacher, latents: torch.Tensor, prompts: list[str], generator: torch.Generator,
                               scale: float, window: float, rescale: float = 0.0, center: bool = False) -> torch.Tensor:
    """Guidance distillation (Meng et al., "On Distillation of Guided Diffusion Models", 2023), at high noise only:
    the mean squared error between the denoiser's conditional prediction at `x_t` (the latents noised to a level in
    the top `window` of the range) and the frozen `teacher`'s classifier-free-guided one
    (`classifier_free_guidance` of its predictions without / with the prompt; the empty prompt). `teacher` is a
    context manager factory yielding the base module to call (a frozen copy, or the denoiser with its LoRA switched
    off)."""
    x_t, t, _ = _noised(sampler, latents, generator, window)
    device = sampler.denoiser.device
    cond = sampler.family.encode(sampler.pipe, list(prompts), device)
    with torch.no_grad():
        empty = sampler.family.encode(sampler.pipe, [""] * len(prompts), device)
        with teacher() as base:
            both = sampler.family.predict(sampler.pipe, torch.cat([x_t, x_t]), torch.cat([t, t]),
                                          {k: torch.cat([empty[k], cond[k]]) for k in cond}, base)
        uncond, text = both.float().chunk(2)
        target = classifier_free_guidance(uncond, text, scale, rescale, center)
    pred = sampler.family.predict(sampler.pipe, x_t, t, cond, sampler.wrapped)
    return torch.nn.functional.mse_loss(pred.float(), target)


def dpo_loss(sampler, chosen: torch.Tensor, rejected: torch.Tensor, prompts: list[str], generator: torch.Generator,
             beta: float) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization", 2023):

        -log sigmoid(-beta / 2 * ((e_w - e_w_ref) - (e_l - e_l_ref)))

    with the same noise and level for both latents of a pair (chosen w, rejected l); `e` the per-sample mean
    squared denoising error of the tuned model, `e_ref` that of the base (the LoRA switched off, no graph). At the
    start (LoRA B = 0) the loss is log 2; it falls as the model denoises the chosen latents better, relative to
    the base, than the rejected ones."""
    from ..lora import adapters_disabled

    batch = chosen.shape[0]
    state = generator.get_state()
    x_w, t, target_w = _noised(sampler, chosen, generator)
    generator.set_state(state)  # the same noise and level for the rejected latents
    x_l, _, target_l = _noised(sampler, rejected, generator)
    cond = sampler.family.encode(sampler.pipe, list(prompts), sampler.denoiser.device)
    cond = {key: torch.cat([value, value]) for key, value in cond.items()}  # one text encode for both halves
    x, tt, target = torch.cat([x_w, x_l]), torch.cat([t, t]), torch.cat([target_w, target_l])
    pred = sampler.family.predict(sampler.pipe, x, tt, cond, sampler.wrapped)
    with torch.no_grad(), adapters_disabled(sampler.denoiser):
        ref = sampler.family.predict(sampler.pipe, x, tt, cond, sampler.denoiser)
    err = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    err_ref = ((ref.float() - target.float()) ** 2).flatten(1).mean(1)
    diff = (err[:batch] - err_ref[:batch]) - (err[batch:] - err_ref[batch:])
    return -torch.nn.functional.logsigmoid(-0.5 * beta * diff).mean()


def kl_to_base(prediction: torch.Tensor, base_prediction: torch.Tensor) -> torch.Tensor:
    """The KL term of one denoising step: for Gaussian steps of equal variance, the KL between the tuned and the
    base model's step is proportional to the squared difference of their predictions (mean over elements)."""
    return ((prediction.float() - base_prediction.float()) ** 2).mean()


class RewardNormalizer:
    """Scales the reward before the loss. Only the scale matters for the gradient of a mean; a centred value
    is logged. "running" keeps an exponential mean/variance (saved in checkpoints for exact resume)."""

    def __init__(self, mode: str, momentum: float = 0.9):
        self.mode, self.momentum = mode, momentum
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return reward
        if self.mode == "batch":
            return (reward - reward.mean().detach()) / (reward.std(unbiased=False).detach() + 1e-6)
        batch_mean, batch_var = float(reward.detach().mean()), float(reward.detach().var(unbiased=False))
        m = 0.0 if self.count == 0 else self.momentum
        self.mean = m * self.mean + (1 - m) * batch_mean
        self.var = m * self.var + (1 - m) * batch_var
        self.count += 1
        return (reward - self.mean) / math.sqrt(self.var + 1e-6)

    def state_dict(self):
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def reward_loss(reward: torch.Tensor, trajectory_kl: torch.Tensor | None, optim, normalizer: RewardNormalizer):
    """`-loss_scale * normalise(reward).mean() + kl_weight * KL` (`optim` is the run's `OptimConfig`)."""
    loss = -optim.loss_scale * normalizer(reward).mean()
    if trajectory_kl is not None:
        loss = loss + optim.kl_weight * trajectory_kl
    return loss
