"""Step time and memory of a DRaFT-K training step on the tiny stack (CPU, 64 px, batch 2) or a saved model.

    python benchmarks/draft_memory.py [--ks 1 2 4 all] [--ts 8 20 50] [--family sd]
    python benchmarks/draft_memory.py --model models/tinyworld/sft --reward models/tinyworld/student --batch 8 \
        --ks 1 4 --ts 8 20 50 --all-ckpt           # TinyWorld, what `make demo` trains

One fresh process per configuration (peak RSS is per process). A step = sample T steps (the last K with
grad) + decode + tiny Qwen2-VL reward + backward + AdamW. Columns:
  s/step      median over 3 timed steps (after 1 warm-up)
  peak dRSS   peak resident memory during the steps minus that after a no-grad warm-up trajectory (MB)
  saved act   bytes autograd holds for backward at the end of the forward (deterministic; MB)
  peak RSS    the process's peak resident memory (MB), everything loaded; the last lines give its growth from the
              smallest to the largest T at each K (flat in T: the no-grad steps keep nothing)
With --all-ckpt, "on" also checkpoints the VAE decoder and the reward model (only the step inputs stay saved).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(family: str, k: int, steps: int, ckpt: bool, cache: str, all_ckpt: bool = False, model: str | None = None,
          reward_path: str | None = None, batch: int = 2) -> dict:
    import torch

    from zr_align.diffusion.sampling import DifferentiableSampler, SamplingConfig
    from zr_align.lora import add_lora, lora_parameters
    from zr_align.rewards import ZRewardModel
    from zr_align.testing import tiny_reward_model
    from zr_align.tiny.diffusion import tiny_pipeline

    torch.manual_seed(0)
    if model is None:
        pipe = tiny_pipeline(family)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    reward_dir = reward_path or os.path.join(cache, "reward")
    if not os.path.isdir(reward_dir):
        tiny_reward_model("qwen2_vl", reward_dir)
    reward = ZRewardModel.from_pretrained(reward_dir)
    config = SamplingConfig(num_steps=steps, k=k, checkpoint_steps=ckpt, checkpoint_vae=ckpt and all_ckpt)
    sampler = DifferentiableSampler(pipe, family, config, 64)
    if ckpt and all_ckpt:
        reward.enable_gradient_checkpointing()
    add_lora(sampler.denoiser, family, rank=4)
    params = lora_parameters(sampler.denoiser)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    prompts = (["a large red circle on the left", "a small blue square at the top"] * batch)[:batch]
    with torch.no_grad():
        reward(sampler.sample(prompts, "draft_k", torch.Generator().manual_seed(0)).images, prompts)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def train_step(seed: int, count_saved: bool = False) -> int:
        saved = {"bytes": 0}

        def pack(t):
            saved["bytes"] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack if count_saved else (lambda t: t), lambda t: t):
            trajectory = sampler.sample(prompts, "draft_k", torch.Generator().manual_seed(seed))
            loss = -reward(trajectory.images, prompts).reward.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return saved["bytes"]

    saved = train_step(0, count_saved=True)
    times = []
    for seed in range(1, 4):
        start = time.perf_counter()
        train_step(seed)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_step": statistics.median(times), "peak_delta_mb": peak - baseline,
            "saved_mb": saved / 2**20, "peak_mb": peak}


def run_one(args, k: int, steps: int, ckpt: bool, cache: str) -> dict:
    cmd = [sys.executable, __file__, "--family", args.family, "--batch", str(args.batch),
           "--child", str(k), str(steps), "1" if ckpt else "0", cache]
    cmd += (["--all-ckpt"] if args.all_ckpt else []) + (["--model", args.model] if args.model else [])
    cmd += ["--reward", args.reward] if args.reward else []
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", nargs="*", default=["1", "2", "4", "all"])
    parser.add_argument("--ts", nargs="*", type=int, default=[8, 20, 50])
    parser.add_argument("--family", default="sd")
    parser.add_argument("--model", default=None, help="a saved pipeline folder instead of the tiny random one")
    parser.add_argument("--reward", default=None, help="a ZRewardModel folder instead of the tiny random one")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ckpt", choices=("both", "on", "off"), default="both", help="step checkpointing runs")
    parser.add_argument("--all-ckpt", action="store_true",
                        help="with step checkpointing on, also checkpoint the VAE decoder and the reward model")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        k, steps, ckpt, cache = args.child
        print(json.dumps(child(args.family, int(k), int(steps), ckpt == "1", cache, args.all_ckpt, args.model,
                               args.reward, args.batch)))
        return
    import torch

    print(f"{args.model or 'family ' + args.family}, reward {args.reward or 'tiny'}, 64 px, batch {args.batch}, "
          f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"ckpt 'on' = steps{' + VAE decoder + reward model' if args.all_ckpt else ''}")
    print(f"{'K':>4}{'T':>5}{'step ckpt':>11}{'s/step':>9}{'peak dRSS MB':>14}{'saved act MB':>14}"
          f"{'peak RSS MB':>13}")
    peaks = {}
    with tempfile.TemporaryDirectory() as cache:
        for steps in args.ts:
            for k_name in args.ks:
                k = steps if k_name == "all" else int(k_name)
                for ckpt in {"both": (True, False), "on": (True,), "off": (False,)}[args.ckpt]:
                    r = run_one(args, k, steps, ckpt, cache)
                    peaks.setdefault((k_name, ckpt), []).append(r["peak_mb"])
                    print(f"{k_name:>4}{steps:>5}{'on' if ckpt else 'off':>11}{r['s_per_step']:>9.3f}"
                          f"{r['peak_delta_mb']:>14.1f}{r['saved_mb']:>14.1f}{r['peak_mb']:>13.0f}", flush=True)
    for (k_name, ckpt), values in peaks.items():
        print(f"K={k_name} step ckpt {'on' if ckpt else 'off'}: peak RSS at T={args.ts[-1]} / T={args.ts[0]} = "
              f"{values[-1] / values[0]:.3f} ({values[0]:.0f} -> {values[-1]:.0f} MB)")


if __name__ == "__main__":
    main()
