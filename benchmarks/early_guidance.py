"""What classifier-free guidance on the first denoising steps does to TinyWorld samples: the judge's per-attribute
accuracy and colour-shift rate of the SFT baseline sampled with guidance scale W on the first N of 20 steps (then
none), with optional guidance rescale (Lin et al. 2024). CPU, one thread, about 30 s per setting.

    python benchmarks/early_guidance.py [--model models/tinyworld/sft] [--split validation] [--images 200] \
        [SETTING ...]      # SETTING = [c]W:N[:RESCALE], e.g. 3:5:0.7 or c3:10:0.7; default: the sessions' tables

`c`: centred guidance (`optim.cfg_distill_center`), `c + (W - 1) (d - mean d)` with `d = c - u` less its mean over
the image per channel: the guidance moves the layout and leaves the global tint to the conditional prediction.

It is the measurement behind `optim.cfg_distill_*` (guidance distillation on the top of the noise range): the
layout (position) is decided on the first steps, where guidance places the object right, while guidance on later
steps costs colour. Image i shows prompt i mod |split| with noise seed 10000 + i (the demo's evaluation seeds), as
`zr-align compare` draws them; W:0 reproduces plain sampling exactly.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from zr_align.diffusion.losses import classifier_free_guidance
from zr_align.tinyworld import split_prompts
from zr_align.tinyworld.judge import judge_images, summarize
from zr_align.tinyworld.sample import load_pipeline

SETTINGS = ("1:0", "1.5:20", "2:20", "3:20", "3:3", "3:5", "2:5", "2:8", "3:8", "3:5:0.7", "3:5:1", "2:5:0.7",
            "3:8:0.7", "c3:5:0.7", "c3:8:0.7", "c3:10:0.7", "c3:8:1", "c4:5:0.7")


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: list[int], scale: float, steps_guided: int, rescale: float,
           steps: int = 20, center: bool = False) -> np.ndarray:
    """uint8 images: the pipeline's scheduler and components, guidance on the first `steps_guided` steps only
    (`center`: the guidance direction less its per-channel mean over the image)."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True)
    latents = torch.stack([torch.randn((4, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds])
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.scale_model_input(latents, t)
        if i < steps_guided and scale != 1.0:
            u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            out = classifier_free_guidance(u, c, scale, rescale, center)
        else:
            out = pipe.unet(x, t, encoder_hidden_states=cond).sample
        latents = scheduler.step(out, t, latents).prev_sample
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return ((images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/tinyworld/sft")
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("settings", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    held_out = split_prompts(0).as_dict()[args.split]
    prompts = [held_out[i % len(held_out)] for i in range(args.images)]
    pipe = load_pipeline(args.model)
    print(f"{args.model}, {args.images} images of the {args.split} prompts; W:N[:R] = scale W on the first N of 20 "
          "steps [guidance rescale R]")
    print(f"{'setting':<10} {'size':>6} {'colour':>7} {'shape':>6} {'position':>8} {'all four':>8} {'col.shift':>9}")
    for setting in args.settings:
        center = setting.startswith("c")
        parts = setting.removeprefix("c").split(":")
        scale, guided, rescale = float(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0
        chunks = [(prompts[s:s + 50], list(range(10000 + s, 10000 + min(s + 50, len(prompts)))))
                  for s in range(0, len(prompts), 50)]
        images = np.concatenate([sample(pipe, chunk, seeds, scale, guided, rescale, center=center)
                                 for chunk, seeds in chunks])
        summary = summarize(judge_images(images, prompts))
        a = summary["accuracy"]
        print(f"{setting:<10} {a['size']:>6.3f} {a['color']:>7.3f} {a['shape']:>6.3f} {a['position']:>8.3f} "
              f"{summary['all_correct']:>8.3f} {summary['artefacts']['color_shift']:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
