"""`zr-align tinyworld ...`: judge images, sample a model, rebuild the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path


def _add_judge(sub) -> None:
    p = sub.add_parser("judge", help="judge images with TinyWorld's ground-truth judge; one JSON line per image, "
                                     "then a summary line")
    p.add_argument("--prompts", required=True, help='JSONL file, one {"image": file name, "prompt": ...} per line')
    p.add_argument("--images", default=None, help="folder the image names are relative to (default: the JSONL's)")


def _run_judge(args) -> int:
    import numpy as np
    from PIL import Image

    from .evaluate import summarize
    from .judge import judge

    index = Path(args.prompts)
    if not index.is_file():
        raise ValueError(f"prompt file {index} does not exist")
    root = Path(args.images) if args.images is not None else index.parent
    records = [(n, json.loads(line)) for n, line in enumerate(index.read_text().splitlines(), 1) if line.strip()]
    if not records:
        raise ValueError(f"prompt file {index} has no lines")
    verdicts = []
    for number, record in records:
        name = record.get("image", record.get("file_name"))
        if name is None or "prompt" not in record:
            raise ValueError(f"{index} line {number} needs 'image' and 'prompt' fields")
        if not (root / name).is_file():
            raise ValueError(f"{index} line {number}: image {root / name} does not exist")
        with Image.open(root / name) as image:
            pixels = np.asarray(image.convert("RGB"))
        verdict = judge(pixels, record["prompt"])
        verdicts.append(verdict)
        print(json.dumps({"image": name, **verdict.to_record()}))
    print(json.dumps({"summary": summarize(verdicts)}))
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate one PNG per prompt with a TinyWorld model (optionally + LoRA)")
    p.add_argument("--model", required=True, help="TinyWorld pipeline folder (e.g. models/tinyworld/sft)")
    p.add_argument("--lora", default=None, help="folder with pytorch_lora_weights.safetensors (train_t2i output)")
    p.add_argument("--prompts", required=True, help=".txt (one per line) or .jsonl with a 'prompt' field")
    p.add_argument("--out", required=True, help="output folder: 00000.png, ... and samples.jsonl")
    p.add_argument("--seed", type=int, default=0, help="image i uses noise seed seed + i")
    p.add_argument("--steps", type=int, default=20)


def _run_sample(args) -> int:
    from .grammar import parse_prompt
    from .sample import generate, load_pipeline, read_prompts, write_samples

    prompts = read_prompts(args.prompts)
    for prompt in prompts:
        parse_prompt(prompt)  # a prompt outside the grammar: one-line error naming the word
    pipe = load_pipeline(args.model)
    if args.lora is not None:
        from ..lora import check_lora_fits

        check_lora_fits(pipe.unet, args.lora)  # before peft touches the pipeline
        pipe.load_lora_weights(args.lora)
    index = write_samples(generate(pipe, prompts, seed=args.seed, steps=args.steps), prompts, args.out)
    print(json.dumps({"samples": len(prompts), "index": str(index)}))
    return 0


def _add_build(sub) -> None:
    p = sub.add_parser("build", help="rebuild the SFT baseline from scratch (VAE, then SFT with train_t2i.py)")
    p.add_argument("--out", default="models/tinyworld/sft")
    p.add_argument("--work-dir", default="outputs/tinyworld_build")
    p.add_argument("--vae-steps", type=int, default=700)
    p.add_argument("--sft-steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-zero-snr", dest="zero_snr", action="store_false",
                   help="keep the non-zero terminal SNR of SD (the baseline then places objects at chance)")


def _run_build(args) -> int:
    from .build import build_sft_model

    report = build_sft_model(args.out, args.work_dir, vae_steps=args.vae_steps, sft_steps=args.sft_steps,
                             batch_size=args.batch_size, seed=args.seed, zero_snr=args.zero_snr)
    print(json.dumps(report))
    return 0


def _add_build_rewards(sub) -> None:
    p = sub.add_parser("build-rewards", help="rebuild the reward models (data, teacher SFT -> GDSO, RISD student, "
                                             "baselines) and the comparison table")
    p.add_argument("--work-dir", default="outputs/tinyworld_rewards")
    p.add_argument("--out", default="models/tinyworld", help="the chosen teacher and the RISD student go here")
    p.add_argument("--sft-model", default="models/tinyworld/sft", help="its samples join the reward data")
    p.add_argument("--images-per-prompt", type=int, default=80, help="rated training images per train prompt")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every config's max_steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", default="docs", help="where the table is written ('' for nowhere)")
    p.add_argument("--reuse", action="store_true", help="keep data and trained models already in --work-dir")


def _run_build_rewards(args) -> int:
    from .build_rewards import build_reward_models

    build_reward_models(args.work_dir, args.out, args.sft_model, args.images_per_prompt, args.steps_scale,
                        seed=args.seed, docs=args.docs or None, reuse=args.reuse)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="reward fine-tuning of the SFT baseline with the shipped student, judged on "
                                    "held-out prompts; writes OUT/report.md")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--config", default="configs/tinyworld_draft.yaml")
    p.add_argument("--num-eval", type=int, default=200)
    p.add_argument("--eval-split", choices=("test", "validation"), default="test",
                   help="held-out prompts to judge on (choose settings on validation, report on test)")
    p.add_argument("overrides", nargs="*", help="train_t2i.py key=value overrides, e.g. max_steps=50")


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, args.config, num_eval=args.num_eval, overrides=tuple(args.overrides),
             eval_split=args.eval_split)
    return 0


# `zr-align tinyworld NAME ...`: name -> (add arguments, run)
TINYWORLD_COMMANDS = {
    "judge": (_add_judge, _run_judge),
    "sample": (_add_sample, _run_sample),
    "build": (_add_build, _run_build),
    "build-rewards": (_add_build_rewards, _run_build_rewards),
    "demo": (_add_demo, _run_demo),
}
