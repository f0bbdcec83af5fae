"""What reward-guided sampling needs from a stock diffusers pipeline: its family, the engine's sampler over its
components, initial noise from per-image seeds, a plain call, frozen weights while a gradient is taken, and the
reward and LoRA it is given."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..diffusion.families import DENOISER_FAMILIES
from ..diffusion.sampling import DifferentiableSampler, SamplingConfig

# Families whose stock pipelines guidance and noise optimisation are tested with: their pipelines have
# `callback_on_step_end` with the prompt embeddings among its tensor inputs, and latents the engine's families
# handle unpacked. PixArt's pipeline has no `callback_on_step_end`; Flux packs its latents.
GUIDED_FAMILIES = ("sd", "sdxl", "sd3")
# Best-of-N candidate k of image i is drawn with seed `seed_i + k * CANDIDATE_SEED_STRIDE` (k = 0: the plain
# sample's own noise), so every image's candidates are the same whatever the batch.
CANDIDATE_SEED_STRIDE = 1_000_003


def pipeline_family(pipe) -> str:
    """The `zr_align.diffusion` family of a stock pipeline instance; a one-line `ValueError` for any other."""
    name = type(pipe).__name__
    for family in GUIDED_FAMILIES:
        if name == DENOISER_FAMILIES[family].pipeline_class().__name__:
            return family
    supported = ", ".join(DENOISER_FAMILIES[f].pipeline_class().__name__ for f in GUIDED_FAMILIES)
    raise ValueError(f"reward-guided sampling does not support {name}; supported pipelines: {supported}")


def denoiser_of(pipe):
    return pipe.unet if DENOISER_FAMILIES[pipeline_family(pipe)].denoiser == "unet" else pipe.transformer


def make_sampler(pipe, latents: torch.Tensor, num_steps: int, guidance_scale: float = 1.0,
                 checkpoint_steps: bool = False) -> DifferentiableSampler:
    """The engine's differentiable sampler over `pipe`'s own components, for latents shaped like `latents`.

    It only reads the pipeline: no checkpointing switch of the denoiser or VAE is turned on.
    """
    config = SamplingConfig(num_steps=num_steps, k=num_steps, guidance_scale=max(1.0, guidance_scale),
                            checkpoint_steps=checkpoint_steps)
    return DifferentiableSampler(pipe, pipeline_family(pipe), config, latents.shape[-2] * pipe.vae_scale_factor)


def default_size(pipe) -> int:
    """The image side the stock pipeline generates by default (its denoiser's sample size times the VAE factor)."""
    return denoiser_of(pipe).config.sample_size * pipe.vae_scale_factor


def initial_noise(pipe, seeds: list[int], size: int | None = None) -> torch.Tensor:
    """`(B, C, h, w)` standard normal latents, image `i` drawn from its own generator seeded with `seeds[i]` (as
    `zr-align tinyworld sample` draws them), so a comparison at equal seeds starts every mode from the same noise."""
    side = (size or default_size(pipe)) // pipe.vae_scale_factor
    channels = pipe.vae.config.latent_channels
    noise = [torch.randn((channels, side, side), generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(denoiser_of(pipe).device, denoiser_of(pipe).dtype)


class _FinalLatents(PipelineCallback):
    """Keeps the latents the pipeline hands to its last callback: the final latents, which it then decodes."""

    def __init__(self):
        super().__init__()
        self.latents = None

    @property
    def tensor_inputs(self) -> list[str]:
        return ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.latents = callback_kwargs["latents"]
        return callback_kwargs


def run_pipeline(pipe, prompts: list[str], latents: torch.Tensor, num_inference_steps: int,
                 guidance_scale: float = 1.0, callback=None, return_latents: bool = False):
    """The stock pipeline's own `__call__` from `latents`: images `(B, 3, H, W)` in [0, 1], no graph.

    `return_latents`: also the final latents the images were decoded from `(B, C, h, w)` (scaled as the denoiser
    sees them; after `callback`, which runs first), as `(images, final_latents)`."""
    side = latents.shape[-2] * pipe.vae_scale_factor, latents.shape[-1] * pipe.vae_scale_factor
    final = _FinalLatents() if return_latents else None
    if final is not None:
        callback = MultiPipelineCallbacks([callback, final]) if callback is not None else final
    out = pipe(prompt=list(prompts), latents=latents, num_inference_steps=num_inference_steps,
               guidance_scale=guidance_scale, height=side[0], width=side[1], output_type="pt",
               callback_on_step_end=callback)
    if final is None:
        return out.images.float()
    return out.images.float(), final.latents.detach().float()


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module):
    """Inside the block no weight of `modules` requires grad, so a gradient with respect to the latents keeps no
    activations for weight gradients; every `requires_grad` flag is restored after (the pipeline is left as found)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def require_differentiable(reward, mode: str) -> None:
    if not getattr(reward, "differentiable", False):
        raise ValueError(f"mode {mode} back-propagates through the reward, but {type(reward).__name__} is not "
                         "differentiable; use a ZRewardModel, or mode best_of_n (no gradient needed)")


def load_reward(reward, device=None):
    """A reward callable as given, or a `ZRewardModel` loaded from a folder path (frozen, on `device`)."""
    if isinstance(reward, (str, Path)):
        from ..rewards import ZRewardModel

        reward = ZRewardModel.from_pretrained(reward)
        if device is not None:
            reward = reward.to(device)
    if not callable(reward):
        raise ValueError(f"reward must be a reward-model folder or a reward callable; got {type(reward).__name__}")
    return reward


def score_images(reward, images: torch.Tensor, prompts: list[str], batch_size: int = 16) -> torch.Tensor:
    """`(B,)` rewards without a graph: the reward's batched `score` when it has one, else a no-grad call."""
    if hasattr(reward, "score"):
        return reward.score(images, list(prompts), batch_size=batch_size).reward.float()
    with torch.no_grad():
        return reward(images, list(prompts)).reward.float()


def load_pipeline(model_dir, lora_dir=None, dtype: torch.dtype = torch.float32):
    """The stock pipeline of a local diffusers folder (one of the guided families), with an optional LoRA written
    by `train_t2i.py`; a LoRA of another model is refused before peft touches the pipeline."""
    index_path = Path(model_dir) / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"{model_dir} is not a diffusers pipeline folder (no model_index.json)")
    declared = json.loads(index_path.read_text())["_class_name"]
    classes = {DENOISER_FAMILIES[f].pipeline_class().__name__: DENOISER_FAMILIES[f] for f in GUIDED_FAMILIES}
    if declared not in classes:
        raise ValueError(f"reward-guided sampling does not support {declared}; supported pipelines: "
                         f"{', '.join(classes)}")
    pipe = classes[declared].pipeline_class().from_pretrained(model_dir, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        load_lora(pipe, lora_dir)
    return pipe


def load_lora(pipe, lora_dir) -> None:
    """`pipe.load_lora_weights(lora_dir)` after `zr_align.lora.check_lora_fits`: another family's LoRA is a one-line
    `ValueError` and leaves the pipeline untouched."""
    from ..lora import check_lora_fits

    check_lora_fits(denoiser_of(pipe), lora_dir)
    pipe.load_lora_weights(lora_dir)
