"""Can a reward model sharpen TinyWorld's images through the VAE decoder? A probe, not a product feature (CPU, about
4 minutes at 2 threads).

    python benchmarks/decoder_reward_probe.py [--reward models/tinyworld/student] [--anchor 0] [--steps 200]

`benchmarks/realism_ceiling.py` shows the frozen decoder blurs even perfect latents, so denoiser fine-tuning cannot
lift the judge's realism. This probe unfreezes the decoder alone: latents of the SFT baseline for train prompts
are sampled once (no grad), then Adam maximises the reward of their decodings (equal dimension weights), with an
optional anchor `--anchor L`: L times the squared difference of 5x5 box-blurred images to the base decoder's (it
keeps colours and background, leaves edges free). Every 50 steps the judge scores the decodings of latents of
the validation prompts (noise seeds 10000 + i) against the base decoder's: realism, blur / colour-shift counts,
per-attribute accuracy and GSB net. If the reward saw blur, blur counts would fall.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from zr_align.rewards import ZRewardModel
from zr_align.tinyworld import split_prompts
from zr_align.tinyworld.judge import judge_images, net_preference, summarize
from zr_align.tinyworld.sample import generate, load_pipeline


def _judged(images: torch.Tensor, prompts: list[str]):
    return judge_images((images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy(), prompts)


def _line(step, verdicts, base) -> str:
    summary, n = summarize(verdicts), len(verdicts)
    acc = " ".join(f"{a} {v:.3f}" for a, v in summary["accuracy"].items())
    blur, shift = (round(summary["artefacts"][a] * n) for a in ("blur", "color_shift"))
    gsb = f" GSB vs base {net_preference(verdicts, base)['net']:+.1%}" if base is not None else ""
    return (f"step {step:>4}: realism {summary['mean_scores']['realism']:.2f}, blur {blur}/{n}, colour shift "
            f"{shift}/{n}, {acc}{gsb}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/tinyworld/sft")
    parser.add_argument("--reward", default="models/tinyworld/student")
    parser.add_argument("--anchor", type=float, default=0.0, help="weight of the low-pass anchor to the base decoder")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    splits = split_prompts(0)
    train = [splits.train[i % len(splits.train)] for i in range(256)]
    held_out = [splits.validation[i % len(splits.validation)] for i in range(96)]
    pipe = load_pipeline(args.model)
    reward = ZRewardModel.from_pretrained(args.reward).eval().requires_grad_(False)
    vae = pipe.vae.requires_grad_(False)

    def decode(latents):
        return (vae.decode(latents).sample + 1) / 2

    def low(images):  # 5x5 box blur: colours and background, not edges
        return F.avg_pool2d(images, 5, 1, 2, count_include_pad=False)

    start = time.perf_counter()
    with torch.no_grad():
        train_latents, held_latents = (generate(pipe, p, seed=seed, batch_size=32, output_type="latent")
                                       / vae.config.scaling_factor for p, seed in ((train, 0), (held_out, 10_000)))
        train_base = decode(train_latents)
        base = _judged(decode(held_latents), held_out)
    print(f"{args.reward}, anchor {args.anchor}, lr {args.lr}; latents in {time.perf_counter() - start:.0f} s")
    print(_line(0, base, None))
    params = list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=args.lr)
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train), (8,))
        images = decode(train_latents[idx])
        out = reward(images.clamp(0, 1), [train[i] for i in idx])
        loss = -torch.stack([d.mean for d in out.scores.values()], 1).mean()
        loss = loss + args.anchor * ((low(images) - low(train_base[idx])) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0:
            with torch.no_grad():
                print(_line(step, _judged(decode(held_latents), held_out), base), flush=True)


if __name__ == "__main__":
    main()
