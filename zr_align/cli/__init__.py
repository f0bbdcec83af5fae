"""`zr-align` command line. Subcommands are registered in `COMMANDS`; the groups `zr-align tinyworld ...` and
`zr-align reward ...` in `TINYWORLD_COMMANDS` (`cli/tinyworld.py`) and `REWARD_COMMANDS` (`cli/reward.py`). Each
command parses its arguments and calls the library; the work is done there."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .arguments import positive_int
from .reward import REWARD_COMMANDS
from .tinyworld import TINYWORLD_COMMANDS


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score images with a reward-model folder; one JSON line per image")
    p.add_argument("--reward", required=True, help="reward-model folder (written by ZRewardModel.save_pretrained)")
    p.add_argument("--prompt", required=True, help="the text prompt the images were generated from")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (>= 1)")
    p.add_argument("--kappa", type=float, default=None, help="override the risk penalty of the stored config")
    p.add_argument("images", nargs="+", help="image files")


def _run_score(args) -> int:
    from ..rewards import ZRewardModel
    from ..rewards.loading import load_image

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
    from ..architectures import setup_models
    from ..diffusion.config import load_train_config
    from ..memory_plan import parse_size, plan_report

    budget = parse_size(args.gpu_memory) if args.gpu_memory else None
    config = load_train_config(args.config, args.overrides)
    setup = setup_models(config, args.architecture, args.reward_architecture)
    print(json.dumps(plan_report(config, setup, budget), indent=1))
    return 0


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
    p.add_argument("--num-images", type=positive_int, help="images per model; image i shows prompt i mod P")
    p.add_argument("--seed", type=int, help="image i of every model uses noise seed SEED + i (default 10000)")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default 20)")
    p.add_argument("--reward", help="reward-model folder: its mean score is reported, for reference only")
    p.add_argument("--margin", type=float, help="GSB tie band on the overall judge score (default 0.2)")
    p.add_argument("--out", default="outputs/compare", help="samples/NAME/ per model, compare.md, compare.json")
    p.add_argument("--replace-stale", action="store_true",
                   help="sample again folders made by another model, sampler, prompts or seeds (else refused)")


def _run_compare(args) -> int:
    from diffusers.utils import logging as diffusers_logging

    from ..tinyworld.compare import compare_models, load_compare_config, specs_from_dict

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
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps of the pipeline")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale of the pipeline")
    p.add_argument("--batch-size", type=positive_int, default=16)
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
    from ..diffusion.datasets import load_prompts
    from ..guidance import generate_folder, load_pipeline, load_reward, mode_options

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
    from ..diffusion.export import export_checkpoint

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
    from ..diffusion.soup import average_pipelines

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
