"""The main job (`make demo`) at a tiny budget: it trains a reward-tuned model on the shipped baseline with the
shipped student (as shipped: every denoiser weight; also with a LoRA) and an SFT control matched to it, judges every
arm on held-out prompts and writes the report (Markdown, self-contained HTML, JSON, figures)."""

import json
from pathlib import Path

import pytest
import torch

from zr_align.recipes.demo import run_demo
from zr_align.tinyworld.grammar import split_prompts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, num_eval=4, eval_split="validation", log=lambda *_: None, curve_images=4,
                      overrides=("max_steps=2", "checkpoint_every=2", "batch_size=2", "optim.sft_batch_size=3",
                                 "optim.lr_schedule=cosine"), progress=False)
    return out, report


def test_demo_writes_the_report(demo):
    out, report = demo
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "comparison.png").is_file() and "GSB net preference" in (out / "report.md").read_text()
    gsb = report["judge"]["gsb"]
    assert gsb["good"] + gsb["same"] + gsb["bad"] == 4
    assert report["training"]["steps"] == 2
    assert "validation split" in report["eval"]["prompts"]


def test_demo_compares_four_arms_with_intervals_and_a_matched_sft_control(demo):
    out, report = demo
    assert [arm["name"] for arm in report["arms"]] == ["base", "SFT-control", "reward-tuned", "guidance"]
    card = json.loads((out / "compare" / "samples" / "guidance" / "model.json").read_text())
    assert card["sampler"].startswith("reward guidance") and card["lora"] is None
    sft, tuned = (json.loads((out / run / "metrics.jsonl").read_text().splitlines()[-1]) for run in ("sft_run", "run"))
    assert sft["step"] == tuned["step"] == 2  # the SFT control trains as many steps as the reward arm
    sft_config = (out / "sft_run" / "config.yaml").read_text()
    assert "method: sft" in sft_config and "batch_size: 2" in sft_config
    # as many renders per step as the reward run's SFT anchor, on the same learning-rate schedule
    assert "sft_batch_size: 3" in sft_config and "lr_schedule: cosine" in sft_config
    for arm in report["arms"]:
        a = arm["accuracy"]["all_correct"]
        assert a["low"] <= a["value"] <= a["high"]
    assert report["arms"][0]["vs_base"] is None and report["arms"][2]["vs_base"] == report["judge"]["gsb"]
    assert [p["step"] for p in report["curves"]["reward-tuned"]] == [0, 2]  # the base, then each checkpoint
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 3 and "SFT-control" in html and "guidance" in html
    assert all((out / name).is_file() for name in ("comparison.png", "curves.png", "attributes.png"))


def test_demo_judges_held_out_prompts_only(demo):
    _, report = demo
    splits = split_prompts(0)
    assert not set(splits.validation) & set(splits.train)
    assert report["judge"]["baseline"]["images"] == 4


def test_demo_refuses_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="eval_split must be 'validation' or 'test'"):
        run_demo(tmp_path, eval_split="train")


def test_demo_reports_the_judges_artefact_rates_per_arm(demo):
    """Realism, plausibility and aesthetics move through the judge's artefact flags: the report shows the share of
    images with each flag per arm, as the judge reads the arm's own samples."""
    import numpy as np
    from PIL import Image

    from zr_align.tinyworld.judge import ARTEFACTS, judge

    out, report = demo
    for arm in report["arms"]:
        folder = out / "compare" / "samples" / arm["name"]
        lines = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        verdicts = [judge(np.asarray(Image.open(folder / x["file"]).convert("RGB")), x["prompt"]) for x in lines]
        assert arm["artefacts"] == {a: sum(v.artefacts[a] for v in verdicts) / len(verdicts) for a in ARTEFACTS}
    md = (out / "report.md").read_text()
    assert "| arm | blur | noise | color shift | fragments | crop | low contrast | clutter |" in md


@pytest.fixture(scope="module")
def lora_demo(tmp_path_factory):
    """The demo with a LoRA trained instead (the earlier default's settings), no guidance arm."""
    out = tmp_path_factory.mktemp("lora_demo")
    report = run_demo(out, num_eval=4, eval_split="validation", log=lambda *_: None, curve_images=4, guidance=None,
                      overrides=("max_steps=2", "checkpoint_every=2", "batch_size=2", "model.trainable=lora",
                                 "optim.kl_weight=0.3", "optim.lr=1e-3"), progress=False)
    return out, report


def test_demo_with_a_lora_compares_the_base_with_each_runs_lora(lora_demo):
    """With `model.trainable: lora` both trained arms are the base with their run's LoRA, the SFT control trains a
    LoRA of the same rank at the reward run's lr, and both LoRAs have moved from peft's zero initialisation."""
    from safetensors.torch import load_file

    out, report = lora_demo
    assert [arm["name"] for arm in report["arms"]] == ["base", "SFT-control", "reward-tuned"]
    for name, run in (("SFT-control", "sft_run"), ("reward-tuned", "run")):
        arm = next(a for a in report["arms"] if a["name"] == name)
        assert arm["lora"] == arm["weights"] == str(out / run / "lora")
        card = json.loads((out / "compare" / "samples" / name / "model.json").read_text())
        assert card["model"] == "models/tinyworld/sft" and card["lora"] == str(out / run / "lora")
        lora = load_file(out / run / "lora" / "pytorch_lora_weights.safetensors")
        # peft initialises every lora_B to zero: after two steps some must have moved
        assert any(torch.count_nonzero(w) for k, w in lora.items() if "lora_B" in k or "lora.up" in k)
    sft_config = (out / "sft_run" / "config.yaml").read_text()
    assert "trainable: lora" in sft_config and "rank: 8" in sft_config and "lr: 0.001" in sft_config
    assert "LoRA rank 8, lr 0.001" in report["arms"][2]["how"]
    assert [p["step"] for p in report["curves"]["reward-tuned"]] == [0, 2]


def test_demo_as_shipped_trains_every_weight_and_compares_the_trained_pipelines(demo):
    """As shipped (`model.trainable: full`) both trained arms are their runs' whole pipelines, the SFT control trains
    every weight at the reward run's lr, and neither pipeline is the base."""
    from safetensors.torch import load_file

    out, report = demo
    base = load_file("models/tinyworld/sft/unet/diffusion_pytorch_model.safetensors")
    for name, run in (("SFT-control", "sft_run"), ("reward-tuned", "run")):
        arm = next(a for a in report["arms"] if a["name"] == name)
        assert arm["lora"] is None and arm["weights"] == str(out / run / "pipeline")
        card = json.loads((out / "compare" / "samples" / name / "model.json").read_text())
        assert card["model"] == str(out / run / "pipeline") and card["lora"] is None
        assert f"`{out / run / 'pipeline'}`" in (out / "report.md").read_text()
        trained = load_file(out / run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
        assert trained.keys() == base.keys()
        assert any(not torch.equal(trained[k], base[k]) for k in base)
    sft_config = (out / "sft_run" / "config.yaml").read_text()
    assert "trainable: full" in sft_config and "lr: 0.0001" in sft_config
    assert "every denoiser weight, lr 0.0001" in report["arms"][2]["how"]
    assert "plus the SFT loss on TinyWorld renders of the train prompts (weight 2.0)" in report["arms"][2]["how"]
    # as shipped, the reward is the mean of three RISD students, with gradients through the last K ~ U{1..5} steps
    assert "K ~ U{1..5}" in report["arms"][2]["how"]
    assert "the mean of 3 RISD students (`models/tinyworld/student`" in report["arms"][2]["how"]
    assert report["reward_ensemble"] == ["models/tinyworld/ensemble/cast/student",
                                         "models/tinyworld/ensemble/sharp/student"]


def test_curve_weights_load_a_full_checkpoint_as_the_run_saved_it(demo):
    """`trained_weights` names every denoiser weight as the trainer checkpoints them: the last checkpoint, loaded
    into a fresh base, is exactly the run's saved pipeline (a wrong name or a missing weight would fail to load or
    leave the base's value)."""
    from safetensors.torch import load_file

    from zr_align.diffusion.config import load_train_config
    from zr_align.recipes.curves import TRAINED_STATE_FILE, trained_weights
    from zr_align.runs import list_checkpoints
    from zr_align.tinyworld.sample import load_pipeline

    out, _ = demo
    pipe = load_pipeline("models/tinyworld/sft")
    weights = trained_weights(pipe, load_train_config(out / "run" / "config.yaml"))
    assert len(weights.params) == len(list(pipe.unet.parameters()))
    last = list_checkpoints(out / "run" / "checkpoints")[-1]
    weights.load_state_dict(torch.load(last / TRAINED_STATE_FILE, weights_only=True))
    saved = load_file(out / "run" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    state = pipe.unet.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_demo_soup_of_seeds_averages_each_trained_arm(tmp_path):
    """With `soup_seeds`, each trained arm is trained at every seed and judged as the average of its runs' weights:
    the soup's UNet is the mean of the two runs' (which differ), the arms load the soups, and the report says so."""
    from safetensors.torch import load_file

    out = tmp_path / "demo"
    report = run_demo(out, num_eval=4, eval_split="validation", log=lambda *_: None, curve_images=4, guidance=None,
                      overrides=("max_steps=2", "checkpoint_every=2", "batch_size=2"), progress=False,
                      soup_seeds=(0, 1))
    unet = "unet/diffusion_pytorch_model.safetensors"
    for arm, soup, runs in (("reward-tuned", "reward_soup", ("run", "run_seed1")),
                            ("SFT-control", "sft_soup", ("sft_run", "sft_run_seed1"))):
        seeds = [yaml_seed(out / run / "config.yaml") for run in runs]
        assert seeds == [0, 1]
        a, b = (load_file(out / run / "pipeline" / unet) for run in runs)
        mixed = load_file(out / soup / unet)
        assert any(not torch.equal(a[k], b[k]) for k in a)
        assert all(torch.equal(mixed[k], ((a[k].double() + b[k].double()) / 2).float()) for k in a)
        row = next(r for r in report["arms"] if r["name"] == arm)
        assert row["weights"] == str(out / soup) and "the weights of 2 runs (seeds 0, 1) averaged" in row["how"]
        card = json.loads((out / "compare" / "samples" / arm / "model.json").read_text())
        assert card["model"] == str(out / soup)
    assert report["soup_seeds"] == [0, 1] and "`reward_soup/`" in (out / "report.md").read_text()
    # the four runs went side by side, one thread each; their console output is kept
    assert report["workers"] >= 1 and "`logs/`" in (out / "report.md").read_text()
    assert {p.name for p in (out / "logs").glob("*.log")} == {"run.log", "run_seed1.log", "sft_run.log",
                                                               "sft_run_seed1.log"}


def yaml_seed(path):
    import yaml

    return yaml.safe_load(path.read_text())["seed"]


@pytest.mark.parametrize("seeds, overrides, message", [
    ((0,), (), "two or more distinct seeds"),
    ((1, 1), (), "two or more distinct seeds"),
    ((0, 1), ("model.trainable=lora",), "needs model.trainable: full"),
])
def test_demo_refuses_a_bad_soup_before_any_training(tmp_path, seeds, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_demo(tmp_path / "demo", soup_seeds=seeds, overrides=overrides, log=lambda *_: None)
    assert not (tmp_path / "demo").exists()


def test_demo_sft_first_starts_the_reward_run_from_an_sft_run_and_matches_the_control(tmp_path):
    """With `sft_first`, each reward run starts from the pipeline of a plain SFT run on every weight (not from the
    base), and the SFT control trains the two stages' steps in all."""
    import yaml
    from safetensors.torch import load_file

    out = tmp_path / "demo"
    report = run_demo(out, num_eval=4, eval_split="validation", log=lambda *_: None, curve_images=4, guidance=None,
                      overrides=("max_steps=2", "checkpoint_every=2", "batch_size=2", "seed=3"), progress=False,
                      sft_first=3)
    first = yaml.safe_load((out / "sft_first" / "config.yaml").read_text())
    run = yaml.safe_load((out / "run" / "config.yaml").read_text())
    control = yaml.safe_load((out / "sft_run" / "config.yaml").read_text())
    assert first["method"] == "sft" and first["max_steps"] == 3 and first["model"]["trainable"] == "full"
    assert first["seed"] == run["seed"] == control["seed"] == 3 and first["optim"]["lr"] == run["optim"]["lr"]
    assert run["model"]["path"] == str(out / "sft_first" / "pipeline")
    assert control["max_steps"] == 3 + 2 and control["model"]["path"] != run["model"]["path"]
    unet = "unet/diffusion_pytorch_model.safetensors"
    base = load_file(ROOT / "models" / "tinyworld" / "sft" / unet)
    sft = load_file(out / "sft_first" / "pipeline" / unet)
    assert any(not torch.equal(base[k], sft[k]) for k in base)  # the first stage trained
    rows = {r["name"]: r for r in report["arms"]}
    assert rows["reward-tuned"]["steps"] == rows["SFT-control"]["steps"] == 5
    assert "starting from 3 steps of SFT" in rows["reward-tuned"]["how"]
    # one step axis for both arms: the base at 0, the first stage's model at 3, the reward run's step 2 at 5
    curves = report["curves"]
    assert [p["step"] for p in curves["reward-tuned"]] == [0, 3, 5]
    assert [p["step"] for p in curves["SFT-control"]] == [0, 5]
    assert curves["reward-tuned"][0] == curves["SFT-control"][0]  # the same base point
    assert curves["reward-tuned"][1] != curves["reward-tuned"][0]  # the first stage's model, judged on its own


@pytest.mark.parametrize("steps, overrides, message", [
    (-1, (), "sft_first must be >= 0 steps"),
    (5, ("model.trainable=lora",), "needs model.trainable: full"),
])
def test_demo_refuses_a_bad_sft_first_before_any_training(tmp_path, steps, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_demo(tmp_path / "demo", sft_first=steps, overrides=overrides, log=lambda *_: None)
    assert not (tmp_path / "demo").exists()


def test_the_report_names_guidance_distillation_and_its_centred_form():
    """The arm's description in the report says which guidance target it was distilled toward (plain or centred)."""
    from zr_align.recipes.demo import _describe

    optim = {"lr": 1e-4, "cfg_distill_weight": 0.5, "cfg_distill_scale": 3.0, "cfg_distill_window": 0.25,
             "cfg_distill_center": False}
    resolved = {"method": "sft", "model": {"trainable": "full"}, "batch_size": 8,
                "data": {"sft_data": "tinyworld:train"}, "optim": optim}
    plain = _describe({"resolved": resolved})
    assert "the base's guided prediction at scale 3.0 on the top 25% of the noise range, weight 0.5" in plain
    centred = _describe({"resolved": {**resolved, "optim": {**optim, "cfg_distill_center": True}}})
    assert "the base's centred guided prediction" in centred
    assert "distillation" not in _describe({"resolved": {**resolved, "optim": {**optim, "cfg_distill_weight": 0.0}}})
