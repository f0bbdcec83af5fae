"""Judge figures of a TinyWorld generator on held-out test prompts, and a sample grid.

    python benchmarks/tinyworld_sft.py [--model models/tinyworld/sft] [--lora DIR] [--n 200] [--grid docs/x.png]

The test split's prompts (never trained on) are cycled to `--n` images, image i with noise seed i. Prints
per-attribute accuracy (chance: size 1/2, colour 1/6, shape 1/3, position 1/5), the all-correct rate and
mean rubric scores by the ground-truth judge.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    from zr_align.tinyworld.grammar import split_prompts
    from zr_align.tinyworld.judge import judge_images, summarize
    from zr_align.tinyworld.sample import generate, load_pipeline

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/tinyworld/sft")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grid", default=None, help="write a PNG grid of the first 32 samples here")
    args = parser.parse_args()
    test = split_prompts(0).test
    prompts = [test[i % len(test)] for i in range(args.n)]
    images = generate(load_pipeline(args.model, args.lora), prompts, seed=0, steps=args.steps)
    summary = summarize(judge_images(images, prompts))
    print(json.dumps({"model": args.model, "lora": args.lora, "prompts": "test split", **summary}, indent=1))
    if args.grid:
        from PIL import Image, ImageDraw

        n, cols = min(32, len(images)), 8
        rows = (n + cols - 1) // cols
        grid = Image.new("RGB", (cols * 64, rows * 64), (255, 255, 255))
        for i in range(n):
            grid.paste(Image.fromarray(images[i]), ((i % cols) * 64, (i // cols) * 64))
        grid = grid.resize((cols * 128, rows * 128), Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (cols * 128, rows * 128 + 14 * n // cols + 10), (255, 255, 255))
        canvas.paste(grid, (0, 0))
        draw = ImageDraw.Draw(canvas)
        for r in range(rows):
            line = " | ".join(prompts[r * cols + c].removeprefix("a ") for c in range(min(cols, n - r * cols)))
            draw.text((2, rows * 128 + 2 + 14 * r), f"row {r + 1}: {line}"[:200], fill=(0, 0, 0))
        os.makedirs(os.path.dirname(args.grid) or ".", exist_ok=True)
        canvas.save(args.grid)


if __name__ == "__main__":
    main()
