"""Reliability of the reward plugin and the `zr-align` CLI (issue 13): inputs in the wrong value convention,
damaged reward folders, unreadable images, prompts and image sizes outside what the model reads, a LoRA of
another model. Each case is a one-line `ValueError` (exit code 2 and one stderr line in the CLI) naming the
problem; nothing on disk changes."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zr_align.cli import main as cli_main
from zr_align.preprocess import check_images, from_signed
from zr_align.rewards import ZRewardModel
from zr_align.tinyworld.grammar import all_prompts
from zr_align.tinyworld.render import render

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def reward_dir(tiny_reward_dirs):
    return tiny_reward_dirs("qwen2_vl")


@pytest.fixture(scope="module")
def reward_model(reward_dir):
    return ZRewardModel.from_pretrained(reward_dir)


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def one_cli_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]  # (progress bars aside)
    assert len(lines) == 1 and lines[0].startswith(f"zr-align {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def images(seed=0, shape=(2, 3, 64, 64)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ silent wrong results
def test_images_in_0_255_are_refused(reward_model):
    with pytest.raises(ValueError, match=r"images look like \[0, 255\]; divide them by 255"):
        reward_model(images() * 255, [PROMPT] * 2)


def test_images_in_minus1_1_are_refused(reward_model):
    with pytest.raises(ValueError, match=r"decoder output in \[-1, 1\]; map them with zr_align.preprocess.from_signed"):
        reward_model(images() * 2 - 1, [PROMPT] * 2)


def test_decoder_overshoot_is_still_accepted_and_clamped(reward_model):
    """A trained decoder overshoots [0, 1] by a few hundredths: accepted and clamped. The random tiny decoders of
    the tests reach [-0.82, 1.47]: accepted once mapped with `from_signed`, as the engine's decode does."""
    x = images()
    slight = x * 1.1 - 0.05  # [-0.05, 1.05]
    torch.testing.assert_close(reward_model(slight, [PROMPT] * 2).reward,
                               reward_model(slight.clamp(0, 1), [PROMPT] * 2).reward)
    signed = (-0.06 + 0.6 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))).requires_grad_()
    assert ((signed + 1) / 2).min() < -0.6
    out = reward_model(from_signed(signed), [PROMPT] * 2).reward
    torch.testing.assert_close(out, reward_model(((signed + 1) / 2).clamp(0, 1), [PROMPT] * 2).reward)
    out.sum().backward()
    assert signed.grad.abs().sum() > 0


def test_from_signed_has_an_identity_gradient_and_keeps_the_clamp_modes():
    """`from_signed` pulls overshoot to [-0.05, 1.05] in the forward pass only: the gradient stays 0.5 everywhere,
    and after the reward's clamp the values equal those of the plain affine map."""
    signed = torch.linspace(-2.5, 2.5, 101).requires_grad_()
    unit = from_signed(signed)
    assert float(unit.detach().min()) == pytest.approx(-0.05) and float(unit.detach().max()) == pytest.approx(1.05)
    unit.sum().backward()
    assert torch.equal(signed.grad, torch.full_like(signed, 0.5))
    plain = (signed.detach() + 1) / 2
    inside = (plain >= -0.05) & (plain <= 1.05)
    assert torch.equal(unit.detach()[inside], plain[inside])
    assert torch.equal(unit.detach().clamp(0, 1), plain.clamp(0, 1))


def test_every_signed_tinyworld_render_is_refused(reward_model):
    """The rule refuses any value beyond 0.1 outside [0, 1], so a [-1, 1] image with only a small object darker
    than 45% grey is refused as well (the old share rule let small pale objects through)."""
    prompts = all_prompts()
    renders = torch.stack([torch.from_numpy(render(p, seed=i).image).permute(2, 0, 1) for i, p in enumerate(prompts)])
    unit = renders.float() / 255
    check_images(unit)  # every valid render passes
    refused = 0
    for image in unit * 2 - 1:
        try:
            check_images(image[None])
        except ValueError as error:
            assert "decoder output in [-1, 1]" in str(error)
            refused += 1
    assert refused == len(prompts)
    pale = torch.full((1, 3, 64, 64), 0.9)
    pale[..., 30:32, 30:32] = 0.2  # a 2x2 dark spot: 0.03% of the values below 0 in [-1, 1]
    with pytest.raises(ValueError, match=r"images look like decoder output in \[-1, 1\]"):
        reward_model(pale * 2 - 1, [PROMPT])


def test_non_finite_weights_are_refused_at_load(reward_dir, tmp_path):
    broken = shutil.copytree(reward_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 64 : 8 + header + 64 + 4096] = b"\xff" * 4096  # NaN float32 bit patterns in the tensors
    weights.write_bytes(bytes(data))
    before = folder_hash(broken)
    with pytest.raises(ValueError, match=r"weights in .*broken are not finite \(NaN or Inf in .*\); the file is "
                                         r"damaged"):
        ZRewardModel.from_pretrained(broken)
    assert folder_hash(broken) == before


def test_empty_and_too_long_prompts_are_refused(reward_model):
    with pytest.raises(ValueError, match="prompt 1 is empty; the reward scores an image against its prompt"):
        reward_model(images(), [PROMPT, "  "])
    long = " ".join(["red"] * 5000)
    with pytest.raises(ValueError, match=r"prompt 0 makes a rubric text of \d+ tokens \(before the image tokens\), "
                                         r"more than the reward model's 1024 positions; shorten it"):
        reward_model(images(), [long, PROMPT])


@pytest.mark.parametrize("side", [1, 8, 15])
def test_tiny_images_are_refused(reward_model, side):
    with pytest.raises(ValueError, match=f"images of {side}x{side} pixels are too small to score \\(each side must be "
                                         "at least 16, one vision patch\\)"):
        reward_model(images(shape=(1, 3, side, side)), [PROMPT])


def test_non_square_images_are_scored(reward_model):
    assert reward_model(images(shape=(1, 3, 64, 48)), [PROMPT]).reward.shape == (1,)


# ------------------------------------------------------------------ tracebacks instead of one-line errors
def test_truncated_weights_file_is_named(reward_dir, tmp_path):
    broken = shutil.copytree(reward_dir, tmp_path / "truncated")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated/model.safetensors is damaged \(.*\); replace it"):
        ZRewardModel.from_pretrained(broken)


def test_missing_weights_file_says_what_a_folder_holds(reward_dir, bad_images, tmp_path, capsys):
    broken = shutil.copytree(reward_dir, tmp_path / "missing")
    (broken / "model.safetensors").unlink()
    assert cli_main(["score", "--reward", str(broken), "--prompt", PROMPT, str(bad_images / "good.png")]) == 2
    line = one_cli_error(capsys, "score")
    assert "has no model.safetensors: the backbone weights are missing; a complete reward folder holds" in line


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_images")
    good = folder / "good.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(good)
    (folder / "text.png").write_text("not an image at all\n")
    (folder / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = bytearray(good.read_bytes())
    corrupt[60:400] = bytes(340)  # inside the IDAT chunk: the CRC and the deflate stream break
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "a_folder.png").mkdir()
    return folder


@pytest.mark.parametrize("name, message", [
    ("text.png", "is not an image Pillow can read"),
    ("truncated.png", "is damaged"),
    ("corrupt.png", "is damaged"),
    ("a_folder.png", "is a directory, not an image file"),
    ("absent.png", "does not exist"),
])
def test_score_reports_unreadable_images_in_one_line(reward_dir, bad_images, capsys, name, message):
    path = bad_images / name
    assert cli_main(["score", "--reward", str(reward_dir), "--prompt", PROMPT, str(bad_images / "good.png"),
                     str(path)]) == 2
    line = one_cli_error(capsys, "score")
    assert str(path) in line and message in line


def test_score_batch_size_must_be_positive(reward_dir, bad_images, capsys, reward_model):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["score", "--reward", str(reward_dir), "--prompt", PROMPT, "--batch-size", "0",
                  str(bad_images / "good.png")])
    assert exit_info.value.code == 2 and "--batch-size: must be an integer >= 1; got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        reward_model.score(images(), [PROMPT] * 2, batch_size=0)


def test_reward_eval_reports_a_corrupt_image_in_one_line(reward_dir, bad_images, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": PROMPT, "image_a": str(bad_images / "good.png"),
                                 "image_b": str(bad_images / "truncated.png"), "preference": "a"}) + "\n")
    assert cli_main(["reward", "eval", "--reward", str(reward_dir), "--data", str(pairs)]) == 2
    assert "truncated.png is damaged" in one_cli_error(capsys, "reward")


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        cli_main(["--debug", "score", "--reward", str(tmp_path / "none"), "--prompt", PROMPT, "x.png"])


def _tiny_sd_lora(tmp_path) -> Path:
    from diffusers import StableDiffusionPipeline

    from zr_align.lora import add_lora, save_lora
    from zr_align.tiny.diffusion import tiny_pipeline

    pipe = tiny_pipeline("sd")
    config = add_lora(pipe.unet, "sd", rank=4)
    save_lora(tmp_path / "other_lora", StableDiffusionPipeline, pipe.unet, config)
    return tmp_path / "other_lora"


def test_lora_of_another_model_is_refused_and_the_pipeline_untouched(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from zr_align.lora import check_lora_fits

    lora = _tiny_sd_lora(tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(ROOT / "models" / "tinyworld" / "sft")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(ValueError, match="the LoRA was trained on another model"):
        check_lora_fits(pipe.unet, lora)
    assert not getattr(pipe.unet, "peft_config", None)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items()) and len(before) == len(
        pipe.unet.state_dict())
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    out = tmp_path / "samples"
    assert cli_main(["tinyworld", "sample", "--model", str(ROOT / "models" / "tinyworld" / "sft"), "--lora", str(lora),
                     "--prompts", str(prompts), "--out", str(out), "--steps", "2"]) == 2
    assert "the LoRA was trained on another model" in one_cli_error(capsys, "tinyworld") and not out.exists()


def test_lora_of_another_model_is_refused_on_sdxl_and_by_load_lora(tmp_path):
    """SDXL: peft's own loader fails only after adding a stray adapter; the check refuses first, from the file."""
    from zr_align.lora import check_lora_fits, load_lora
    from zr_align.tiny.diffusion import tiny_pipeline

    lora = _tiny_sd_lora(tmp_path)
    pipe = tiny_pipeline("sdxl")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for load in (check_lora_fits, load_lora):
        with pytest.raises(ValueError, match="the LoRA was trained on another model"):
            load(pipe.unet, lora)
        assert not getattr(pipe.unet, "peft_config", None)  # no stray adapter
    after = pipe.unet.state_dict()
    assert len(after) == len(before) and all(torch.equal(before[k], v) for k, v in after.items())


def test_signed_tinyworld_renders_are_refused():
    """Real images in [-1, 1], not just random tensors: renders of every large-object prompt are refused."""
    from zr_align.preprocess.pixels import check_images
    from zr_align.tinyworld.grammar import all_prompts
    from zr_align.tinyworld.render import render

    for prompt in [p for p in all_prompts() if " large " in p]:
        image = torch.from_numpy(render(prompt, seed=0).image.copy()).permute(2, 0, 1).float()[None] / 255
        check_images(image)  # the [0, 1] image passes
        with pytest.raises(ValueError, match="from_signed"):
            check_images(image * 2 - 1)
