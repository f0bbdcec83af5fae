"""TinyWorld's latent diffusion model: component configs and the VAE trainer (README: "TinyWorld: the embedded default").

Choices, and why (the probe findings of shared/PITFALLS.md):
- Denoiser: a stock `UNet2DConditionModel` (SD-style, loads in `StableDiffusionPipeline`), two levels on
  16x16 latents (16 -> 8) with cross-attention only at the 8x8 level and in the mid block (1.7x faster on a CPU
  than attention everywhere, same quality in the probe), so the receptive field covers the whole canvas.
- Objective: **v-prediction**. With epsilon prediction the layout is decided by the initial noise and position
  stayed at chance in the probe; v-prediction supervises the clean image at the high noise levels where layout
  is decided and reached ~100% position with the same stock UNet (no coordinate channels, which would break
  stock loading). DDIM with trailing spacing.
- VAE: `AutoencoderKL` 64 px <-> 16x16x4 (three levels, channels 16/32/64: twice as fast to train as 32/64/64
  at the same quality), trained on renders with an edge-weighted L1 loss and a tiny KL (sharp corners matter
  for the shape attribute); latents are the posterior mean; `shift_factor` stays 0 (StableDiffusionPipeline
  ignores it).
- Text encoder: a small CLIP text model over the word-level tokenizer of the grammar, trained with the UNet.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import numpy as np
import torch

LATENT_CHANNELS = 4
TEXT_HIDDEN = 64


def tinyworld_tokenizer():
    from ..tiny.diffusion import clip_tokenizer

    return clip_tokenizer()


def tinyworld_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def tinyworld_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=64, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), norm_num_groups=8,
    )


def tinyworld_unet(width: int = 64):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=2,
        block_out_channels=(width, 2 * width), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=16,
    )


def tinyworld_scheduler(zero_snr: bool = True):
    """DDIM, v-prediction, trailing spacing, zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", 2023).

    Why zero SNR: without it the training input at t=999 still holds sqrt(0.0047) ~ 7% of the clean latent. A
    baseline built that way (`zero_snr=False`, otherwise the same recipe) placed objects at chance (position
    0.165 on 200 held-out images): it read the position from that leak instead of from the prompt, and at
    sampling time there is no leak. With zero SNR the model must take the position from the text."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, rescale_betas_zero_snr=zero_snr,
    )


def edge_weights(images: torch.Tensor, boost: float = 4.0) -> torch.Tensor:
    """Per-pixel weights `1 + boost * |gradient|` (normalised), so edges and corners count more."""
    gx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(1, keepdim=True)
    gy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(1, keepdim=True)
    g = torch.zeros_like(images[:, :1])
    g[..., :, 1:] += gx
    g[..., 1:, :] += gy
    return 1.0 + boost * g / (g.amax(dim=(2, 3), keepdim=True) + 1e-6)


def train_vae(
    vae,
    batch_fn: Callable[[np.random.Generator, int], np.ndarray],
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    decoder_only: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train `vae` on uint8 `(B, 64, 64, 3)` batches from `batch_fn(rng, B)` with the edge-weighted L1 loss.

    The whole VAE (posterior samples, a tiny KL) sets its `scaling_factor` from the latent std at the end. With
    `decoder_only` the encoder stays frozen and the decoder learns to decode its posterior mean (what a denoiser
    trained on those latents produces): the latent space and `scaling_factor` do not move, so a denoiser trained
    in it keeps working, and only the decoded images change (`refine_decoder` in `recipes.build_sft`).

    Returns the final figures: reconstruction PSNR (dB) of the posterior mean on a held-out batch and the latent
    std.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae.requires_grad_(not decoder_only)
    trained = [vae.decoder, vae.post_quant_conv] if decoder_only else [vae]
    params = [p for module in trained for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    vae.train()
    start = time.perf_counter()
    for step in range(steps):
        x = torch.from_numpy(batch_fn(rng, batch_size)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad() if decoder_only else contextlib.nullcontext():
            posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean if decoder_only else posterior.sample()).sample
        loss = (edge_weights(x) * (recon - x).abs()).mean()
        if not decoder_only:
            loss = loss + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"{'decoder' if decoder_only else 'vae'} step {step + 1}/{steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - start:.0f}s)")
    figures = reconstruction_figures(vae, batch_fn, seed)
    if not decoder_only:
        vae.register_to_config(scaling_factor=1.0 / figures["latent_std"])
    return figures


def reconstruction_figures(vae, batch_fn: Callable[[np.random.Generator, int], np.ndarray], seed: int = 0) -> dict:
    """PSNR (dB) of the decoded posterior mean and the latent std on a held-out batch of 64 (`seed + 1`)."""
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        x = torch.from_numpy(batch_fn(np.random.default_rng(seed + 1), 64)).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = vae.encode(x).latent_dist.mean
        recon = vae.decode(z).sample.clamp(-1, 1)
        mse = float(((recon - x) / 2).pow(2).mean())
        std = float(z.std())
    return {"psnr_db": -10 * math.log10(max(mse, 1e-12)), "latent_std": std}
