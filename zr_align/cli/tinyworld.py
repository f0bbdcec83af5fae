"""`zr-align tinyworld ...`: TinyWorld's judge, sampling, the builds of the SFT baseline and the reward models, and
the demo."""

from __future__ import annotations

import json
from pathlib import Path

from .arguments import seed_list


def _add_judge(sub) -> None:
    p = sub.add_parser("judge", help="judge images with TinyWorld's ground-truth judge; one JSON line per image, "
                                     "then a summary line")
    p.add_argument("--prompts", required=True, help='JSONL file, one {"image": file name, "prompt": ...} per line')
    p.add_argument("--images", default=None, help="folder the image names are relative to (default: the JSONL's)")


def _run_judge(args) -> int:
    import numpy as np
    from PIL import Image

    from ..tinyworld.judge import judge, summarize

    index = Path(args.prompts)
    if not index.is_file():
        raise ValueError(f"prompt file {index} does not exist")
    root = Path(args.images) if args.images is not None else index.parent
    records = [(n, json.loads(line)) for n, line in enumerate(index.read_text().splitlines(), 1) if line.strip()]
    if not records:
        raise ValueError(f"prompt file {index} has no lines")
    verdicts = []
    for number, record in records:
        name = record.get("image", record.get("file_name", record.get("file")))  # "file": zr-align compare
        if name is None or "prompt" not in record:
            raise ValueError(f"{index} line {number} needs 'image' (or 'file') and 'prompt' fields")
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
    from ..diffusion.datasets import load_prompts
    from ..tinyworld.grammar import parse_prompt
    from ..tinyworld.sample import generate, load_pipeline, write_samples

    prompts = load_prompts(args.prompts)
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
    p.add_argument("--decoder-steps", type=int, default=1500,
                   help="steps of the decoder refinement after SFT (encoder and denoiser frozen; 0 skips it)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-zero-snr", dest="zero_snr", action="store_false",
                   help="keep the non-zero terminal SNR of SD (the baseline then places objects at chance)")


def _run_build(args) -> int:
    from ..recipes.build_sft import build_sft_model

    report = build_sft_model(args.out, args.work_dir, vae_steps=args.vae_steps, sft_steps=args.sft_steps,
                             decoder_steps=args.decoder_steps, batch_size=args.batch_size, seed=args.seed,
                             zero_snr=args.zero_snr)
    print(json.dumps(report))
    return 0


def _add_refine_decoder(sub) -> None:
    p = sub.add_parser("refine-decoder", help="train the decoder of a TinyWorld pipeline folder on renders, encoder "
                                              "and denoiser frozen (build step 5 on its own)")
    p.add_argument("--model", default="models/tinyworld/sft", help="pipeline folder; its vae/ is replaced")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)


def _run_refine_decoder(args) -> int:
    from ..recipes.build_sft import refine_decoder

    report = refine_decoder(args.model, args.steps, batch_size=args.batch_size, seed=args.seed)
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
    p.add_argument("--no-baselines", dest="baselines", action="store_false",
                   help="train only the runs the shipped weights come from (teacher SFT, GDSO, RISD long); the "
                        "table then goes to --work-dir only")
    p.add_argument("--artefact-rate", action="append", default=[], metavar="KIND=RATE",
                   help="change one artefact's rate in the training data's mix (repeatable), e.g. object_cast=0.2")
    ship = p.add_mutually_exclusive_group()
    ship.add_argument("--student-only", action="store_true",
                      help="copy only the RISD student to OUT/student (a member of the reward ensemble)")
    ship.add_argument("--teacher-only", action="store_true",
                      help="copy only the chosen teacher to OUT/teacher (with --no-baselines no student is trained)")
    p.add_argument("--sft-fraction", type=float, default=0.12,
                   help="share of the SFT model's samples among the training images")
    p.add_argument("--free-layout", type=float, default=0.0,
                   help="share of training objects drawn at any size and place (corner cells, cell borders), "
                        "read by the judge")
    p.add_argument("--free-look", type=float, default=0.0,
                   help="share of those drawn in a colour between two of the palette's or with rounded corners")
    p.add_argument("--sft-swap", type=float, default=0.0,
                   help="share of the SFT samples drawn from a train prompt one attribute away from the rated one")
    p.add_argument("--decoder-roundtrip", type=float, default=0.0,
                   help="share of the drawn training images passed through the SFT model's VAE before they are "
                        "judged (the generator's decoder look)")
    p.add_argument("--raw-artefact", action="append", default=[], metavar="KIND",
                   help="an artefact whose images skip the decoder roundtrip (repeatable), e.g. blur: the decoder "
                        "sharpens blurred renders")
    p.add_argument("--teacher-init", help="the teacher SFT run's start instead of its config's, e.g. "
                                          "tinyworld:teacher (the spatial rotary layout)")
    p.add_argument("--teacher-choice", default="validation",
                   help="the teacher that ships (and the students start from): 'validation', the better on the "
                        "build's validation pairs, or the one named, 'teacher_sft' or 'gdso'")


def _run_build_rewards(args) -> int:
    from ..recipes.build_rewards import artefact_mix, build_reward_models

    rates = artefact_mix(args.artefact_rate)  # checked before any work
    build_reward_models(args.work_dir, args.out, args.sft_model, args.images_per_prompt, args.steps_scale,
                        seed=args.seed, docs=args.docs or None, reuse=args.reuse, baselines=args.baselines,
                        artefact_rates=rates, sft_fraction=args.sft_fraction, free_layout=args.free_layout,
                        free_look=args.free_look, sft_swap=args.sft_swap, teacher_init=args.teacher_init,
                        decoder_roundtrip=args.decoder_roundtrip, raw_artefacts=tuple(args.raw_artefact),
                        teacher_choice=args.teacher_choice,
                        ship=("student",) if args.student_only else ("teacher",) if args.teacher_only
                        else ("teacher", "student"))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="reward fine-tuning of the SFT baseline with the shipped student against an SFT "
                                    "control and reward guidance, judged on held-out prompts; OUT/report.html")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--config", default="configs/tinyworld_draft.yaml")
    p.add_argument("--num-eval", type=int, default=200)
    p.add_argument("--eval-split", choices=("test", "validation"), default="test",
                   help="held-out prompts to judge on (choose settings on validation, report on test)")
    p.add_argument("--no-guidance", dest="guidance", action="store_false", help="leave out the reward-guidance arm")
    p.add_argument("--soup-seeds", type=seed_list, default=(), metavar="S,S,...",
                   help="train each trained arm at these seeds (e.g. 0,1,2) and average its runs' weights (a model "
                        "soup; model.trainable: full)")
    p.add_argument("--sft-first", type=int, default=0, metavar="STEPS",
                   help="train each reward run from this many steps of plain SFT on renders (every weight); the SFT "
                        "control trains as many steps in all")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that train the runs side by side (default: one per run, at most one per core; 0: "
                        "in this process); every run trains at one thread, so the result does not depend on this")
    p.add_argument("overrides", nargs="*", help="train_t2i.py key=value overrides, e.g. max_steps=50")


def _run_demo(args) -> int:
    from diffusers.utils import logging as diffusers_logging

    from ..recipes.demo import GUIDANCE, run_demo

    diffusers_logging.disable_progress_bar()  # the phases' bars, not one per pipeline load
    run_demo(args.out, args.config, num_eval=args.num_eval, overrides=tuple(args.overrides),
             eval_split=args.eval_split, guidance=GUIDANCE if args.guidance else None,
             soup_seeds=args.soup_seeds, sft_first=args.sft_first, workers=args.workers)
    return 0


# `zr-align tinyworld NAME ...`: name -> (add arguments, run)
TINYWORLD_COMMANDS = {
    "judge": (_add_judge, _run_judge),
    "sample": (_add_sample, _run_sample),
    "build": (_add_build, _run_build),
    "refine-decoder": (_add_refine_decoder, _run_refine_decoder),
    "build-rewards": (_add_build_rewards, _run_build_rewards),
    "demo": (_add_demo, _run_demo),
}
