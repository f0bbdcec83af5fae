"""The demo's trained arms (`zr_align.recipes.arms`): planned before any training, trained side by side in one-thread
worker processes with exactly the weights of runs trained one after another in this process."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zr_align.diffusion import load_train_config
from zr_align.recipes.arms import MATCHED, REWARD_STEP_COST, Stage, plan_arms, train_jobs
from zr_align.runs.config_files import config_value, plain_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_debug.yaml")


def test_the_plan_matches_the_control_to_each_reward_run_before_any_training(tmp_path):
    plan = plan_arms(tmp_path, "configs/tinyworld_draft.yaml", "configs/tinyworld_sft_lora.yaml",
                     "models/tinyworld/sft", "models/tinyworld/student", ("max_steps=4", "optim.sft_batch_size=3"),
                     soup_seeds=(0, 2), sft_first=3)
    assert list(plan) == ["SFT-control", "reward-tuned"] and not tmp_path.joinpath("run").exists()
    first, reward = plan["reward-tuned"][1]
    assert [first.output_dir.name, reward.output_dir.name] == ["sft_first_seed2", "run_seed2"]
    assert (first.steps, reward.steps) == (3, 4)
    reward_config = plain_dict(load_train_config(reward.config, list(reward.overrides)))
    first_config = plain_dict(load_train_config(first.config, list(first.overrides)))
    assert reward_config["model"]["path"] == str(tmp_path / "sft_first_seed2" / "pipeline")
    assert first_config["method"] == "sft" and first_config["model"]["trainable"] == "full"
    assert first_config["seed"] == reward_config["seed"] == 2 and first_config["optim"]["lr"] == 1e-4
    (control,) = plan["SFT-control"][1]
    control_config = plain_dict(load_train_config(control.config, list(control.overrides)))
    assert control.output_dir.name == "sft_run_seed2" and control_config["model"]["path"] == "models/tinyworld/sft"
    for key in MATCHED:
        if key not in ("max_steps", "checkpoint_every"):
            assert config_value(control_config, key) == config_value(reward_config, key), key
    assert control.steps == control_config["max_steps"] == 3 + 4  # both stages' steps
    # a reward step costs more than an SFT step: the reward jobs start first, not last
    assert reward.step_cost == REWARD_STEP_COST > first.step_cost == control.step_cost == 1.0


def tiny_job(out: Path, seed: int, *extra) -> list[Stage]:
    overrides = (f"output_dir={out}", "model.trainable=full", "max_steps=2", "checkpoint_every=2", f"seed={seed}",
                 *extra)
    return [Stage(TINY, overrides, 2)]


def test_runs_side_by_side_give_the_weights_of_runs_one_after_another(tmp_path):
    weights = {}
    for workers in (2, 0):
        out = tmp_path / f"workers{workers}"
        jobs = [tiny_job(out / "a", 0), tiny_job(out / "b", 1)]
        records = train_jobs(jobs, workers, out, log=lambda *_: None, progress=False, poll=0.5)
        assert [len(r) for r in records] == [1, 1] and [r[0]["resolved"]["seed"] for r in records] == [0, 1]
        assert all(len(r[0]["metrics"]) == 2 for r in records)
        weights[workers] = [load_file(out / run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
                            for run in ("a", "b")]
        if workers:
            assert (out / "logs" / "a.log").is_file() and json.loads((out / "logs" / "b.result.json").read_text())
    for side, alone in zip(weights[2], weights[0]):
        assert side.keys() == alone.keys() and all(torch.equal(side[k], alone[k]) for k in side)
    assert any(not torch.equal(weights[2][0][k], weights[2][1][k]) for k in weights[2][0])  # the seeds differ


def test_a_failed_run_stops_the_others_and_names_its_log(tmp_path):
    long = tiny_job(tmp_path / "long", 0, "max_steps=400", "checkpoint_every=400")
    bad = tiny_job(tmp_path / "bad", 0, "reward.path=/nonexistent/reward")
    with pytest.raises(RuntimeError, match=r"the run in .*bad failed \(exit \d+\); its output: .*bad\.log"):
        train_jobs([long, bad], 2, tmp_path, log=lambda *_: None, progress=False, poll=0.5)
    assert "/nonexistent/reward" in (tmp_path / "logs" / "bad.log").read_text()
    metrics = tmp_path / "long" / "metrics.jsonl"
    done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    assert done < 400 and not (tmp_path / "long" / "pipeline").exists()  # stopped, not finished


def test_the_demo_refuses_a_negative_number_of_workers_before_any_training(tmp_path):
    from zr_align.recipes.demo import run_demo

    with pytest.raises(ValueError, match="workers must be >= 0 processes"):
        run_demo(tmp_path / "demo", workers=-1, log=lambda *_: None)
    assert not (tmp_path / "demo").exists()
