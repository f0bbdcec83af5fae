"""Rebuild TinyWorld's reward models: data, the teacher (SFT -> GDSO), the student (RISD), the baselines, and
the comparison table on held-out pairs (issue "Reward-model training"; SPEC §3, §4, §9).

    zr-align tinyworld build-rewards [--work-dir outputs/tinyworld_rewards] [--steps-scale 1.0]

1. Rated images + preference pairs: train split (training) and test split (evaluation; prompts never trained
   on), each from renders, corrupted renders and samples of the SFT generator, rated by the annotator panel.
2. `configs/reward/tinyworld_*.yaml` in order: teacher_sft -> gdso, grpo (both from the SFT teacher),
   reward_dance, student_sft, risd and opd (both from the GDSO teacher's cached marginal targets).
3. Every model evaluated on the held-out pairs; the table goes to `docs/tinyworld_rewards.md` and `.json`.
4. The GDSO teacher and the RISD student are copied to `models/tinyworld/teacher` and `.../student`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (run name, config file, role, how to evaluate)
RUNS = [
    ("teacher_sft", "tinyworld_teacher_sft.yaml"),
    ("gdso", "tinyworld_gdso.yaml"),
    ("grpo", "tinyworld_grpo.yaml"),
    ("reward_dance", "tinyworld_reward_dance.yaml"),
    ("student_sft", "tinyworld_student_sft.yaml"),
    ("risd", "tinyworld_risd.yaml"),
    ("opd", "tinyworld_opd.yaml"),
]
TEACHERS = ("teacher_sft", "gdso", "grpo")


def run_config(name: str, file: str, work: Path, steps_scale: float, seed: int, log, reuse: bool = False):
    from ..reward_training.config import RewardTrainConfig
    from ..reward_training.trainer import train_reward_model
    from ..train_config import load_config

    config = load_config(ROOT / "configs" / "reward" / file, cls=RewardTrainConfig)
    overrides = {
        "output_dir": str(work / name),
        "data": str(work / "data" / "train" / "rated.jsonl"),
        "max_steps": max(1, round(config.max_steps * steps_scale)),
        "seed": seed,
    }
    if not config.init.startswith("tinyworld:"):
        overrides["init"] = str(work / "teacher_sft" / "model")
    if config.method in ("risd", "opd"):
        config.risd.teacher = str(work / "gdso" / "model")
    for key, value in overrides.items():
        setattr(config, key, value)
    config.__post_init__()
    if reuse and (work / name / "model" / "zreward_config.json").is_file():
        log(f"reusing {work / name / 'model'}")
        return work / name / "model", _minutes_of(work / name) * 60
    start = time.perf_counter()
    path = train_reward_model(config, log=log)
    return path, time.perf_counter() - start


def _minutes_of(run: Path) -> float:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line)["seconds"] for line in lines) / 60


def build_reward_models(
    work_dir: str | Path = "outputs/tinyworld_rewards",
    out_dir: str | Path = "models/tinyworld",
    sft_model: str | None = "models/tinyworld/sft",
    images_per_prompt: int = 8,
    steps_scale: float = 1.0,
    num_rationales: int = 4,
    seed: int = 0,
    docs: str | Path | None = "docs",
    log=print,
    reuse: bool = False,
) -> dict:
    from ..reward_training.data import PreferencePairs, RatedImages
    from ..reward_training.evaluate import evaluate_scorer, format_table, load_scorer
    from .reward_data import make_reward_data

    work, out = Path(work_dir), Path(out_dir)
    sft = sft_model if sft_model and Path(sft_model, "model_index.json").is_file() else None
    log(f"reward data (SFT samples from {sft})")
    data_stats = {}
    for split, split_seed in (("train", seed), ("test", seed + 1)):
        stats_file = work / "data" / split / "stats.json"
        if reuse and stats_file.is_file():
            data_stats[split] = json.loads(stats_file.read_text())
        else:
            data_stats[split] = make_reward_data(work / "data" / split, split, images_per_prompt, split_seed,
                                                 sft_model=sft)
    times = {}
    for name, file in RUNS:
        log(f"== {name}")
        _, times[name] = run_config(name, file, work, steps_scale, seed, log, reuse)

    pairs = PreferencePairs(work / "data" / "test" / "pairs.jsonl")
    rated = RatedImages(work / "data" / "test" / "rated.jsonl")
    results = {}
    for name, _ in RUNS:
        path = work / name / "model"
        modes = [("greedy", 1), ("sample", num_rationales)] if name in TEACHERS else [(None, None)]
        for mode, n in modes:
            label = name if mode is None else f"{name} ({mode}{f' x{n}' if mode == 'sample' else ''})"
            options = {} if mode is None else {"mode": mode, "num_rationales": n}
            results[label] = evaluate_scorer(load_scorer(path, **options), pairs, rated, batch_size=16)
            results[label]["train_minutes"] = round(times[name] / 60, 1)
    table = format_table(results)
    log(table)
    report = {"data": data_stats, "results": results}
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        Path(docs, "tinyworld_rewards.json").write_text(json.dumps(report, indent=1, default=float))
        Path(docs, "tinyworld_rewards.md").write_text(
            "# TinyWorld reward models on held-out pairs\n\nGenerated by `zr-align tinyworld build-rewards` "
            f"(images per prompt {images_per_prompt}, steps scale {steps_scale}, seed {seed}; test-split prompts "
            "never seen in training).\n\n```\n" + table + "\n```\n")
    for name, target in (("gdso", "teacher"), ("risd", "student")):
        shutil.rmtree(out / target, ignore_errors=True)
        shutil.copytree(work / name / "model", out / target)
    return report
