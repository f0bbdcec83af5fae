#!/usr/bin/env python
"""Fine-tune a LoRA on a text-to-image diffusion model: reward backprop (DRaFT-K, DRaFT-LV, ReFL, full) or SFT.

    python train_t2i.py --config configs/tiny_debug.yaml [key.sub=value ...] [--resume latest | --overwrite]
    accelerate launch --multi_gpu --num_processes 8 train_t2i.py --config configs/sdxl.yaml
    ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 train_t2i.py --config ...  # 2 CPU ranks

Output folder (`output_dir`):
    lora/pytorch_lora_weights.safetensors   diffusers format, loads with `pipe.load_lora_weights(OUT/lora)`
    pipeline/                               instead of lora/ with model.trainable: full (a stock pipeline folder)
    checkpoints/step_N/                     accelerate state (trained weights, optimizer, LR, RNG), crash-safe
    metrics.jsonl                           one JSON object per optimizer step
    config.yaml                             the resolved config
    validation/step_N.png                   image grids of the fixed validation prompts

A folder that already holds a run is refused unless `--resume` (continue it: the model settings must match) or
`--overwrite` (clear it first); two runs cannot write into one folder at once (a lock); bad input is one line on
stderr and exit code 2 (`--debug` shows the traceback), and nothing is written before the input is validated.

The engine is `zr_align.diffusion.fine_tune` (zr_align/diffusion/trainer.py); every option is documented in
zr_align/diffusion/config.py and configs/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: it reads the variable once

from zr_align.diffusion import fine_tune, load_train_config  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of overrides of the defaults in zr_align/diffusion/config.py")
    parser.add_argument("--resume", help="'latest' or a checkpoints/step_N folder: continue that run exactly")
    parser.add_argument("--overwrite", action="store_true",
                        help="clear a folder that holds an earlier run (without it, such a folder is refused)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an input error")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-4")
    return parser.parse_intermixed_args(argv)  # options and overrides in any order


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fine_tune(load_train_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    except ValueError as error:  # bad input: one line, no traceback, nothing saved is touched
        if args.debug:
            raise
        print(f"train_t2i.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
