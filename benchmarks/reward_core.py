"""Figures for the reward core on the tiny model of every family (CPU): HF parity, sensitivity, throughput.

    python benchmarks/reward_core.py [--families qwen2_vl llava] [--sizes 64x64 48x80 50x70 90x33]

Parity: largest |E_ours - E_hf| over dimensions, sizes and 3 images per size (same image through our torch
preprocessing and through the stock HF processor). Sensitivity: mean |E(a) - E(b)| between different images,
i.e. how far apart scores of different images are, for scale. Throughput: differentiable forward+backward and
no-grad scoring, images per second at batch 8, 64x64.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from zr_align.rewards import ZRewardModel  # noqa: E402
from zr_align.testing import TINY_BUILDERS, tiny_reward_model  # noqa: E402
from zr_align.testing.parity import hf_processor, parity_gap  # noqa: E402

PROMPT = "a large red circle on the left"


def smooth_image(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [127 + 110 * np.sin(xx / rng.uniform(2, 6) + rng.uniform(0, 3)) * np.cos(yy / rng.uniform(2, 6) + c)
             for c in range(3)]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def timed(fn, repeats=5):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="*", default=sorted(TINY_BUILDERS))
    parser.add_argument("--sizes", nargs="*", default=["64x64", "48x80", "50x70", "90x33"])
    parser.add_argument("--quantize", action="store_true", help="emulate the HF processor's 8-bit rounding too")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quantize={args.quantize}")
    print(f"{'family':<12}{'params':>9}{'max|dE| parity':>16}{'sensitivity':>13}{'grad img/s':>12}{'score img/s':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            folder = tiny_reward_model(family, os.path.join(tmp, family))
            model = ZRewardModel.from_pretrained(folder, quantize=args.quantize)
            processor = hf_processor(folder)
            gaps = [parity_gap(model, processor, smooth_image(h, w, seed), PROMPT)
                    for (h, w) in sizes for seed in range(3)]
            images = torch.stack([torch.from_numpy(smooth_image(64, 64, s)).permute(2, 0, 1).float() / 255
                                  for s in range(8)])
            with torch.no_grad():
                means = torch.stack([d.mean for d in model(images, [PROMPT] * 8).scores.values()], 1)  # (8, D)
            sensitivity = (means[:, None] - means[None]).abs().mean().item() * 8 / 7  # off-diagonal mean

            def grad_step():
                x = images.clone().requires_grad_(True)
                model(x, [PROMPT] * 8).reward.sum().backward()

            t_grad = timed(grad_step)
            t_score = timed(lambda: model.score(images, [PROMPT] * 8, batch_size=8))
            params = sum(p.numel() for p in model.model.parameters())
            print(f"{family:<12}{params:>9,}{max(gaps):>16.2e}{sensitivity:>13.3f}{8 / t_grad:>12.1f}"
                  f"{8 / t_score:>13.1f}")


if __name__ == "__main__":
    main()
