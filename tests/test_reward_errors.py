"""One-line errors for bad input, and the reward's arithmetic, save/load and CLI on a tiny Qwen2-VL."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from zr_align.cli import main as cli_main
from zr_align.rewards import ZRewardConfig, ZRewardModel
from zr_align.rubrics import Rubric, resolve_bin_token_ids


@pytest.fixture(scope="module")
def folder(tiny_reward_dirs):
    return tiny_reward_dirs("qwen2_vl")


@pytest.fixture(scope="module")
def model(folder):
    return ZRewardModel.from_pretrained(folder)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(3, 64, 64), "rank 4"),
        (torch.rand(1, 4, 64, 64), "3 channels"),
        (torch.rand(1, 1, 64, 64), "3 channels"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        ((torch.rand(1, 3, 64, 64) * 255).to(torch.uint8), "floating point"),
        (torch.rand(0, 3, 64, 64), "empty batch"),
    ],
)
def test_bad_images(model, images, match):
    with pytest.raises(ValueError, match=match) as excinfo:
        model(images, ["a red circle"] * max(1, images.shape[0]) if images.ndim == 4 else ["a red circle"])
    one_line(excinfo)


def test_out_of_range_pixels_rejected_only_without_clamp(folder):
    images = torch.rand(1, 3, 64, 64) * 1.16 - 0.08  # spans [-0.08, 1.08]: inside the tolerance of the convention check
    strict = ZRewardModel.from_pretrained(folder, clamp="none")
    with pytest.raises(ValueError, match=r"outside \[0, 1\] with clamp='none'") as excinfo:
        strict(images, ["a red circle"])
    one_line(excinfo)
    hard = ZRewardModel.from_pretrained(folder, clamp="hard")
    ste = ZRewardModel.from_pretrained(folder, clamp="straight_through")
    x = images.clone().requires_grad_(True)
    hard(x, ["a red circle"]).reward.sum().backward()
    saturated = (images < 0) | (images > 1)
    assert torch.count_nonzero(x.grad[saturated]) == 0  # a hard clamp kills the gradient of clipped pixels
    y = images.clone().requires_grad_(True)
    out = ste(y, ["a red circle"])
    out.reward.sum().backward()
    assert torch.count_nonzero(y.grad[saturated]) > 0  # straight-through keeps it
    assert torch.allclose(out.reward, hard(images, ["a red circle"]).reward)  # same forward value


def test_prompt_errors(model):
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="prompts is empty") as excinfo:
        model(images, [])
    one_line(excinfo)
    with pytest.raises(ValueError, match="got 3 prompts for 2 images") as excinfo:
        model(images, ["a", "b", "c"])
    one_line(excinfo)


def test_folder_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="does not exist") as excinfo:
        ZRewardModel.from_pretrained(tmp_path / "nope")
    one_line(excinfo)
    copy = tmp_path / "no_json"
    shutil.copytree(folder, copy)
    (copy / "zreward_config.json").unlink()
    with pytest.raises(ValueError, match="has no zreward_config.json") as excinfo:
        ZRewardModel.from_pretrained(copy)
    one_line(excinfo)
    # ...but the plain VLM folder can be wrapped, the family read from its config.json
    wrapped = ZRewardModel.from_vlm(copy)
    assert wrapped.config.family == "qwen2_vl"


def test_bin_that_is_not_one_token(model, folder):
    with pytest.raises(ValueError, match=r"bin 'red circle' is 2 tokens \['red', 'circle'\] for \w+") as excinfo:
        resolve_bin_token_ids(model.tokenizer, ["1.0", "red circle"])
    one_line(excinfo)
    with pytest.raises(ValueError, match=r"bin '9.5' is the unknown token") as excinfo:
        resolve_bin_token_ids(model.tokenizer, ["1.0", "9.5"])
    one_line(excinfo)
    rubric = Rubric(template=model.rubric.template, bins=(1, 2), bin_texts=("1.0", "low score")).to_dict()
    with pytest.raises(ValueError, match="bin 'low score' is 2 tokens"):
        ZRewardModel.from_pretrained(folder, rubric=rubric, bin_token_ids=None)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown VLM family 'gpt'"):
        ZRewardConfig(family="gpt")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ZRewardConfig(family="qwen2_vl", temperature=0)
    with pytest.raises(ValueError, match=r"template must contain \{image\}"):
        Rubric(template="{prompt} score:")
    with pytest.raises(ValueError, match="unknown field"):
        Rubric(template="{image}{prompt}{mood}")


def test_reward_is_weighted_risk_adjusted_expectation(folder):
    weights = {"alignment": 0.5, "realism": 0.2, "aesthetics": 0.1, "plausibility": 0.2}
    model = ZRewardModel.from_pretrained(folder, weights=weights, kappa=0.7)
    images = torch.rand(2, 3, 64, 64)
    out = model(images, ["a red circle", "a blue square"])
    expected = sum(w * (out.scores[d].mean - 0.7 * out.scores[d].std) for d, w in weights.items())
    assert torch.allclose(out.reward, expected, atol=1e-6)
    for dist in out.scores.values():
        assert torch.allclose(dist.probs.sum(-1), torch.ones(2), atol=1e-6)


def test_save_load_roundtrip_and_score_path(model, tmp_path):
    images = torch.rand(2, 3, 64, 64)
    prompts = ["a red circle", "a small green triangle at the top"]
    model.save_pretrained(tmp_path / "copy")
    stored = json.loads((tmp_path / "copy" / "zreward_config.json").read_text())
    assert stored["bin_token_ids"] == resolve_bin_token_ids(model.tokenizer, stored["rubric"]["bin_texts"])
    assert stored["rubric"]["bins"] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    again = ZRewardModel.from_pretrained(tmp_path / "copy")
    with torch.no_grad():
        a = model(images, prompts)
    b = again.score(images, prompts)
    assert not b.reward.requires_grad
    assert torch.allclose(a.reward, b.reward, atol=1e-6)


def test_cli_score_prints_one_json_line_per_image(folder, tmp_path, capsys):
    paths = []
    for i in range(2):
        array = (np.random.default_rng(i).random((64, 64, 3)) * 255).astype(np.uint8)
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(array).save(paths[-1])
    assert cli_main(["score", "--reward", str(folder), "--prompt", "a red circle", *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    model = ZRewardModel.from_pretrained(folder)
    direct = model.score(paths, ["a red circle"] * 2)
    for record, reward, path in zip(records, direct.reward, paths):
        assert record["image"] == path
        assert set(record["scores"]) == {"alignment", "realism", "aesthetics", "plausibility"}
        assert len(record["scores"]["alignment"]["probs"]) == 9
        assert record["reward"] == pytest.approx(float(reward), abs=1e-6)
    assert cli_main(["score", "--reward", str(tmp_path / "missing"), "--prompt", "x", paths[0]]) == 2
    assert "does not exist" in capsys.readouterr().err
