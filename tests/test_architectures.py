"""Full-size architectures on the meta device, and every shipped real-model config set up on them up to the first
forward: families, LoRA targets and parameter counts, checkpointing switches, image-token budgets, dtypes."""

import re
from pathlib import Path

import pytest
import torch

from zr_align.architectures import (
    ARCHITECTURES,
    DEFAULT_DIFFUSION,
    count_parameters,
    load_architecture,
    meta_pipeline,
    meta_vlm,
    setup_models,
)
from zr_align.diffusion.config import load_train_config as load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REAL_CONFIGS = ["sd15.yaml", "sdxl.yaml", "sd35.yaml", "flux.yaml", "pixart_sigma.yaml"]
PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
             "flux": "FluxPipeline", "pixart": "PixArtSigmaPipeline"}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_parameter_counts_of_the_released_checkpoints(name):
    spec = load_architecture(name)
    if "components" in spec:
        pipe = meta_pipeline(name)
        counts = {k: count_parameters(v) for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
        assert all(p.device.type == "meta" for m in pipe.components.values() if isinstance(m, torch.nn.Module)
                   for p in m.parameters())
    else:
        counts = {"model": count_parameters(meta_vlm(name))}
    for component, expected in spec["parameters"].items():
        assert counts[component] == expected, (component, counts[component])


def _lora_claim(path: Path) -> tuple[float, int]:
    """(parameters in millions, number of projections) from the `lora.rank` comment of a template."""
    line = next(line for line in path.read_text().splitlines() if line.strip().startswith("rank:"))
    millions, modules = re.search(r"([0-9.]+)M LoRA parameters at r=16 \((\d+)", line).groups()
    return float(millions), int(modules)


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_real_model_config_sets_up_on_meta(name):
    config = load_config(CONFIGS / name)
    pipe, sampler, denoiser, reward = setup_models(config)
    family = config.model.family
    assert type(pipe).__name__ == PIPELINES[family]
    assert load_architecture(DEFAULT_DIFFUSION[family])["family"] == family

    # LoRA: only the adapter trains, in fp32; the base stays in the configured dtype; the template's counts hold
    lora = {n: p for n, p in denoiser.named_parameters() if p.requires_grad}
    assert lora and all(".lora_" in n and p.dtype == torch.float32 for n, p in lora.items())
    base_dtypes = {p.dtype for n, p in denoiser.named_parameters() if not p.requires_grad}
    assert base_dtypes == {getattr(torch, config.model.dtype)}
    millions, projections = _lora_claim(CONFIGS / name)
    assert round(sum(p.numel() for p in lora.values()) / 1e6, 1) == pytest.approx(millions, rel=0.05)
    assert len([n for n in lora if n.endswith("lora_A.default.weight")]) == projections

    # checkpointing switches reach the modules; the latent grid fits the resolution
    assert bool(getattr(denoiser, "is_gradient_checkpointing", False)) == config.sampling.checkpoint_denoiser
    assert bool(getattr(pipe.vae, "is_gradient_checkpointing", False)) == config.sampling.checkpoint_vae
    assert config.model.resolution % (pipe.vae_scale_factor * 2) == 0

    # the reward: a Qwen2.5-VL-3B on meta, its real image-token budget at this resolution, dtype, bins
    expected_tokens = {512: 18 * 18, 1024: 37 * 37}[config.model.resolution]  # round(side / 28) per side
    assert reward.preprocessor.num_image_tokens(config.model.resolution, config.model.resolution) == expected_tokens
    assert reward.model.dtype == getattr(torch, config.reward.dtype)
    assert reward.rubric.bin_texts == tuple("123456789")  # Qwen splits digits: one digit per half-point bin
    assert reward.config.clamp == config.reward.clamp
    layers = reward.model.model.language_model.layers
    assert all(layer.gradient_checkpointing for layer in layers) == config.reward.gradient_checkpointing


def test_architecture_must_match_family():
    config = load_config(CONFIGS / "sd15.yaml")
    with pytest.raises(ValueError, match="is a sdxl model, but model.family is sd"):
        setup_models(config, architecture="sdxl")
    with pytest.raises(ValueError, match="unknown architecture 'sd9'"):
        load_architecture("sd9")
