"""`zr-align` command line. Subcommands are registered in `COMMANDS`; the groups `zr-align tinyworld ...` and
`zr-align reward ...` in `TINYWORLD_COMMANDS` and `REWARD_COMMANDS`. Each command parses its arguments and calls
the library; the work is done there."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score images with a reward-model folder; one JSON line per image")
    p.add_argument("--reward", required=True, help="reward-model folder (written by ZRewardModel.save_pretrained)")
    p.add_argument("--prompt", required=True, help="the text prompt the images were generated from")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (>= 1)")
    p.add_argument("--kappa", type=float, default=None, help="override the risk penalty of the stored config")
    p.add_argument("images", nargs="+", help="image files")


def _run_score(args) -> int:
    from .rewards import ZRewardModel
    from .rewards.loading import load_image

    for path in args.images:  # every image readable before the model loads: a bad one fails in a second
        load_image(path)
    overrides = {} if args.kappa is None else {"kappa": args.kappa}
    model = ZRewardModel.from_pretrained(args.reward, **overrides)
    out = model.score(args.images, [args.prompt] * len(args.images), batch_size=args.batch_size)
    for path, record in zip(args.images, out.to_records()):
        print(json.dumps({"image": path, "prompt": args.prompt, **record}))
    return 0


def command_group(name: str, help: str, commands: dict):
    """`zr-align NAME SUB ...` for a registry `commands` of SUB -> (add arguments, run)."""

    def add(sub) -> None:
        parser = sub.add_parser(name, help=help)
        group = parser.add_subparsers(dest=f"{name}_command", required=True)
        for add_arguments, _ in commands.values():
            add_arguments(group)

    def run(args) -> int:
        return commands[getattr(args, f"{name}_command")][1](args)

    return add, run


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="plan the peak GPU memory of one reward fine-tuning step, without weights")
    p.add_argument("--config", required=True, help="a train_t2i.py YAML config (e.g. configs/sdxl.yaml)")
    p.add_argument("--gpu-memory", help="a budget such as 24GB or 80GiB: suggest the switches and batch that fit")
    p.add_argument("--architecture", help="diffusion architecture (configs/architectures); default: the family's")
    p.add_argument("--reward-architecture", help="reward VLM architecture; default qwen2_5_vl_3b")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, as for train_t2i.py")


def _run_plan(args) -> int:
    from .architectures import setup_models
    from .diffusion.config import load_train_config
    from .memory_plan import parse_size, plan_report

    budget = parse_size(args.gpu_memory) if args.gpu_memory else None
    config = load_train_config(args.config, args.overrides)
    setup = setup_models(config, args.architecture, args.reward_architecture)
    print(json.dumps(plan_report(config, setup, budget), indent=1))
    return 0


# ------------------------------------------------------------------ zr-align tinyworld ...
def _add_judge(sub) -> None:
    p = sub.add_parser("judge", help="judge images with TinyWorld's ground-truth judge; one JSON line per image, "
                                     "then a summary line")
    p.add_argument("--prompts", required=True, help='JSONL file, one {"image": file name, "prompt": ...} per line')
    p.add_argument("--images", default=None, help="folder the image names are relative to (default: the JSONL's)")


def _run_judge(args) -> int:
    import numpy as np
    from PIL import Image

    from .tinyworld.judge import judge, summarize

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
    from .diffusion.datasets import load_prompts
    from .tinyworld.grammar import parse_prompt
    from .tinyworld.sample import generate, load_pipeline, write_samples

    prompts = load_prompts(args.prompts)
    for prompt in prompts:
        parse_prompt(prompt)  # a prompt outside the grammar: one-line error naming the word
    pipe = load_pipeline(args.model)
    if args.lora is not None:
        from .lora import check_lora_fits

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
    from .recipes.build_sft import build_sft_model

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
    from .recipes.build_sft import refine_decoder

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
    p.add_argument("--teacher-init", help="the teacher SFT run's start instead of its config's, e.g. "
                                          "tinyworld:teacher (the spatial rotary layout)")


def _run_build_rewards(args) -> int:
    from .recipes.build_rewards import artefact_mix, build_reward_models

    rates = artefact_mix(args.artefact_rate)  # checked before any work
    build_reward_models(args.work_dir, args.out, args.sft_model, args.images_per_prompt, args.steps_scale,
                        seed=args.seed, docs=args.docs or None, reuse=args.reuse, baselines=args.baselines,
                        artefact_rates=rates, sft_fraction=args.sft_fraction, free_layout=args.free_layout,
                        free_look=args.free_look, sft_swap=args.sft_swap, teacher_init=args.teacher_init,
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
    p.add_argument("--soup-seeds", type=_seed_list, default=(), metavar="S,S,...",
                   help="train each trained arm at these seeds (e.g. 0,1,2) and average its runs' weights (a model "
                        "soup; model.trainable: full)")
    p.add_argument("--sft-first", type=int, default=0, metavar="STEPS",
                   help="train each reward run from this many steps of plain SFT on renders (every weight); the SFT "
                        "control trains as many steps in all")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that train the runs side by side (default: one per run, at most one per core; 0: "
                        "in this process); every run trains at one thread, so the result does not depend on this")
    p.add_argument("overrides", nargs="*", help="train_t2i.py key=value overrides, e.g. max_steps=50")


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds, e.g. 0,1,2") from None


def _run_demo(args) -> int:
    from diffusers.utils import logging as diffusers_logging

    from .recipes.demo import GUIDANCE, run_demo

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


# ------------------------------------------------------------------ zr-align reward ...
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate reward folders on preference pairs (and rated images); prints a table")
    p.add_argument("--reward", required=True, nargs="+", metavar="DIR",
                   help="reward folders (ZRewardModel students or reasoning teachers), one table row each")
    p.add_argument("--data", required=True, metavar="PAIRS.jsonl", help="preference pairs (held-out)")
    p.add_argument("--rated", default=None, metavar="RATED.jsonl",
                   help="rated images, for Spearman, calibration (ECE) and NLL")
    p.add_argument("--mode", default="greedy", choices=("greedy", "sample"),
                   help="teachers only: one greedy rationale, or the average over --num-rationales sampled ones")
    p.add_argument("--num-rationales", type=int, default=4, help="teachers only, with --mode sample")
    p.add_argument("--batch-size", type=int, default=16, help="images per scorer call (also the timing batch)")
    p.add_argument("--tie-eps", type=float, default=0.05, help="predicted-tie band of the tie-aware accuracy")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every metric to this JSON file")


def _run_eval(args) -> int:
    from .reward_training.data import PreferencePairs, RatedImages
    from .reward_training.evaluate import evaluate_scorer, format_table, load_scorer

    pairs = PreferencePairs(args.data)
    rated = RatedImages(args.rated) if args.rated is not None else None
    results = {}
    for folder in args.reward:
        scorer = load_scorer(folder, mode=args.mode, num_rationales=args.num_rationales)
        results[folder] = evaluate_scorer(scorer, pairs, rated, batch_size=args.batch_size, tie_eps=args.tie_eps)
    print(format_table(results))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _add_make_data(sub) -> None:
    p = sub.add_parser("make-data", help="generate TinyWorld rated images + preference pairs for one prompt split")
    p.add_argument("--out", required=True, help="output folder: images/, rated.jsonl, pairs.jsonl, stats.json")
    p.add_argument("--split", required=True, choices=("train", "validation", "test"))
    p.add_argument("--images-per-prompt", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-model", default=None, help="TinyWorld pipeline folder whose samples join the images")
    p.add_argument("--sft-fraction", type=float, default=0.3)
    p.add_argument("--num-prompts", type=int, default=None, help="a seeded subset of the split's prompts")
    p.add_argument("--pairs-per-prompt", type=int, default=None, help="default: --images-per-prompt")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation/test prompt split")


def _run_make_data(args) -> int:
    from .tinyworld.reward_data import make_reward_data

    stats = make_reward_data(args.out, args.split, args.images_per_prompt, args.seed, sft_model=args.sft_model,
                             sft_fraction=args.sft_fraction, num_prompts=args.num_prompts,
                             pairs_per_prompt=args.pairs_per_prompt, split_seed=args.split_seed)
    print(json.dumps(stats))
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a reward model (teacher SFT, GDSO, GRPO, RewardDance, student SFT, "
                                     "RISD, OPD)")
    p.add_argument("--config", required=True, help="YAML of zr_align.reward_training.config.RewardTrainConfig")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoints/step_N folder")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. max_steps=100 gdso.rollouts=8")


def _run_train(args) -> int:
    from .reward_training.config import RewardTrainConfig
    from .reward_training.trainer import train_reward_model
    from .runs import load_config
    from .tinyworld.reward_models import initial_model

    config = load_config(args.config, args.overrides, RewardTrainConfig)
    path = train_reward_model(config, resume=args.resume, model=initial_model(config))
    print(json.dumps({"model": str(path)}))
    return 0


# `zr-align reward NAME ...`: name -> (add arguments, run)
REWARD_COMMANDS = {
    "train": (_add_train, _run_train),
    "eval": (_add_eval, _run_eval),
    "make-data": (_add_make_data, _run_make_data),
}


# ------------------------------------------------------------------ zr-align compare
def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="sample TinyWorld models on the same prompts and seeds, judge them, compare "
                                       "every pair (GSB, 95%% bootstrap intervals); writes OUT/compare.md, .json")
    p.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                   help="a model: TinyWorld pipeline folder, e.g. base=models/tinyworld/sft (repeat per model)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=FOLDER",
                   help="a LoRA on model NAME, e.g. tuned=RUN/lora (a train_t2i.py output folder)")
    p.add_argument("--config", help="YAML: models: {NAME: {model, lora, prompts}} and any option below")
    p.add_argument("--prompts", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="tinyworld:SPLIT, .txt or .jsonl for every model (default tinyworld:test); NAME=SOURCE "
                        "gives model NAME its own list, paired line by line (same length)")
    p.add_argument("--num-images", type=_positive_int, help="images per model; image i shows prompt i mod P")
    p.add_argument("--seed", type=int, help="image i of every model uses noise seed SEED + i (default 10000)")
    p.add_argument("--steps", type=_positive_int, help="sampling steps (default 20)")
    p.add_argument("--reward", help="reward-model folder: its mean score is reported, for reference only")
    p.add_argument("--margin", type=float, help="GSB tie band on the overall judge score (default 0.2)")
    p.add_argument("--out", default="outputs/compare", help="samples/NAME/ per model, compare.md, compare.json")
    p.add_argument("--replace-stale", action="store_true",
                   help="sample again folders made by another model, sampler, prompts or seeds (else refused)")


def _run_compare(args) -> int:
    from diffusers.utils import logging as diffusers_logging

    from .tinyworld.compare import compare_models, load_compare_config, specs_from_dict

    diffusers_logging.disable_progress_bar()  # one bar per model sampled, not one per pipeline load

    config = load_compare_config(args.config) if args.config else {"models": {}}
    models = config.pop("models")
    for flag, key, values in (("--model", "model", args.model), ("--lora", "lora", args.lora)):
        for text in values:
            name, _, value = text.partition("=")
            if not name or not value:
                raise ValueError(f"{flag} takes NAME=FOLDER; got {text!r}")
            if key == "lora" and name not in models:
                raise ValueError(f"--lora {text}: no model named {name!r} (give --model {name}=FOLDER)")
            models.setdefault(name, {})[key] = value
    for text in args.prompts:
        name, _, source = text.partition("=")
        if source and name in models:
            models[name]["prompts"] = source
        else:
            config["prompts"] = text
    config.update({k: getattr(args, k) for k in ("num_images", "seed", "steps", "reward", "margin")
                   if getattr(args, k) is not None})
    compare_models(specs_from_dict(models), args.out, replace_stale=args.replace_stale, **config)
    print((Path(args.out) / "compare.md").read_text(), end="")
    return 0


# ------------------------------------------------------------------ zr-align generate
def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample a stock SD / SDXL / SD3 folder guided by a reward (per-step "
                                        "guidance, initial-noise optimisation or best-of-N); PNGs + samples.jsonl")
    p.add_argument("--model", required=True, help="diffusers pipeline folder (e.g. models/tinyworld/sft)")
    p.add_argument("--lora", default=None, help="folder with pytorch_lora_weights.safetensors (train_t2i output)")
    p.add_argument("--reward", default=None, help="reward-model folder (needed by every mode but plain)")
    p.add_argument("--mode", default="guidance", choices=("guidance", "noise", "best_of_n", "plain"))
    p.add_argument("--prompts", required=True, help=".txt (one per line), .jsonl with a 'prompt' field, or "
                                                    "tinyworld:SPLIT")
    p.add_argument("--out", required=True, help="output folder: 00000.png, ... and samples.jsonl (with the reward)")
    p.add_argument("--seed", type=int, default=0, help="image i starts from the noise of seed SEED + i in every mode")
    p.add_argument("--steps", type=_positive_int, default=20, help="sampling steps of the pipeline")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale of the pipeline")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--save-latents", action="store_true",
                   help="also write latents.safetensors (the final latents of every image): SFT data for "
                        "train_t2i.py that skips the VAE encoder (data.sft_data=OUT)")
    p.add_argument("--save-pairs", action="store_true",
                   help="best_of_n: also write pairs.jsonl and the latents of each prompt's best and worst candidate: "
                        "preference pairs for Diffusion-DPO (train_t2i.py method=dpo data.pairs=OUT)")
    g = p.add_argument_group("mode options (default: the library's, see README)")
    g.add_argument("--scale", type=float, help="guidance: step length in noise-level units (0: plain sampling)")
    g.add_argument("--window", type=float, nargs=2, metavar=("START", "END"),
                   help="guidance: guide the steps j with START <= j/T < END")
    g.add_argument("--guided-steps", type=int, nargs="+", metavar="J", help="guidance: exactly these steps")
    g.add_argument("--checkpoint", action="store_true", default=None,
                   help="guidance: recompute denoiser and decode + reward in backward (less memory)")
    g.add_argument("--iterations", type=int, help="noise: gradient steps on the initial noise")
    g.add_argument("--lr", type=float, help="noise: step length per iteration (unit-RMS gradient)")
    g.add_argument("--opt-steps", type=int, help="noise: steps of the differentiable sampler being optimised through")
    g.add_argument("--reg-weight", type=float, help="noise: weight of the chi-square noise-norm regulariser")
    g.add_argument("--n", type=int, help="best_of_n: candidates per prompt")


def _run_generate(args) -> int:
    from .diffusion.datasets import load_prompts
    from .guidance import generate_folder, load_pipeline, load_reward, mode_options

    given = {"scale": args.scale, "window": args.window, "steps": args.guided_steps,
             "gradient_checkpointing": args.checkpoint, "iterations": args.iterations, "lr": args.lr,
             "num_steps": args.opt_steps, "reg_weight": args.reg_weight, "n": args.n}
    options = mode_options(args.mode, **given)  # an option of another mode is refused before anything loads
    if args.mode != "plain" and args.reward is None:
        raise ValueError(f"mode {args.mode} needs --reward")
    prompts = load_prompts(args.prompts)
    pipe = load_pipeline(args.model, args.lora)
    reward = load_reward(args.reward, device=pipe.device) if args.reward is not None else None
    index = generate_folder(pipe, prompts, args.out, args.mode, reward, seed=args.seed, batch_size=args.batch_size,
                            save_latents=args.save_latents, save_pairs=args.save_pairs, num_inference_steps=args.steps,
                            guidance_scale=args.cfg, options=options)
    print(json.dumps({"samples": len(prompts), "mode": args.mode, "index": str(index)}))
    return 0


# ------------------------------------------------------------------ zr-align export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write one checkpoint of a train_t2i.py run as the run's end writes its model: "
                                      "a LoRA folder, or a pipeline folder for model.trainable: full")
    p.add_argument("checkpoint", help="RUN/checkpoints/step_N of a train_t2i.py run")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")


def _run_export(args) -> int:
    from .diffusion.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(json.dumps({"checkpoint": str(args.checkpoint), "out": str(out)}))
    return 0


# ------------------------------------------------------------------ zr-align soup
def _add_soup(sub) -> None:
    p = sub.add_parser("soup", help="average the weights of whole-pipeline runs fine-tuned from one base (a model "
                                    "soup, e.g. the same run at several seeds); writes a pipeline folder")
    p.add_argument("pipelines", nargs="+", help="two or more pipeline folders, e.g. RUN0/pipeline RUN1/pipeline")
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")


def _run_soup(args) -> int:
    from .diffusion.soup import average_pipelines

    out = average_pipelines(args.pipelines, args.out)
    print(json.dumps({"pipelines": args.pipelines, "out": str(out)}))
    return 0


# name -> (add arguments, run)
COMMANDS = {
    "score": (_add_score, _run_score),
    "plan": (_add_plan, _run_plan),
    "compare": (_add_compare, _run_compare),
    "export": (_add_export, _run_export),
    "soup": (_add_soup, _run_soup),
    "generate": (_add_generate, _run_generate),
    "tinyworld": command_group("tinyworld", "TinyWorld, the built-in miniature world with a ground-truth judge",
                               TINYWORLD_COMMANDS),
    "reward": command_group("reward", "reward-model training (GDSO, RISD and baselines), data and evaluation",
                            REWARD_COMMANDS),
}


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Input errors (`ValueError`, and a missing or unreadable file) print one line on stderr
    and return 2; `--debug` shows the traceback instead."""
    parser = argparse.ArgumentParser(prog="zr-align", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an input error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except (ValueError, OSError) as error:  # our one-line input errors: no traceback for the user
        if args.debug:
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"zr-align {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
