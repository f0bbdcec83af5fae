"""Where TinyWorld's realism points go: the judge's artefact flags on clean renders, on the frozen VAE's
reconstructions of those renders, and on the SFT baseline's samples (CPU, about 1 minute).

    python benchmarks/realism_ceiling.py [--model models/tinyworld/sft] [--split validation] [--images 96]

The VAE decoder is frozen in reward fine-tuning (only the denoiser gets a LoRA), so what it does to a *perfect*
latent (the encoding of a clean render) bounds what any fine-tuned denoiser can reach: an artefact flagged on the
reconstructions cannot be trained away through the denoiser. Image i shows prompt i mod |split| with render seed
i and noise seed 10000 + i (the demo's evaluation seeds).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from zr_align.tinyworld import render, split_prompts
from zr_align.tinyworld.judge import ARTEFACTS, judge_images, summarize
from zr_align.tinyworld.sample import generate, load_pipeline


def _row(name: str, images: np.ndarray, prompts: list[str]) -> str:
    verdicts = judge_images(images, prompts)
    summary = summarize(verdicts)
    flags = " ".join(f"{summary['artefacts'][a]:>6.2f}" for a in ARTEFACTS)
    sharp = np.median([v.measurements.get("sharpness", np.nan) for v in verdicts])
    return f"{name:<18} {summary['mean_scores']['realism']:>7.2f} {sharp:>9.3f} {flags}"


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/tinyworld/sft", help="a TinyWorld diffusers folder")
    parser.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args()
    split = split_prompts(0).as_dict()[args.split]
    prompts = [split[i % len(split)] for i in range(args.images)]
    pipe = load_pipeline(args.model)

    renders = np.stack([render(p, seed=i).image for i, p in enumerate(prompts)])
    x = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    reconstructions = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    samples = generate(pipe, prompts, seed=10_000)

    print(f"{args.images} images of the {args.split} split; {args.model}")
    print(f"{'images':<18} {'realism':>7} {'sharpness':>9} " + " ".join(f"{a[:6]:>6}" for a in ARTEFACTS))
    print("(mean realism score, median judge sharpness (blur below 0.45), share flagged per artefact)")
    for name, images in (("clean renders", renders), ("VAE(render)", reconstructions), ("SFT samples", samples)):
        print(_row(name, images, prompts))


if __name__ == "__main__":
    main()
