"""LoRA on the tiny denoisers: trainable fp32 adapters, a diffusers-format save that stock pipelines load, kohya."""

import json

import diffusers
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from zr_align.lora import (
    LORA_TARGETS,
    LORA_WEIGHT_NAME,
    add_lora,
    export_kohya,
    load_lora,
    lora_parameters,
    save_lora,
)
from zr_align.tiny.diffusion import DIFFUSION_FAMILIES, tiny_pipeline

RANK, ALPHA = 4, 8  # alpha != rank: a save that drops alpha reloads at half the LoRA scale


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    """family -> folder of a saved tiny pipeline, built once per module."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tmp_path_factory.mktemp(family)
            tiny_pipeline(family, out_dir=cache[family])
        return cache[family]

    return get


PIPELINES = {
    "sd": diffusers.StableDiffusionPipeline,
    "sdxl": diffusers.StableDiffusionXLPipeline,
    "sd3": diffusers.StableDiffusion3Pipeline,
    "pixart": diffusers.PixArtSigmaPipeline,
    "flux": diffusers.FluxPipeline,
}


def load_pipeline(family: str, path):
    """A fresh stock pipeline from a saved tiny pipeline folder."""
    extra = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}
    return PIPELINES[family].from_pretrained(path, **extra)


def denoiser_of(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def denoiser_inputs(family: str, denoiser, dtype=torch.float32) -> dict:
    """A fixed random input of the denoiser's forward: 16x16x4 latents, 8 text tokens, one timestep."""
    g = torch.Generator().manual_seed(0)
    config, tokens = denoiser.config, 8

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    if family in ("sd", "sdxl"):
        inputs = dict(
            sample=randn(1, config.in_channels, 16, 16),
            timestep=torch.tensor([500]),
            encoder_hidden_states=randn(1, tokens, config.cross_attention_dim),
        )
        if family == "sdxl":
            pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]]).to(dtype)  # original size, crop, target size
            inputs["added_cond_kwargs"] = {"text_embeds": randn(1, pooled_dim), "time_ids": time_ids}
        return inputs
    if family == "sd3":
        return dict(
            hidden_states=randn(1, config.in_channels, 16, 16),
            timestep=torch.tensor([500.0]),
            encoder_hidden_states=randn(1, tokens, config.joint_attention_dim),
            pooled_projections=randn(1, config.pooled_projection_dim),
        )
    if family == "pixart":
        return dict(
            hidden_states=randn(1, config.in_channels, 16, 16),
            timestep=torch.tensor([500]),
            encoder_hidden_states=randn(1, tokens, config.caption_channels),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        )
    # flux: 16x16 latents packed into 8x8 tokens of 2x2x4 channels; ids are (0, row, column)
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    img_ids = torch.stack([torch.zeros(64), rows.flatten(), cols.flatten()], dim=1)
    return dict(
        hidden_states=randn(1, 64, config.in_channels),
        timestep=torch.tensor([0.5]),
        encoder_hidden_states=randn(1, tokens, config.joint_attention_dim),
        pooled_projections=randn(1, config.pooled_projection_dim),
        img_ids=img_ids,
        txt_ids=torch.zeros(tokens, 3),
    )


def run(family, denoiser, **kwargs):
    with torch.no_grad():
        return denoiser(**denoiser_inputs(family, denoiser, **kwargs)).sample.float()


def perturb_lora_b(denoiser, scale: float = 0.1):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)


@pytest.mark.parametrize("family", DIFFUSION_FAMILIES)
def test_add_lora_trains_only_zero_init_fp32_adapters(family, base_dirs):
    denoiser = denoiser_of(load_pipeline(family, base_dirs(family)))
    before = run(family, denoiser)
    config = add_lora(denoiser, family, rank=RANK, alpha=ALPHA)
    assert (config.r, config.lora_alpha) == (RANK, ALPHA)

    trainable = {name for name, p in denoiser.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert all(p.dtype == torch.float32 for p in lora_parameters(denoiser))
    assert len(lora_parameters(denoiser)) == len(trainable)
    # Every default target got an adapter.
    for target in LORA_TARGETS[family]:
        assert any(f"{target}.lora_A." in name for name in trainable), target
    # lora_B starts at zero, so the adapted model is the base model.
    assert all(p.abs().max() == 0 for name, p in denoiser.named_parameters() if ".lora_B." in name)
    torch.testing.assert_close(run(family, denoiser), before, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_lora_stays_fp32_on_a_bf16_base(family, base_dirs):
    denoiser = denoiser_of(load_pipeline(family, base_dirs(family))).to(torch.bfloat16)
    add_lora(denoiser, family, rank=RANK, alpha=ALPHA)
    assert {p.dtype for p in lora_parameters(denoiser)} == {torch.float32}
    assert {p.dtype for p in denoiser.parameters() if not p.requires_grad} == {torch.bfloat16}
    perturb_lora_b(denoiser)
    out = denoiser(**denoiser_inputs(family, denoiser, dtype=torch.bfloat16)).sample
    out.float().square().mean().backward()
    grads = [p.grad for p in lora_parameters(denoiser)]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("family", DIFFUSION_FAMILIES)
def test_saved_lora_reloads_exactly_in_a_stock_pipeline(family, base_dirs, tmp_path):
    base = base_dirs(family)
    pipe = load_pipeline(family, base)
    denoiser = denoiser_of(pipe)
    before = run(family, denoiser)
    config = add_lora(denoiser, family, rank=RANK, alpha=ALPHA)
    perturb_lora_b(denoiser)
    expected = run(family, denoiser)
    # The LoRA visibly changes the output, so reloading it at another scale (a lost alpha) would fail below.
    assert (expected - before).abs().max() > 1e-2

    out_dir = tmp_path / "lora"
    path = save_lora(out_dir, type(pipe), denoiser, config)
    assert path == out_dir / LORA_WEIGHT_NAME
    assert [p.name for p in out_dir.iterdir()] == [LORA_WEIGHT_NAME]  # no temporary file left behind
    with safe_open(path, framework="pt") as file:
        metadata = json.loads(file.metadata()["lora_adapter_metadata"])
    prefix = "unet" if family in ("sd", "sdxl") else "transformer"
    assert (metadata[f"{prefix}.r"], metadata[f"{prefix}.lora_alpha"]) == (RANK, ALPHA)

    fresh = load_pipeline(family, base)
    if hasattr(fresh, "load_lora_weights"):
        fresh.load_lora_weights(out_dir)
    else:  # PixArtSigmaPipeline has no LoRA loader in diffusers 0.42
        load_lora(denoiser_of(fresh), out_dir)
    torch.testing.assert_close(run(family, denoiser_of(fresh)), expected, rtol=0, atol=1e-4)


def test_repeated_saves_give_the_same_bytes(base_dirs, tmp_path):
    """safetensors orders its metadata map at random per call; save_lora sorts it, so 8 saves agree byte for byte
    (without the sort, 8 agreeing saves of two entries happen with probability 1/128)."""
    pipe = load_pipeline("sd", base_dirs("sd"))
    config = add_lora(pipe.unet, "sd", rank=RANK, alpha=ALPHA)
    saved = {save_lora(tmp_path / str(i), type(pipe), pipe.unet, config).read_bytes() for i in range(8)}
    assert len(saved) == 1
    with safe_open(tmp_path / "0" / LORA_WEIGHT_NAME, framework="pt") as file:
        assert set(file.metadata()) == {"format", "lora_adapter_metadata"}


def test_interrupted_save_keeps_the_previous_file(base_dirs, tmp_path):
    pipe = load_pipeline("sd", base_dirs("sd"))
    config = add_lora(pipe.unet, "sd", rank=RANK, alpha=ALPHA)
    path = save_lora(tmp_path, type(pipe), pipe.unet, config)
    saved = path.read_bytes()

    class InterruptedPipeline(type(pipe)):
        @classmethod
        def save_lora_weights(cls, save_directory, weight_name=None, **kwargs):
            (save_directory / weight_name).write_bytes(b"half a file")
            raise KeyboardInterrupt

    perturb_lora_b(pipe.unet)
    with pytest.raises(KeyboardInterrupt):
        save_lora(tmp_path, InterruptedPipeline, pipe.unet, config)
    assert [p.name for p in tmp_path.iterdir()] == [LORA_WEIGHT_NAME]
    assert path.read_bytes() == saved


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_kohya_export(family, base_dirs, tmp_path):
    base = base_dirs(family)
    pipe = load_pipeline(family, base)
    add_lora(pipe.unet, family, rank=RANK, alpha=ALPHA)
    perturb_lora_b(pipe.unet)
    expected = run(family, pipe.unet)

    path = export_kohya(tmp_path / "kohya.safetensors", pipe.unet)
    state_dict = load_file(path)
    modules = {key.split(".")[0] for key in state_dict}
    assert all(name.startswith("lora_unet_") and "." not in name for name in modules)
    assert set(state_dict) == {f"{m}.{s}" for m in modules for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert all(state_dict[f"{m}.alpha"].item() == ALPHA for m in modules)
    assert state_dict[f"{min(modules)}.lora_down.weight"].shape[0] == RANK
    assert len(modules) == sum(".lora_A." in name for name, _ in pipe.unet.named_parameters())

    # diffusers reads kohya files too: the export restores the same model.
    fresh = load_pipeline(family, base)
    fresh.load_lora_weights(tmp_path, weight_name="kohya.safetensors")
    torch.testing.assert_close(run(family, fresh.unet), expected, rtol=0, atol=1e-4)


def test_kohya_export_rejects_transformers(base_dirs, tmp_path):
    denoiser = denoiser_of(load_pipeline("sd3", base_dirs("sd3")))
    add_lora(denoiser, "sd3")
    with pytest.raises(ValueError, match="sd, sdxl"):
        export_kohya(tmp_path / "kohya.safetensors", denoiser)
    assert not (tmp_path / "kohya.safetensors").exists()


def test_bad_family_or_target_raises(base_dirs):
    denoiser = denoiser_of(load_pipeline("sd", base_dirs("sd")))
    with pytest.raises(ValueError, match=r"'sd4'.*allowed: sd, sdxl, sd3, pixart, flux") as error:
        add_lora(denoiser, "sd4")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"'to_qq'.*to_out\.0.*to_q") as error:
        add_lora(denoiser, "sd", target_modules=("to_q", "to_qq"))
    assert "\n" not in str(error.value)
    # Nothing was changed by the failed calls.
    assert not hasattr(denoiser, "peft_config") or not denoiser.peft_config
    assert all(p.requires_grad for p in denoiser.parameters())
