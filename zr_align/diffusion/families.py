"""How each diffusion family encodes prompts and calls its denoiser, on stock diffusers components.

One `DenoiserFamily` per family in the explicit registry `DENOISER_FAMILIES`. The sampler only sees
`encode(pipe, prompts, negative)` -> conditioning dict (batch-first tensors) and
`predict(pipe, latents, t, cond, model=None)` -> the model output in the shape of `latents`; `model` is the module
to call, by default the pipeline's own denoiser (the trainer passes its DDP / FSDP / DeepSpeed wrapper for steps
that carry a gradient). Everything here is on the gradient path (no `no_grad`, no `.item()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def _sd_encode(pipe, prompts, device):
    embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"encoder_hidden_states": embeds}


def _sd_predict(pipe, latents, t, cond, model=None):
    model = pipe.unet if model is None else model
    return model(latents, t, encoder_hidden_states=cond["encoder_hidden_states"], return_dict=False)[0]


def _sdxl_encode(pipe, prompts, device):
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds, "text_embeds": pooled}


def _sdxl_predict(pipe, latents, t, cond, model=None):
    # SDXL micro-conditioning: (original h, w, crop top, left, target h, w), all at the generated size.
    h, w = latents.shape[-2] * pipe.vae_scale_factor, latents.shape[-1] * pipe.vae_scale_factor
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=latents.dtype, device=latents.device)
    added = {"text_embeds": cond["text_embeds"], "time_ids": time_ids.expand(latents.shape[0], -1)}
    model = pipe.unet if model is None else model
    return model(latents, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added,
                 return_dict=False)[0]


def _sd3_encode(pipe, prompts, device):
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def _sd3_predict(pipe, latents, t, cond, model=None):
    timestep = t.expand(latents.shape[0]) if t.ndim else t.repeat(latents.shape[0])
    model = pipe.transformer if model is None else model
    return model(hidden_states=latents, timestep=timestep, return_dict=False, **cond)[0]


def _pixart_encode(pipe, prompts, device):
    # the stock PixArt-Sigma pipeline encodes 300 T5 tokens
    embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                            max_sequence_length=min(300, pipe.tokenizer.model_max_length))
    return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}


def _pixart_predict(pipe, latents, t, cond, model=None):
    timestep = t.expand(latents.shape[0]) if t.ndim else t.repeat(latents.shape[0])
    model = pipe.transformer if model is None else model
    out = model(latents, timestep=timestep, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                return_dict=False, **cond)[0]
    # PixArt predicts (epsilon, learned variance): keep the epsilon half.
    return out[:, : latents.shape[1]] if out.shape[1] == 2 * latents.shape[1] else out


def _flux_encode(pipe, prompts, device):
    embeds, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device, num_images_per_prompt=1,
                                           max_sequence_length=pipe.tokenizer_2.model_max_length)
    return {"encoder_hidden_states": embeds, "pooled_projections": pooled}


def _flux_predict(pipe, latents, t, cond, model=None):
    b, c, h, w = latents.shape
    # Flux works on 2x2 patches: (B, C, H, W) -> (B, H/2 * W/2, 4C), with (0, row, col) position ids.
    packed = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    rows = torch.arange(h // 2, device=latents.device).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, device=latents.device).repeat(h // 2)
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(latents.dtype)
    txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=latents.device, dtype=latents.dtype)
    timestep = (t.expand(b) if t.ndim else t.repeat(b)).to(latents.dtype) / 1000.0
    cond = dict(cond)
    guidance = cond.pop("guidance", None)  # Flux-dev's embedded guidance, set by the sampler
    extra = {}
    if pipe.transformer.config.guidance_embeds:
        value = guidance if guidance is not None else torch.full((b,), 3.5, device=latents.device)
        extra["guidance"] = value[:b].to(latents.dtype)
    model = pipe.transformer if model is None else model
    out = model(hidden_states=packed, timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, return_dict=False, **cond,
                **extra)[0]
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _pipeline_class(name: str) -> Callable[[], type]:
    def load():
        import diffusers

        return {
            "StableDiffusionPipeline": lambda: diffusers.StableDiffusionPipeline,
            "StableDiffusionXLPipeline": lambda: diffusers.StableDiffusionXLPipeline,
            "StableDiffusion3Pipeline": lambda: diffusers.StableDiffusion3Pipeline,
            "PixArtSigmaPipeline": lambda: diffusers.PixArtSigmaPipeline,
            "FluxPipeline": lambda: diffusers.FluxPipeline,
        }[name]()

    return load


@dataclass(frozen=True)
class DenoiserFamily:
    """A diffusion family: its stock pipeline class, denoiser attribute, objective and call conventions.

    Args:
        objective: "diffusion" (DDIM over epsilon / v predictions) or "flow" (flow matching, Euler steps).
        latent_multiple: latent sides must be multiples of this (Flux packs 2x2 latent patches).
    """

    name: str
    pipeline_class: Callable[[], type]
    denoiser: str  # attribute of the pipeline: "unet" or "transformer"
    objective: str
    encode: Callable
    predict: Callable
    latent_multiple: int = 1


DENOISER_FAMILIES: dict[str, DenoiserFamily] = {
    "sd": DenoiserFamily("sd", _pipeline_class("StableDiffusionPipeline"), "unet", "diffusion", _sd_encode,
                         _sd_predict),
    "sdxl": DenoiserFamily("sdxl", _pipeline_class("StableDiffusionXLPipeline"), "unet", "diffusion",
                           _sdxl_encode, _sdxl_predict),
    "sd3": DenoiserFamily("sd3", _pipeline_class("StableDiffusion3Pipeline"), "transformer", "flow", _sd3_encode,
                          _sd3_predict),
    "pixart": DenoiserFamily("pixart", _pipeline_class("PixArtSigmaPipeline"), "transformer", "diffusion",
                             _pixart_encode, _pixart_predict),
    "flux": DenoiserFamily("flux", _pipeline_class("FluxPipeline"), "transformer", "flow", _flux_encode,
                           _flux_predict, latent_multiple=2),
}


def get_denoiser_family(name: str) -> DenoiserFamily:
    if name not in DENOISER_FAMILIES:
        raise ValueError(f"unknown diffusion family {name!r}; supported: {', '.join(DENOISER_FAMILIES)}")
    return DENOISER_FAMILIES[name]
