"""zr_align against a peer, trl 0.23.1's `AlignPropTrainer`, on the same work (CPU; issue 14).

    make bench-peer        # builds .venv-peer (trl 0.23.1 + our exact versions), runs this, writes the result file
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv-peer/bin/python benchmarks/peer_alignprop.py \
        [--settings 20:1 50:5] [--repeats 3] [--steps 3] [--ours-override sampling.checkpoint_vae=true ...]

The work, on both sides: the TinyWorld SFT model (`models/tinyworld/sft`, v-prediction UNet, DDIM trailing, eta 0),
the shipped RISD student as the differentiable reward (the demo's weights), batch 8, 64 px, a rank-8 / alpha-8 LoRA
on the same attention layers (ours: `zr_align.lora.add_lora`, given to trl too; trl's own is fixed at rank 4),
gradient through the last denoising step only, AdamW lr 1e-3 and weight decay 1e-2, clipping at 1, no KL term.
zr_align runs `fine_tune` on `configs/tinyworld_draft.yaml` with those overrides; the peer runs `trainer.step`.

Each run is a fresh process (peak RSS is per process): load, `--warmup` steps, then `--steps` timed steps; a run's
time is the median of its timed steps: wall (`time.perf_counter`) and CPU (`time.process_time`). Peak RSS is the
process's `ru_maxrss` after the last timed step (loading included). Runs alternate pair by pair (ours first in even
repeats, the peer first in odd ones); per side the table gives the median (and min) over repeats; ratios are
zr_align / peer of the medians. Both sides run with the same interpreter unless `--ours-python` says otherwise, so
the installed packages are the same (scipy's presence alone moves peak RSS by ~60 MB: transformers imports it).

Two trl bugs are worked around here, at run time (none of trl's code is copied): trl logs through accelerate before
any `Accelerator` exists, so an `accelerate.PartialState()` is created before the pipeline is built; and with a
guidance scale <= 1 trl still stacks the negative prompt embeddings (twice as many text rows as latents), so the
negative embeddings are dropped when the scale is <= 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "models" / "tinyworld" / "sft")
REWARD = str(ROOT / "models" / "tinyworld" / "student")
BATCH, RANK, LR, WEIGHT_DECAY = 8, 8, 1e-3, 1e-2
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "trl", "scipy")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours_child(steps: int, cfg: float, warmup: int, timed: int, overrides: list[str]) -> dict:
    """zr_align's `fine_tune` on the demo config with the shared settings; per-step times from metrics.jsonl."""
    from zr_align.diffusion import fine_tune
    from zr_align.diffusion.config import load_train_config

    with tempfile.TemporaryDirectory() as out:
        config = load_train_config(ROOT / "configs" / "tinyworld_draft.yaml", [
            f"output_dir={out}", f"max_steps={warmup + timed}", "checkpoint_every=0", f"batch_size={BATCH}",
            f"model.path={MODEL}", f"reward.path={REWARD}", f"lora.rank={RANK}", f"lora.alpha={RANK}",
            f"sampling.num_steps={steps}", "sampling.k=1", f"sampling.guidance_scale={cfg}", f"optim.lr={LR}",
            f"optim.weight_decay={WEIGHT_DECAY}", "optim.kl_weight=0", "model.trainable=lora", "optim.sft_weight=0",
            "data.sft_data=null", *overrides])  # the demo trains every weight with an SFT anchor: here a LoRA only
        config.data.validation_prompts = []
        fine_tune(config, overwrite=True)
        lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    timed_lines = lines[warmup:]
    return {"wall": statistics.median(r["seconds"] for r in timed_lines),
            "cpu": statistics.median(r["cpu_seconds"] for r in timed_lines),
            "rss": timed_lines[-1]["peak_mem_mb"], "scipy": "scipy" in sys.modules}


def peer_pipeline(steps: int):
    """trl's default SD pipeline with our rank-8 LoRA and the CFG <= 1 fix (a subclass: our code, not trl's)."""
    from trl import DefaultDDPOStableDiffusionPipeline

    from zr_align.lora import add_lora

    class Pipeline(DefaultDDPOStableDiffusionPipeline):
        def get_trainable_layers(self):
            add_lora(self.sd_pipeline.unet, "sd", rank=RANK, alpha=RANK)
            return self.sd_pipeline.unet

        def rgb_with_grad(self, *args, **kwargs):
            if kwargs.get("guidance_scale", 7.5) > 1.0:
                return super().rgb_with_grad(*args, **kwargs)
            # trl bug: at guidance <= 1 it still passes negative embeddings, and diffusers' deprecated
            # `_encode_prompt` it calls concatenates them to the prompt's. Without CFG, only the prompt's.
            pipe = self.sd_pipeline
            kwargs["negative_prompt_embeds"] = None
            pipe._encode_prompt = lambda *a, **kw: pipe.encode_prompt(*a, **kw)[0]
            try:
                return super().rgb_with_grad(*args, **kwargs)
            finally:
                del pipe._encode_prompt  # the class's method again

    return Pipeline(MODEL, use_lora=True)


def peer_child(steps: int, cfg: float, warmup: int, timed: int) -> dict:
    """trl's AlignPropTrainer on the same work; each `trainer.step` timed."""
    import random

    import accelerate

    accelerate.PartialState()  # trl bug: it logs through accelerate before creating its Accelerator
    from trl import AlignPropConfig, AlignPropTrainer

    from zr_align.diffusion.datasets import load_prompts
    from zr_align.rewards import ZRewardModel

    prompts, rng = load_prompts("tinyworld:train"), random.Random(0)
    reward_model = ZRewardModel.from_pretrained(REWARD, clamp="straight_through",
                                                weights={"alignment": 0.55, "realism": 0.15,
                                                         "aesthetics": 0.15, "plausibility": 0.15})

    def reward_fn(images, batch_prompts, metadata):
        return reward_model(images, list(batch_prompts)).reward, {}

    with tempfile.TemporaryDirectory() as out:
        config = AlignPropConfig(
            num_epochs=warmup + timed, train_batch_size=BATCH, sample_num_steps=steps, sample_guidance_scale=cfg,
            sample_eta=0.0, truncated_backprop_rand=False, truncated_backprop_timestep=steps - 1,
            train_learning_rate=LR, train_adam_weight_decay=WEIGHT_DECAY, train_max_grad_norm=1.0,
            mixed_precision="no", log_with=None, save_freq=10**9, project_kwargs={"project_dir": out})
        trainer = AlignPropTrainer(config, reward_fn, lambda: (rng.choice(prompts), {}), peer_pipeline(steps))
        walls, cpus = [], []
        for epoch in range(warmup + timed):
            begin = (time.perf_counter(), time.process_time())
            trainer.step(epoch, epoch)
            walls.append(time.perf_counter() - begin[0])
            cpus.append(time.process_time() - begin[1])
    return {"wall": statistics.median(walls[warmup:]), "cpu": statistics.median(cpus[warmup:]),
            "rss": peak_rss_mb(), "scipy": "scipy" in sys.modules}


def run_child(python: str, side: str, steps: int, cfg: float, args) -> dict:
    cmd = [python, __file__, "--child", side, str(steps), str(cfg), "--warmup", str(args.warmup),
           "--steps", str(args.steps), *[f"--ours-override={o}" for o in args.ours_override]]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{side} T={steps} CFG={cfg} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def versions(python: str) -> str:
    code = (f"import importlib.metadata as m\nfor p in {PACKAGES!r}:\n    try: print(p, m.version(p))\n"
            "    except m.PackageNotFoundError: print(p, '-')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    return ", ".join(out.splitlines())


def summarise(runs: list[dict]) -> dict:
    """Median and min over repeats of each measure."""
    return {key: (statistics.median(r[key] for r in runs), min(r[key] for r in runs))
            for key in ("wall", "cpu", "rss")}


def header(args, ours_python: str) -> list[str]:
    cpus = f"{os.cpu_count()} CPUs (shared with other jobs)"
    omp = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    work = (f"batch {BATCH}, 64 px, LoRA rank {RANK}, K=1 (last step), {args.repeats} alternated repeats x "
            f"({args.warmup} warm-up + {args.steps} timed steps); ours overrides: {args.ours_override or 'none'}")
    columns = (f"{'T':>3} {'CFG':>4} | {'ours wall s':>13} {'peer wall s':>13} {'ratio':>6} | {'ours CPU s':>13} "
               f"{'peer CPU s':>13} {'ratio':>6} | {'ours RSS':>13} {'peer RSS':>13} {'ratio':>6}")
    return [f"# {datetime.date.today()} {platform.node()}: {platform.machine()}, {cpus}, {omp}",
            f"# command: {' '.join(sys.argv)}",
            f"# peer python {args.peer_python}: {versions(args.peer_python)}",
            f"# ours python {ours_python}: {versions(ours_python)}",
            f"# {work}",
            "# per side: median (min) over repeats of each run's median step; RSS: peak of the process, MB",
            columns]


def row(steps: int, cfg: float, ours: dict, peer: dict) -> str:
    cells = []
    for key, fmt in (("wall", "{:6.2f} ({:5.2f})"), ("cpu", "{:6.2f} ({:5.2f})"), ("rss", "{:5.0f} ({:5.0f})")):
        cells.append(f"{fmt.format(*ours[key]):>13} {fmt.format(*peer[key]):>13} {ours[key][0] / peer[key][0]:6.2f}")
    return f"{steps:>3} {cfg:>4g} | " + " | ".join(cells)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="*", default=["20:1", "20:5", "50:1", "50:5"], help="T:CFG pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--peer-python", default=sys.executable)
    parser.add_argument("--ours-python", default=None, help="default: the peer's interpreter (same packages)")
    parser.add_argument("--ours-override", action="append", default=[], help="key=value for zr_align's config")
    parser.add_argument("--out", default=None, help="also write the table here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, steps, cfg = args.child[0], int(args.child[1]), float(args.child[2])
        result = (ours_child(steps, cfg, args.warmup, args.steps, args.ours_override) if side == "ours"
                  else peer_child(steps, cfg, args.warmup, args.steps))
        print(json.dumps(result))
        return
    ours_python = args.ours_python or args.peer_python
    lines = header(args, ours_python)
    print("\n".join(lines), flush=True)
    settings = [(int(t), float(c)) for t, c in (s.split(":") for s in args.settings)]
    runs = {(s, side): [] for s in settings for side in ("ours", "peer")}
    for repeat in range(args.repeats):
        for setting in settings:
            order = ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours")
            for side in order:
                python = ours_python if side == "ours" else args.peer_python
                runs[setting, side].append(run_child(python, side, *setting, args))
            lines.append(f"# repeat {repeat + 1} T={setting[0]} CFG={setting[1]:g}: " + ", ".join(
                f"{side} {json.dumps(runs[setting, side][-1])}" for side in order))
            print(lines[-1], flush=True)
    table = [row(*s, summarise(runs[s, "ours"]), summarise(runs[s, "peer"])) for s in settings]
    print("\n".join(table), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines + table) + "\n")


if __name__ == "__main__":
    main()
