"""TinyWorld's generator: the build recipe at a tiny budget, stock loading, sampling CLI, determinism."""

import json

import pytest
import torch

from zr_align.cli import main as cli_main
from zr_align.recipes.build_sft import build_sft_model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tw")
    report = build_sft_model(root / "model", root / "work", vae_steps=2, sft_steps=2, decoder_steps=2,
                             batch_size=4, log=lambda *_: None)
    return root, report


def test_build_writes_a_stock_pipeline_folder(built):
    from diffusers import StableDiffusionPipeline

    root, report = built
    pipe = StableDiffusionPipeline.from_pretrained(root / "model", dtype=torch.float32)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    # zero terminal SNR: the input at the last training timestep holds nothing of the clean image, so the model
    # must take the object's position from the prompt (see `tinyworld_scheduler`)
    assert pipe.scheduler.config.rescale_betas_zero_snr
    assert float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6
    assert pipe.unet.dtype == torch.float32
    assert {"vae_psnr_db", "decoder_psnr_db", "sft_loss_last_100", "minutes"} <= set(report)
    # shipped in float16: half the bytes
    weights = root / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    params = sum(p.numel() for p in pipe.unet.parameters())
    assert weights.stat().st_size < 2.2 * params
    image = pipe("a large red circle on the left", num_inference_steps=2, output_type="np", height=64,
                 width=64).images[0]
    assert image.shape == (64, 64, 3)


def test_rebuild_is_deterministic(built, tmp_path):
    from safetensors.torch import load_file

    root, _ = built
    build_sft_model(tmp_path / "model", tmp_path / "work", vae_steps=2, sft_steps=2, decoder_steps=2, batch_size=4,
                    log=lambda *_: None)
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        a, b = load_file(root / "model" / part), load_file(tmp_path / "model" / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_decoder_refinement_trains_the_decoder_only(built, tmp_path):
    """The refinement sharpens what latents decode to and leaves the latent space (encoder, quant conv, scaling
    factor) exactly as the denoiser was trained in it."""
    import shutil

    from safetensors.torch import load_file

    from zr_align.recipes.build_sft import refine_decoder

    root, _ = built
    shutil.copytree(root / "model", tmp_path / "model")
    report = refine_decoder(tmp_path / "model", 30, batch_size=4, log=lambda *_: None)
    assert report["decoder_psnr_db"] > report["decoder_psnr_db_before"] + 0.5
    before = load_file(root / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    assert after.keys() == before.keys()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained and len(frozen) + len(trained) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(after[k].dtype == torch.float16 for k in after)
    assert sum(not torch.equal(before[k], after[k]) for k in trained) > 0.9 * len(trained)
    factors = [json.loads((r / "model" / "vae" / "config.json").read_text())["scaling_factor"] for r in (root, tmp_path)]
    assert factors[0] == factors[1]


def test_bad_decoder_steps_are_refused_before_any_work(built, tmp_path, capsys):
    from zr_align.recipes.build_sft import refine_decoder

    root, _ = built
    assert cli_main(["tinyworld", "build", "--decoder-steps", "-1", "--out", str(tmp_path / "model"),
                     "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err.strip()
    assert "decoder_steps must be 0" in err and "\n" not in err
    assert not (tmp_path / "model").exists() and not (tmp_path / "work").exists()
    before = (root / "model" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="at least 1 step"):
        refine_decoder(root / "model", 0)
    assert (root / "model" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_refine_decoder_cli(built, tmp_path, capsys):
    import shutil

    root, _ = built
    shutil.copytree(root / "model", tmp_path / "model")
    assert cli_main(["tinyworld", "refine-decoder", "--model", str(tmp_path / "model"), "--steps", "3",
                     "--batch-size", "4"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["decoder_steps"] == 3 and report["decoder_psnr_db"] != report["decoder_psnr_db_before"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(p.name for p in (root / "model").iterdir())
    assert cli_main(["tinyworld", "refine-decoder", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no vae/config.json" in err and "\n" not in err


def test_sample_and_judge_cli(built, tmp_path, capsys):
    root, _ = built
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on the left\na small blue square at the top\n")
    out = tmp_path / "samples"
    assert cli_main(["tinyworld", "sample", "--model", str(root / "model"), "--prompts", str(prompts),
                     "--out", str(out), "--steps", "2"]) == 0
    index = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in index] == prompts.read_text().split("\n")[:2]
    assert all((out / r["image"]).is_file() for r in index)
    capsys.readouterr()
    assert cli_main(["tinyworld", "judge", "--prompts", str(out / "samples.jsonl")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "summary" in json.loads(lines[-1])


def test_sample_rejects_prompts_outside_the_grammar(built, tmp_path, capsys):
    root, _ = built
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on the left\na huge red circle on the left\n")
    assert cli_main(["tinyworld", "sample", "--model", str(root / "model"), "--prompts", str(prompts),
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown size 'huge'" in err and "\n" not in err
