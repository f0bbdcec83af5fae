"""The demo's trained arms: the reward-tuned runs and their matched SFT control, planned before any of them starts,
trained side by side in one-thread processes, and averaged into soups when there are several seeds.

Every run trains at one thread, in its own process or in this one: a run's float sums then come out the same on any
machine of the same kind whatever its number of cores (at two threads the same seed's run parts from the one-thread
run within a few hundred steps and is another draw: `docs/tinyworld_demo_validation.md`, "Longer, deeper, and seeds
averaged"). With `workers` processes the runs go side by side (`python -m zr_align.recipes.arms`, one per job), each
exactly as it would have gone alone.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..diffusion import fine_tune, load_train_config
from ..runs.config_files import config_value, plain_dict

# settings the SFT control takes from the reward run, so that both arms train the same weights as long, as fast
# (`optim.sft_batch_size`: the control sees as many renders per step as the reward run's SFT anchor), with the same
# guidance distillation: the control is everything the reward run does but the reward
MATCHED = ("seed", "max_steps", "batch_size", "checkpoint_every", "optim.lr", "optim.warmup_steps", "optim.lr_schedule",
           "optim.min_lr_ratio", "optim.sft_batch_size", "optim.cfg_distill_weight", "optim.cfg_distill_scale",
           "optim.cfg_distill_window", "optim.cfg_distill_rescale", "optim.cfg_distill_center", "model.trainable",
           "lora.rank", "lora.alpha", "lora.dropout", "lora.targets")


# what a step of a reward method (sampling a trajectory, decoding, scoring, backprop) costs against an SFT step: the
# order in which jobs start (longest first, so that the last one is not left alone on a core)
REWARD_STEP_COST = 10.0


@dataclass(frozen=True)
class Stage:
    """One fine-tuning run: `train_t2i.py --config CONFIG --overwrite OVERRIDES` (`output_dir=` among them), its
    steps and their relative cost."""

    config: str
    overrides: tuple[str, ...]
    steps: int
    step_cost: float = 1.0

    @property
    def output_dir(self) -> Path:
        return Path(next(o for o in reversed(self.overrides) if o.startswith("output_dir="))[len("output_dir="):])


def _stage(config: str, overrides: list[str]) -> tuple[Stage, dict]:
    """The stage of `config` with `overrides`, and its config as `save_config` writes it (loaded once)."""
    loaded = load_train_config(config, overrides)
    cost = 1.0 if loaded.method in ("sft", "dpo") else REWARD_STEP_COST
    return Stage(config, tuple(overrides), loaded.max_steps, cost), plain_dict(loaded)


def plan_arms(out: Path, config: str, sft_config: str, base_model: str, reward: str, overrides: tuple[str, ...],
              soup_seeds: tuple[int, ...] = (), sft_first: int = 0) -> dict[str, list[list[Stage]]]:
    """The runs of both trained arms, one job per seed (a job's stages run one after another), before any training:
    the reward-tuned arm exactly as `config` says (checkpoints every 25 steps for the curves; where checkpoints are
    written does not change training; `run/` at the first seed, `run_seedS/` at the others), with `sft_first` steps
    of the SFT config on every weight before it (`sft_first/`, `sft_first_seedS/`; the reward run starts from that
    pipeline), and the SFT control matched to it (`sft_run/`, `sft_run_seedS/`): the reward run's `MATCHED` settings,
    and as many steps as both stages."""
    jobs: dict[str, list[list[Stage]]] = {"SFT-control": [], "reward-tuned": []}
    for i, seed in enumerate(soup_seeds or (None,)):
        suffix = "" if i == 0 else f"_seed{seed}"
        seeded = [] if seed is None else [f"seed={seed}"]
        first_dir = out / ("sft_first" + suffix)
        start = str(first_dir / "pipeline") if sft_first else base_model
        run = [f"output_dir={out / ('run' + suffix)}", f"model.path={start}", f"reward.path={reward}",
               "checkpoint_every=25", *overrides, *seeded]
        reward_stage, resolved = _stage(config, run)
        stages = [reward_stage]
        if sft_first:
            stages.insert(0, _stage(sft_config, [
                f"output_dir={first_dir}", f"model.path={base_model}", "model.trainable=full",
                f"optim.lr={resolved['optim']['lr']}", f"batch_size={resolved['batch_size']}",
                f"max_steps={sft_first}", f"checkpoint_every={sft_first}", f"seed={resolved['seed']}"])[0])
        jobs["reward-tuned"].append(stages)
        matched = [f"{key}={json.dumps(config_value(resolved, key))}" for key in MATCHED]
        steps, every = resolved["max_steps"], resolved["checkpoint_every"]
        longer = [f"max_steps={steps + sft_first}", f"checkpoint_every={every * (steps + sft_first) // steps}"]
        jobs["SFT-control"].append([_stage(sft_config, [f"output_dir={out / ('sft_run' + suffix)}",
                                                        f"model.path={base_model}", *matched,
                                                        *(longer if sft_first else [])])[0]])
    return jobs


def train_stage(stage: Stage) -> dict:
    """One run, afresh (its folder belongs to the demo), at one thread: its resolved config, metrics and timing."""
    import torch
    import yaml

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        out = fine_tune(load_train_config(stage.config, list(stage.overrides)), overwrite=True)
    finally:
        torch.set_num_threads(threads)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"dir": str(out), "config": stage.config, "resolved": resolved, "metrics": metrics,
            "minutes": round((time.perf_counter() - start) / 60, 2)}


def train_jobs(jobs: list[list[Stage]], workers: int, out: Path, log=print, progress: bool = True,
               poll: float = 2.0) -> list[list[dict]]:
    """Every job's records, in order. `workers` 0: here, one job after another; else up to that many jobs at once,
    each a `python -m zr_align.recipes.arms` process at one thread, the longest first (steps times `step_cost`), its
    console output in `out/logs/<run>.log`, and one progress bar here over the steps of all runs (read from their
    `metrics.jsonl`). A failed job stops the others and raises with the path of its log."""
    for job in jobs:
        for stage in job:
            log(f"train_t2i.py --config {stage.config} --overwrite " + " ".join(stage.overrides))
            shutil.rmtree(stage.output_dir, ignore_errors=True)  # the demo's own folders, remade by each run
    if workers == 0:
        return [[train_stage(stage) for stage in job] for job in jobs]
    from tqdm.auto import tqdm

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stages = [stage for job in jobs for stage in job]
    queue = sorted(range(len(jobs)), key=lambda i: -sum(s.steps * s.step_cost for s in jobs[i]))
    records, running = [None] * len(jobs), {}
    bar = tqdm(total=sum(s.steps for s in stages), disable=not progress, unit="step",
               desc=f"{len(stages)} runs, {min(workers, len(jobs))} at a time")
    try:
        while queue or running:
            while queue and len(running) < workers:
                i = queue.pop(0)
                running[i] = _start_job(jobs[i], logs)
            time.sleep(poll)
            bar.update(sum(_steps_done(s) for s in stages) - bar.n)
            for i, (process, result, log_path) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[i]
                if process.returncode != 0:
                    raise RuntimeError(f"the run in {jobs[i][-1].output_dir} failed (exit {process.returncode}); "
                                       f"its output: {log_path}")
                records[i] = json.loads(result.read_text())
    finally:
        for process, _, _ in running.values():  # a failure or an interrupt stops the other runs
            process.terminate()
            process.wait()
        bar.close()
    return records


def _start_job(stages: list[Stage], logs: Path):
    """A worker process for one job: `python -m zr_align.recipes.arms JOB.json RESULT.json`, one thread."""
    import os
    import subprocess
    import sys

    name = stages[-1].output_dir.name
    job, result, log_path = logs / f"{name}.job.json", logs / f"{name}.result.json", logs / f"{name}.log"
    job.write_text(json.dumps([dataclasses.asdict(s) for s in stages]))
    result.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log_path, "w") as console:
        process = subprocess.Popen([sys.executable, "-m", "zr_align.recipes.arms", str(job), str(result)],
                                   stdout=console, stderr=subprocess.STDOUT, env=env)
    return process, result, log_path


def _steps_done(stage: Stage) -> int:
    try:
        with open(stage.output_dir / "metrics.jsonl") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def train_arms(out: Path, config: str, sft_config: str, base_model: str, reward: str, overrides: tuple[str, ...],
               log, soup_seeds: tuple[int, ...] = (), sft_first: int = 0, workers: int = 0,
               progress: bool = True) -> dict[str, dict]:
    """Phases 1 and 2 of the demo: the runs of `plan_arms`, trained by `train_jobs`; each arm is its run, or with
    several seeds the average of its runs' weights (`reward_soup/`, `sft_soup/`). The SFT control comes first."""
    plan = plan_arms(out, config, sft_config, base_model, reward, overrides, soup_seeds, sft_first)
    log(f"[1/5] reward fine-tuning and [2/5] the SFT control (same base, trained weights, lr, steps and prompts per "
        f"step; the denoising loss on renders): {sum(map(len, plan.values()))} jobs, one thread each, "
        + (f"up to {workers} side by side" if workers else "one after another"))
    jobs = [job for arm in plan.values() for job in arm]
    records = iter(train_jobs(jobs, workers, out, log, progress))
    arms = {}
    for name, soup in (("SFT-control", "sft_soup"), ("reward-tuned", "reward_soup")):
        runs = []
        for _ in plan[name]:
            *first, run = next(records)
            if first:  # the arm's training is both stages
                run = {**run, "sft_first": sft_first, "minutes": round(run["minutes"] + first[0]["minutes"], 2)}
            runs.append(run)
        arms[name] = _souped(runs, out / soup)
    return arms


def _souped(runs: list[dict], soup_dir: Path) -> dict:
    """The first run, standing for the arm; with several runs (seeds), their weights averaged into `soup_dir` (a
    model soup, `zr_align.diffusion.soup`) and the training time of all of them."""
    if len(runs) == 1:
        return runs[0]
    from ..diffusion.soup import average_pipelines

    shutil.rmtree(soup_dir, ignore_errors=True)  # the demo's own folder, remade like its runs
    average_pipelines([Path(run["dir"]) / "pipeline" for run in runs], soup_dir)
    seeds = [run["resolved"]["seed"] for run in runs]
    return {**runs[0], "minutes": round(sum(run["minutes"] for run in runs), 2),
            "soup": {"weights": str(soup_dir), "seeds": seeds, "runs": [run["dir"] for run in runs]}}


if __name__ == "__main__":  # a worker of `train_jobs`: JOB.json (its stages) -> RESULT.json (their records)
    import sys

    job_path, result_path = map(Path, sys.argv[1:3])
    done = [train_stage(Stage(**{**s, "overrides": tuple(s["overrides"])})) for s in json.loads(job_path.read_text())]
    result_path.with_suffix(".tmp").write_text(json.dumps(done))
    result_path.with_suffix(".tmp").replace(result_path)
