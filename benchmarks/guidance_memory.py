"""Peak memory of reward-guided sampling against the number of sampling steps T (CPU, peak RSS).

    python benchmarks/guidance_memory.py                 # TinyWorld SFT + student, batch 4, T = 10 20 50
    python benchmarks/guidance_memory.py --ts 10 20 50 --batch 4 --out benchmarks/results/guidance_memory.txt

One fresh process per configuration (peak RSS is per process). Each process loads the models, runs one plain
trajectory (warm-up), then the measured run. Columns:
  peak RSS    the process's peak resident memory (MB)
  dRSS        peak during the measured run minus the peak after the warm-up (MB): what guidance adds
With `--one` the JSON line also has `run_peak_mb`: the peak of the measured run alone (Linux: the high-water mark
reset after the warm-up through /proc/self/clear_refs), which a higher peak while loading cannot hide; with
`--warm-guided` the warm-up also runs 2 guided steps, so first-call costs of the reward stay out of it.
  s/image     wall time of the measured run per image
Rows: plain (the stock pipeline), guidance on every step (j = 1 .. T-1), the same with gradient checkpointing,
noise optimisation (8 iterations through a 5-step sampler, then T plain steps) and a control that keeps every
guided step's graph alive, as memory would grow if the callback leaked its graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a large red circle on the left", "a small blue square at the top", "a large green triangle in the center",
           "a small yellow circle on the right"]
CONFIGS = ("plain", "guidance", "guidance_ckpt", "noise", "keep_graphs")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _reset_run_peak() -> bool:
    """Reset the process's resident high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _run_peak_mb() -> float:
    """The resident high-water mark since `_reset_run_peak` (VmHWM, MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def _models(tiny: bool):
    from zr_align.guidance import load_pipeline, load_reward

    if tiny:
        from zr_align.tiny import tiny_reward_model
        from zr_align.tiny.diffusion import tiny_pipeline

        return tiny_pipeline("sd"), load_reward(tiny_reward_model("qwen2_vl", tempfile.mkdtemp()))
    return (load_pipeline(ROOT / "models/tinyworld/sft"), load_reward(ROOT / "models/tinyworld/student"))


def _keep_graphs_callback(pipe, reward, prompts):
    """Control: the guidance callback, except that every guided step's graph stays alive until the end."""
    import torch

    from zr_align.guidance import GuidanceOptions, RewardGuidance

    kept = []

    class KeepGraphs(RewardGuidance):
        def _reward_gradient(self, sampler, schedule, latents, t, j, cond):
            x = latents.detach().requires_grad_(True)
            with torch.enable_grad():
                x0 = sampler.step(schedule, sampler.predict(x, t, cond), t, j, x)[1]
                value = self.reward(sampler.decode(x0), prompts).reward
                (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
            kept.append(value)
            return grad, value.detach()

    return KeepGraphs(pipe, reward, prompts, GuidanceOptions(scale=0.5))


def child(config: str, steps: int, batch: int, tiny: bool, warm_guided: bool = False) -> dict:
    import torch

    torch.set_num_threads(1)
    from zr_align.guidance import (
        GuidanceOptions,
        NoiseOptions,
        RewardGuidance,
        initial_noise,
        optimize_noise,
    )
    from zr_align.guidance.pipelines import run_pipeline

    pipe, reward = _models(tiny)
    prompts = (PROMPTS * batch)[:batch]
    latents = initial_noise(pipe, list(range(batch)))
    run_pipeline(pipe, prompts, latents, steps)  # warm-up
    if warm_guided:  # the reward's first forward and backward too, so that `run_peak_mb` holds no first-call cost
        run_pipeline(pipe, prompts, latents, 2,
                     callback=RewardGuidance(pipe, reward, prompts, GuidanceOptions(scale=0.5)))
    warm, resettable = _peak_mb(), _reset_run_peak()
    start = time.perf_counter()
    callback = None
    if config.startswith("guidance"):
        options = GuidanceOptions(scale=0.5, gradient_checkpointing=config == "guidance_ckpt")
        callback = RewardGuidance(pipe, reward, prompts, options)
    elif config == "keep_graphs":
        callback = _keep_graphs_callback(pipe, reward, prompts)
    elif config == "noise":
        latents = optimize_noise(pipe, reward, prompts, latents, NoiseOptions()).latents
    run_pipeline(pipe, prompts, latents, steps, callback=callback)
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    return {"config": config, "steps": steps, "batch": batch, "peak_rss_mb": round(peak, 1),
            "delta_rss_mb": round(peak - warm, 1), "s_per_image": round(seconds / batch, 3),
            "run_peak_mb": round(_run_peak_mb(), 1) if resettable else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ts", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--tiny", action="store_true", help="tiny random SD + reward instead of TinyWorld's models")
    parser.add_argument("--out", default=None, help="also write the table here")
    parser.add_argument("--one", action="store_true", help="(internal) measure one configuration in this process")
    parser.add_argument("--config", default="guidance", choices=CONFIGS, help="with --one: what to measure")
    parser.add_argument("--steps", type=int, default=10, help="with --one: T")
    parser.add_argument("--warm-guided", action="store_true", help="with --one: warm up with 2 guided steps too")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(child(args.config, args.steps, args.batch, args.tiny, args.warm_guided)))
        return 0
    rows = []
    for steps in args.ts:
        for config in args.configs:
            command = [sys.executable, __file__, "--one", "--steps", str(steps), "--batch", str(args.batch),
                       "--config", config] + (["--tiny"] if args.tiny else [])
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    header = "| config | T | batch | peak RSS (MB) | dRSS (MB) | s/image |\n|---|---|---|---|---|---|\n"
    table = header + "\n".join(f"| {r['config']} | {r['steps']} | {r['batch']} | {r['peak_rss_mb']} | "
                               f"{r['delta_rss_mb']} | {r['s_per_image']} |" for r in rows)
    models = "tiny random SD + tiny Qwen2-VL reward" if args.tiny else \
        "TinyWorld SFT (models/tinyworld/sft) + RISD student (models/tinyworld/student)"
    text = (f"# Peak memory of reward-guided sampling vs sampling steps T\n\n{models}, 64 px, CPU, 1 thread, one "
            f"process per row; guidance on every step j = 1..T-1 (scale 0.5).\n\n{table}\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
