"""Differentiable sampling with truncated backprop: DRaFT-K, DRaFT-LV, ReFL and full backprop (README: "Reward fine-tuning: train_t2i.py").

Diffusers pipelines run under `no_grad`, so we write the loop ourselves on stock components: the pipeline's
`encode_prompt`, a fresh scheduler per trajectory (DDIM for epsilon/v UNets and PixArt, FlowMatchEuler for
flow DiTs), the VAE decoder. Only the steps that must carry a gradient build a graph:

- `draft_k` (Clark et al., "Directly Fine-Tuning Diffusion Models on Differentiable Rewards", 2023): the last
  K steps with grad, the T-K before them under `no_grad`; K fixed or drawn once per trajectory.
- `draft_lv`: the whole trajectory without grad, then `lv_samples` re-noised copies of the final step with
  grad (lower-variance gradient of the last step).
- `refl` (Xu et al., ImageReward, 2023): stop at a random late step, one step with grad, score its x0 prediction.
- `full`: every step with grad (memory grows with T; opt-in).

Memory: the no-grad steps keep no activations, so peak memory is flat in T; `checkpoint_steps` recomputes
each grad step's denoiser call in backward, so a grad step holds only its input until then.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from ..lora import adapters_disabled, lora_merged
from ..preprocess import from_signed
from ..runs.checks import check_choice, check_positive
from .families import get_denoiser_family
from .losses import classifier_free_guidance, kl_to_base

METHODS = ("draft_k", "refl", "draft_lv", "full")
K_DISTRIBUTIONS = ("fixed", "uniform", "gaussian")


@dataclass
class SamplingConfig:
    """The differentiable sampler (zr_align.diffusion.sampling)."""

    num_steps: int = 20  # T denoising steps per trajectory; no-grad steps cost time, not memory
    k: int = 1  # DRaFT-K: steps at the end of the trajectory that build a graph (memory grows with K)
    k_distribution: str = "fixed"  # fixed | uniform (K ~ U{1..k}) | gaussian (K ~ round|N(k, k_std)|), per trajectory
    k_std: float = 1.0  # std of the gaussian K draw
    refl_start: float = 0.75  # ReFL: the grad step is drawn from the last (1 - refl_start) of the trajectory
    lv_samples: int = 2  # DRaFT-LV: re-noised copies of the final step (each costs one denoiser call + decode)
    guidance_scale: float = 1.0  # classifier-free guidance; > 1 doubles denoiser cost (inside the graph too)
    timestep_spacing: str = "trailing"  # DDIM spacing (not used by flow families); "trailing" ends at t=1000/T-1
    embedded_guidance: float = 3.5  # Flux-dev's distilled guidance input (flux only; separate from CFG)
    checkpoint_steps: bool = True  # torch.utils.checkpoint per grad step: activations of 1 step, ~1 extra forward
    checkpoint_denoiser: bool = False  # the denoiser's own block checkpointing (more recompute, less memory)
    checkpoint_vae: bool = False  # VAE-decoder checkpointing
    # the no-grad steps with the LoRA folded into the base weights (restored exactly before the grad steps): skips
    # the adapter branch of every adapted layer (~8% of a no-grad call on TinyWorld, CPU); outputs differ by float
    # rounding (~1e-6), so runs are not bit-identical to unmerged ones; one process or DDP (not FSDP / ZeRO-3)
    merge_lora: bool = False

    def __post_init__(self):
        check_positive("sampling.num_steps", self.num_steps)
        check_positive("sampling.k", self.k)
        check_choice("sampling.k_distribution", self.k_distribution, K_DISTRIBUTIONS)
        check_choice("sampling.timestep_spacing", self.timestep_spacing, ("trailing", "leading", "linspace"))
        if self.k > self.num_steps:
            raise ValueError(f"sampling.k ({self.k}) cannot exceed sampling.num_steps ({self.num_steps})")
        if not 0.0 <= self.refl_start < 1.0:
            raise ValueError(f"sampling.refl_start must be in [0, 1); got {self.refl_start!r}")
        check_positive("sampling.lv_samples", self.lv_samples)
        check_positive("sampling.guidance_scale", self.guidance_scale)


@dataclass
class Trajectory:
    """A batch of generated images with a graph through the grad steps.

    Args:
        images: `(R * B, 3, H, W)` in [0, 1]; `R = repeats` copies per prompt (DRaFT-LV), image `r * B + b`.
        latents: the final latents `(B, C, h, w)`.
        grad_steps: indices (in the T-step schedule) of the steps that carry a gradient.
        kl: mean squared difference between the LoRA and the base model's predictions at the grad steps
            (None unless asked for): the KL of two Gaussians with the same variance, up to a constant.
    """

    images: torch.Tensor
    latents: torch.Tensor
    grad_steps: list[int]
    repeats: int = 1
    kl: torch.Tensor | None = None
    timesteps: list[int] = field(default_factory=list)


class DifferentiableSampler:
    """Generates images from prompts with a gradient path from the decoded pixels into the denoiser.

    Args:
        pipe: a stock diffusers pipeline of `family` (its components are used, its `__call__` is not).
        family: key of `zr_align.diffusion.families.DENOISER_FAMILIES`.
        config (`SamplingConfig`): steps, K, checkpointing, guidance.
        resolution: image side in pixels.
    """

    def __init__(self, pipe, family: str, config: SamplingConfig, resolution: int):
        self.pipe = pipe
        self.family = get_denoiser_family(family)
        self.config = config
        self.denoiser = pipe.unet if self.family.denoiser == "unet" else pipe.transformer
        # The module called where a gradient is built: the denoiser, or the DDP / FSDP / DeepSpeed module that
        # accelerate's `prepare` made of it (the trainer sets it), so that its gradients are reduced across ranks.
        # Calls without a gradient go to the denoiser itself (no collective, e.g. DDP's buffer broadcast).
        self.wrapped = self.denoiser
        # DiTs cut latents into patches (SD3, PixArt: patch_size 2; Flux packs 2x2): the latent side must divide.
        patch = max(self.family.latent_multiple, getattr(self.denoiser.config, "patch_size", 1) or 1)
        factor = pipe.vae_scale_factor * patch
        if resolution % factor:
            raise ValueError(
                f"image size {resolution} is not divisible by {factor} (VAE factor {pipe.vae_scale_factor}"
                f"{f' x latent patch {patch}' if patch > 1 else ''}); use a multiple of it"
            )
        self.resolution = resolution
        if config.checkpoint_denoiser:
            self.denoiser.enable_gradient_checkpointing()
        if config.checkpoint_vae:
            pipe.vae.enable_gradient_checkpointing()

    # ------------------------------------------------------------------ components
    def new_scheduler(self, num_steps: int):
        """A fresh scheduler per trajectory: no step index or state leaks from one trajectory to the next."""
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        config = dict(self.pipe.scheduler.config)
        device = self.denoiser.device
        if self.family.objective == "flow":
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
            kwargs = {}
            if scheduler.config.get("use_dynamic_shifting", False):
                from diffusers.pipelines.flux.pipeline_flux import calculate_shift

                seq_len = (self.resolution // self.pipe.vae_scale_factor // 2) ** 2
                kwargs["mu"] = calculate_shift(seq_len, scheduler.config.get("base_image_seq_len", 256),
                                               scheduler.config.get("max_image_seq_len", 4096),
                                               scheduler.config.get("base_shift", 0.5),
                                               scheduler.config.get("max_shift", 1.15))
            scheduler.set_timesteps(num_steps, device=device, **kwargs)
        else:
            # clip_sample would clamp x0 predictions to [-1, 1] and cut their gradient.
            scheduler = DDIMScheduler.from_config(config, timestep_spacing=self.config.timestep_spacing,
                                                  clip_sample=False)
            scheduler.set_timesteps(num_steps, device=device)
        return scheduler

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompt conditioning (frozen text encoders, no graph); with CFG, `[uncond; cond]` stacked."""
        device = self.denoiser.device
        cond = self.family.encode(self.pipe, list(prompts), device)
        if self.config.guidance_scale > 1.0:
            if self.family.name == "sdxl" and self.pipe.config.get("force_zeros_for_empty_prompt", False):
                uncond = {k: torch.zeros_like(v) for k, v in cond.items()}  # as the stock SDXL pipeline does
            else:
                uncond = self.family.encode(self.pipe, [""] * len(prompts), device)
            cond = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        if self.family.name == "flux":
            batch = next(iter(cond.values())).shape[0]
            cond["guidance"] = torch.full((batch,), self.config.embedded_guidance, device=device)
        return cond

    def initial_latents(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        side = self.resolution // self.pipe.vae_scale_factor
        channels = self.pipe.vae.config.latent_channels
        return torch.randn((batch, channels, side, side), generator=generator, dtype=torch.float32).to(
            self.denoiser.device, self.denoiser.dtype
        )

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: dict, use_checkpoint: bool = False):
        """The denoiser output at `(latents, t)`, with classifier-free guidance when configured."""

        def call(x):
            model = self.wrapped if torch.is_grad_enabled() else self.denoiser
            if self.config.guidance_scale > 1.0:
                uncond, text = self.family.predict(self.pipe, torch.cat([x, x]), t, cond, model).chunk(2)
                return classifier_free_guidance(uncond, text, self.config.guidance_scale)
            return self.family.predict(self.pipe, x, t, cond, model)

        if use_checkpoint:
            return checkpoint(call, latents, use_reentrant=False)
        return call(latents)

    def step(self, scheduler, model_output, t, index: int, latents):
        """One denoising step: `(x_{t-1}, x0_hat)`. Differentiable."""
        if self.family.objective == "flow":
            # FlowMatchEuler: x_{next} = x + (sigma_next - sigma) * v, and x0 = x - sigma * v (v = noise - x0).
            sigma, sigma_next = scheduler.sigmas[index], scheduler.sigmas[index + 1]
            return latents + (sigma_next - sigma) * model_output, latents - sigma * model_output
        out = scheduler.step(model_output, t, latents, eta=0.0, return_dict=True)
        return out.prev_sample, out.pred_original_sample

    def renoise(self, scheduler, x0, noise, t, index: int):
        """`x_t` from a clean `x0` at the noise level of step `index`."""
        if self.family.objective == "flow":
            sigma = scheduler.sigmas[index]
            return (1.0 - sigma) * x0 + sigma * noise
        return scheduler.add_noise(x0, noise, t.reshape(1))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1]. Differentiable."""
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor", None) or 0.0
        z = latents.to(vae.dtype) / vae.config.scaling_factor + shift
        return from_signed(vae.decode(z, return_dict=False)[0]).float()

    # ------------------------------------------------------------------ trajectories
    def draw_k(self, generator: torch.Generator) -> int:
        """K for one trajectory: fixed, uniform on {1..k}, or round(|N(k, k_std)|), within [1, T]."""
        c = self.config
        if c.k_distribution == "fixed":
            k = c.k
        elif c.k_distribution == "uniform":
            k = int(torch.randint(1, c.k + 1, (1,), generator=generator))
        else:
            k = round(abs(c.k + c.k_std * float(torch.randn(1, generator=generator))))
        return max(1, min(c.num_steps, k))

    def sample(
        self,
        prompts: list[str],
        method: str = "draft_k",
        generator: torch.Generator | None = None,
        kl: bool = False,
        latents: torch.Tensor | None = None,
        shape_generator: torch.Generator | None = None,
    ) -> Trajectory:
        """Generate one image per prompt; the returned images carry a graph as `method` prescribes.

        `generator` (CPU) drives every random draw (noise, K, the ReFL step), so a trajectory is reproducible.
        `shape_generator`, if given, draws what fixes the number of denoiser calls (K, the ReFL step) instead: with
        sharded weights (FSDP, ZeRO-3) every rank must make the same calls, so the trainer passes one seeded alike
        on every rank.
        """
        check_choice("method", method, METHODS)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        shape_generator = shape_generator if shape_generator is not None else generator
        T = self.config.num_steps
        cond = self.encode(prompts)
        scheduler = self.new_scheduler(T)
        timesteps = scheduler.timesteps
        x = self.initial_latents(len(prompts), generator) if latents is None else latents
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)

        if method == "full":
            grad_from, stop = 0, T
        elif method == "draft_k":
            grad_from, stop = T - self.draw_k(shape_generator), T
        elif method == "refl":
            first = min(T - 1, int(math.floor(self.config.refl_start * T)))
            stop = int(torch.randint(first, T, (1,), generator=shape_generator)) + 1
            grad_from = stop - 1
        else:  # draft_lv: the trajectory without grad, then the re-noised final steps below
            grad_from, stop = T, T

        kl_terms = []
        x0 = x
        no_grad_until = grad_from if torch.is_grad_enabled() else stop
        merged = self.config.merge_lora and no_grad_until > 0
        with lora_merged(self.denoiser) if merged else contextlib.nullcontext(), torch.no_grad():
            for i in range(min(no_grad_until, stop)):
                x, x0 = self.step(scheduler, self.predict(x, timesteps[i], cond), timesteps[i], i, x)
        for i in range(no_grad_until, stop):  # with grad
            t = timesteps[i]
            out = self.predict(x, t, cond, use_checkpoint=self.config.checkpoint_steps)
            if kl:
                kl_terms.append(self._kl_term(x, t, cond, out))
            x, x0 = self.step(scheduler, out, t, i, x)
        grad_steps = list(range(grad_from, stop))

        if method == "draft_lv":
            return self._draft_lv(prompts, scheduler, x.detach(), cond, generator, kl)
        # ReFL scores the x0 prediction at its grad step; the others the end of the trajectory (x0 == x there
        # for DDIM with trailing spacing; for flow the last sigma is 0).
        final = x0 if method == "refl" else x
        images = self.decode(final)
        kl_value = torch.stack(kl_terms).mean() if kl_terms else None
        return Trajectory(images, final, grad_steps, 1, kl_value, [int(timesteps[i]) for i in grad_steps])

    def _kl_term(self, x, t, cond, out):
        """The KL-to-base term of one grad step (`losses.kl_to_base`), the base being the LoRA switched off."""
        with torch.no_grad(), adapters_disabled(self.denoiser):
            base = self.predict(x, t, cond)
        return kl_to_base(out, base)

    def _draft_lv(self, prompts, scheduler, x_final, cond, generator, kl):
        """DRaFT-LV: re-noise the final sample `lv_samples` times to the last step's level, denoise with grad."""
        T, n = self.config.num_steps, self.config.lv_samples
        t = scheduler.timesteps[T - 1]
        images, kl_terms = [], []
        for _ in range(n):
            noise = torch.randn(x_final.shape, generator=generator, dtype=torch.float32).to(x_final)
            x_t = self.renoise(scheduler, x_final, noise, t, T - 1)
            out = self.predict(x_t, t, cond, use_checkpoint=self.config.checkpoint_steps)
            if kl:
                kl_terms.append(self._kl_term(x_t, t, cond, out))
            _, x0 = self.step(scheduler, out, t, T - 1, x_t)
            images.append(self.decode(x0))
        kl_value = torch.stack(kl_terms).mean() if kl_terms else None
        return Trajectory(torch.cat(images), x_final, [T - 1] * n, n, kl_value, [int(t)] * n)
