"""The tiny diffusion pipelines are real stock pipelines: they save, re-load and sample with the stock classes."""

import pytest
import torch

from zr_align.tiny.diffusion import (
    DIFFUSION_FAMILIES,
    clip_tokenizer,
    t5_tokenizer,
    tiny_pipeline,
)

PROMPT = "a large red circle on the left"
STOCK_CLASSES = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "pixart": "PixArtSigmaPipeline",
    "flux": "FluxPipeline",
}


def sample(pipe, family: str, seed: int = 0, steps: int = 3) -> torch.Tensor:
    # PixArt-Sigma has resolution bins only for 256 px and up; clean_caption needs bs4/ftfy.
    extra = dict(use_resolution_binning=False, clean_caption=False) if family == "pixart" else {}
    return pipe(
        PROMPT,
        num_inference_steps=steps,
        height=64,
        width=64,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        **extra,
    ).images


def denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


@pytest.mark.parametrize("family", DIFFUSION_FAMILIES)
def test_saved_pipeline_reloads_and_samples(family, tmp_path):
    pipe = tiny_pipeline(family, out_dir=tmp_path / family)
    assert type(pipe).__name__ == STOCK_CLASSES[family]
    assert (tmp_path / family / "model_index.json").is_file()
    assert pipe.vae_scale_factor == 4

    images = sample(pipe, family)
    assert images.shape == (1, 3, 64, 64)
    assert torch.isfinite(images).all()

    # Same seed -> identical weights and identical samples.
    again = sample(tiny_pipeline(family, out_dir=tmp_path / "again", seed=0), family)
    torch.testing.assert_close(again, images, rtol=0, atol=0)
    # The in-memory pipeline has the same weights; its samples match up to float rounding (memory layout).
    torch.testing.assert_close(sample(tiny_pipeline(family, seed=0), family), images, rtol=0, atol=1e-5)
    other = sample(tiny_pipeline(family, seed=1), family)
    assert (other - images).abs().max() > 1e-3


@pytest.mark.parametrize("family", DIFFUSION_FAMILIES)
def test_models_are_tiny(family):
    pipe = tiny_pipeline(family)
    denoiser_params = sum(p.numel() for p in denoiser(pipe).parameters())
    models = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    total = sum(p.numel() for model in models for p in model.parameters())
    assert denoiser_params < 1_500_000
    assert total < 5_000_000


def test_building_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipeline("sd")
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_prediction_type(family):
    assert tiny_pipeline(family).scheduler.config.prediction_type == "epsilon"
    pipe = tiny_pipeline(family, prediction_type="v_prediction")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.timestep_spacing == "trailing"


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="allowed: sd, sdxl, sd3, pixart, flux"):
        tiny_pipeline("sd4")
    with pytest.raises(ValueError, match="flux"):
        tiny_pipeline("flux", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="epsilon, v_prediction"):
        tiny_pipeline("sd", prediction_type="sample")


def test_tokenizers_keep_tinyworld_words_whole():
    words = "a small large red green blue yellow purple orange circle square triangle on the left right at top bottom "
    words += "in center"
    cases = [(clip_tokenizer(), "<|startoftext|>", "<|endoftext|>"), (t5_tokenizer(), None, "</s>")]
    for tokenizer, first, last in cases:
        ids = tokenizer(words).input_ids
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert "<unk>" not in tokens
        assert tokens[-1] == last and (first is None or tokens[0] == first)
        assert len(ids) == len(words.split()) + (2 if first else 1)
        # The stock pipelines' call on a too-long prompt: truncation keeps the final eos (CLIP pools there).
        long_prompt = " ".join([PROMPT] * 5)
        max_length = tokenizer.model_max_length
        ids = tokenizer(long_prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
        assert len(ids) == tokenizer.model_max_length == 16
        assert ids[-1] == tokenizer.eos_token_id
