"""The main job (`make demo`) at a tiny budget: it trains a LoRA on the shipped baseline with the shipped student,
judges baseline and tuned images on held-out prompts and writes the report."""

import json

import pytest
import torch

from zr_align.recipes.demo import run_demo
from zr_align.tinyworld.grammar import split_prompts


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, num_eval=4, eval_split="validation", log=lambda *_: None,
                      overrides=("max_steps=2", "checkpoint_every=2", "batch_size=2"))
    return out, report


def test_demo_writes_the_report_and_a_trained_lora(demo):
    from safetensors.torch import load_file

    out, report = demo
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "comparison.png").is_file() and "GSB net preference" in (out / "report.md").read_text()
    gsb = report["judge"]["gsb"]
    assert gsb["good"] + gsb["same"] + gsb["bad"] == 4
    assert report["training"]["steps"] == 2
    assert "validation split" in report["eval"]["prompts"]
    lora = load_file(out / "run" / "lora" / "pytorch_lora_weights.safetensors")
    # peft initialises every lora_B to zero: after two steps some must have moved
    assert any(torch.count_nonzero(w) for k, w in lora.items() if "lora_B" in k or "lora.up" in k)


def test_demo_judges_held_out_prompts_only(demo):
    _, report = demo
    splits = split_prompts(0)
    assert not set(splits.validation) & set(splits.train)
    assert report["judge"]["baseline"]["images"] == 4


def test_demo_refuses_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="eval_split must be 'validation' or 'test'"):
        run_demo(tmp_path, eval_split="train")
