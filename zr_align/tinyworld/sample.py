"""Sampling a TinyWorld model (optionally with a LoRA) into PNGs + a JSONL index, and judging samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def load_pipeline(model_dir, lora_dir=None):
    """The stock StableDiffusionPipeline of a TinyWorld model folder (float32), with an optional LoRA."""
    from diffusers import StableDiffusionPipeline

    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise ValueError(f"{model_dir} is not a diffusers pipeline folder (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        if not (Path(lora_dir) / "pytorch_lora_weights.safetensors").is_file():
            raise ValueError(f"{lora_dir} has no pytorch_lora_weights.safetensors")
        pipe.load_lora_weights(lora_dir)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], seed: int = 0, steps: int = 20, batch_size: int = 16,
             output_type: str = "np"):
    """uint8 `(N, 64, 64, 3)` images, one per prompt; image `i` uses the noise of seed `seed + i`, so the same
    prompt list always gets the same noise (a fair comparison of two models on the same seeds). With
    `output_type="latent"`: the final latents `(N, 4, 16, 16)` before decoding, as a tensor (scaled as the
    pipeline returns them; divide by `pipe.vae.config.scaling_factor` to decode)."""
    if output_type not in ("np", "latent"):
        raise ValueError(f"output_type must be 'np' or 'latent'; got {output_type!r}")
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        latents = torch.stack([torch.randn((4, 16, 16), generator=torch.Generator().manual_seed(seed + start + i))
                               for i in range(len(chunk))])
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=1.0, latents=latents, output_type=output_type,
                   height=64, width=64)
        outputs.append(out.images if output_type == "latent" else (out.images * 255).round().astype(np.uint8))
    return torch.cat(outputs) if output_type == "latent" else np.concatenate(outputs)


@torch.no_grad()
def decode_roundtrip(pipe, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 `(N, H, W, 3)` images passed through a pipeline's VAE: encoded, the posterior's mean decoded, then
    post-processed and rounded as [`generate`] rounds the pipeline's samples. A render takes the generator's decoder
    look (soft edges, its background and palette) and keeps its content (docs/tinyworld_rewards.md, "Renders
    through the generator's decoder")."""
    vae, outputs = pipe.vae, []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        x = (x.to(vae.device, torch.float32) / 127.5 - 1).to(vae.dtype)  # as the VAE was trained (`model.py`)
        decoded = pipe.image_processor.postprocess(vae.decode(vae.encode(x).latent_dist.mean).sample, "np")
        outputs.append((decoded * 255).round().astype(np.uint8))
    return np.concatenate(outputs) if outputs else np.zeros((0, *images.shape[1:]), np.uint8)


def write_samples(images: np.ndarray, prompts: list[str], out_dir) -> Path:
    """PNGs `00000.png`, ... and `samples.jsonl` lines `{"image": "00000.png", "prompt": ...}`."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        name = f"{i:05d}.png"
        Image.fromarray(image).save(out_dir / name)
        lines.append(json.dumps({"image": name, "prompt": prompt}))
    index = out_dir / "samples.jsonl"
    index.write_text("\n".join(lines) + "\n")
    return index
