#!/usr/bin/env python
"""Crash safety of train_t2i.py: SIGKILL a run at random moments, resume it, compare with an uninterrupted run.

    python benchmarks/kill_resume.py [--kills 6] [--max-steps 8] [--seed 0] [--work-dir /tmp/kill_resume]

1. An uninterrupted reference run of configs/tiny_debug.yaml (max_steps, a checkpoint every step), timed.
2. Each trial starts the same run in its own folder and SIGKILLs it: trial 0 the moment a checkpoint folder
   `step_N.tmp` appears (a kill during a checkpoint write); trial 1 at a random time while the models load
   (before the first step); the others at a uniformly random time while the reference was training. The
   trial is then resumed with `--resume latest` until it finishes.
3. Per trial: when it was killed, what the folder held, max |LoRA - reference| over every tensor, and whether
   metrics.jsonl has exactly steps 1..max_steps.

One thread per process (float reductions must match the reference bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def command(out: Path, max_steps: int, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train_t2i.py"), "--config", str(ROOT / "configs" / "tiny_debug.yaml"),
            f"output_dir={out}", f"max_steps={max_steps}", "checkpoint_every=1", *extra]


def lora(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "lora" / "pytorch_lora_weights.safetensors")


def state_of(out: Path) -> str:
    checkpoints = out / "checkpoints"
    done = sorted((p.name for p in checkpoints.glob("step_*") if not p.name.endswith(".tmp")),
                  key=lambda n: int(n.split("_")[1])) if checkpoints.is_dir() else []
    partial = [p.name for p in checkpoints.glob("step_*.tmp")] if checkpoints.is_dir() else []
    return f"complete {done[-1] if done else 'none'}" + (f", partial {partial[0]}" if partial else "")


def kill_at(out: Path, max_steps: int, delay: float | None) -> tuple[float, str]:
    """Start a run; SIGKILL it after `delay` seconds, or (None) as soon as a checkpoint write is in progress."""
    start = time.perf_counter()
    process = subprocess.Popen(command(out, max_steps), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while process.poll() is None:
        elapsed = time.perf_counter() - start
        if delay is None:
            if any((out / "checkpoints").glob("step_*.tmp")):
                break
        elif elapsed >= delay:
            break
        time.sleep(0.002)
    if process.poll() is not None:
        return time.perf_counter() - start, "finished before the kill"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return time.perf_counter() - start, state_of(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="/tmp/kill_resume")
    args = parser.parse_args()
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = work / "cache"  # the tiny random components, built once by the reference run and shared

    reference = work / "reference"
    begin, first_step = time.perf_counter(), None
    process = subprocess.Popen(command(reference, args.max_steps), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    metrics = reference / "metrics.jsonl"
    while process.poll() is None:
        if first_step is None and metrics.is_file() and metrics.stat().st_size > 0:
            first_step = time.perf_counter() - begin
        time.sleep(0.002)
    duration = time.perf_counter() - begin
    if process.returncode != 0 or first_step is None:
        raise SystemExit("the reference run failed")
    (reference / ".tiny").rename(cache)
    expected = lora(reference)
    print(f"reference: {args.max_steps} steps, a checkpoint every step, {duration:.1f} s uninterrupted "
          f"(first step done at {first_step:.1f} s)")

    rng = random.Random(args.seed)
    worst = 0.0
    print(f"{'trial':>5}  {'killed at':>9}  {'moment':<21} {'folder when killed':<34} {'resumes':>7}  "
          f"{'max |dLoRA|':>11}  metrics")
    for trial in range(args.kills):
        out = work / f"trial_{trial}"
        out.mkdir()
        (out / ".tiny").symlink_to(cache, target_is_directory=True)
        if trial == 0:
            delay, where = None, "in a checkpoint write"
        elif trial == 1:
            delay, where = rng.uniform(0.2, 0.9) * first_step, "loading"
        else:
            delay, where = rng.uniform(0.8 * first_step, duration), "random, training"
        seconds, state = kill_at(out, args.max_steps, delay)
        resumes = 0
        while not (out / "lora").is_dir() or resumes == 0:
            result = subprocess.run(command(out, args.max_steps, "--resume", "latest"), cwd=ROOT, env=ENV,
                                    capture_output=True, text=True)
            resumes += 1
            if result.returncode != 0:
                raise SystemExit(f"trial {trial}: resume failed:\n{result.stderr[-2000:]}")
        got = lora(out)
        diff = max(float((got[k] - expected[k]).abs().max()) for k in expected)
        assert set(got) == set(expected)
        worst = max(worst, diff)
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        metrics_ok = "steps 1..%d, no gaps" % args.max_steps if steps == list(range(1, args.max_steps + 1)) \
            else f"WRONG {steps}"
        print(f"{trial:>5}  {seconds:>7.2f} s  {where:<21} {state:<34} {resumes:>7}  {diff:>11.3g}  {metrics_ok}",
              flush=True)
    print(f"max |dLoRA| over {args.kills} killed and resumed runs: {worst:.3g}")


if __name__ == "__main__":
    main()
