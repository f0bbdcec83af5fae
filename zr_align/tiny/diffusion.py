"""Tiny *real* diffusion pipelines (random weights, offline tokenizers) for tests and examples.

`tiny_pipeline(family)` returns a stock diffusers pipeline whose components are the real library classes at
toy sizes: 64x64 images, an `AutoencoderKL` with three levels (downsampling factor 4, so latents are 16x16x4),
denoisers of ~1M (UNets) or 50-80k (DiTs) parameters, CLIP / T5 text encoders of hidden size 32 and the offline
word-level tokenizer of `zr_align.tiny.tokenizer` (every TinyWorld word is one token); under 1.4M parameters per
pipeline. A 4-step stock `pipe(prompt, num_inference_steps=4, height=64, width=64, output_type="pt")` call takes
about 0.02-0.05 s on one CPU core.

| family | pipeline                    | denoiser                 | scheduler                   | text encoders        |
|--------|-----------------------------|--------------------------|-----------------------------|----------------------|
| sd     | StableDiffusionPipeline     | UNet2DConditionModel     | DDIM (trailing)             | CLIP                 |
| sdxl   | StableDiffusionXLPipeline   | UNet2DConditionModel     | DDIM (trailing)             | CLIP + CLIP w/ proj. |
|        |                             | (`text_time` embedding)  |                             |                      |
| sd3    | StableDiffusion3Pipeline    | SD3Transformer2DModel    | FlowMatchEulerDiscrete      | 2 x CLIP w/ proj.    |
| pixart | PixArtSigmaPipeline         | PixArtTransformer2DModel | DDIM (trailing)             | T5 encoder           |
| flux   | FluxPipeline                | FluxTransformer2DModel   | FlowMatchEulerDiscrete      | CLIP + T5 encoder    |

Quirks of the stock pipelines at this size:
- PixArt-Sigma only knows resolution bins for transformer sample sizes 32/64/128/256 (256 px and up); call it with
  `use_resolution_binning=False` (the default raises "Invalid sample size" here). Its transformer predicts a
  learned variance like the real model (`out_channels=8`); the pipeline keeps the first 4 channels. Pass
  `clean_caption=False` unless beautifulsoup4 and ftfy are installed (else a warning on every call).
- SD3 runs without its T5 encoder (`text_encoder_3=None`): the pipeline then fills the T5 part of the prompt with
  zeros of length `max_sequence_length` (default 256); pass a small `max_sequence_length` to save time. Re-loading
  the saved folder needs `StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None)`.
- The DDIM families use `timestep_spacing="trailing"`: with "leading" and few steps the last step sits at t=1,
  where a DRaFT K=1 window carries almost no gradient (PITFALLS).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import word_level_tokenizer

DIFFUSION_FAMILIES = ("sd", "sdxl", "sd3", "pixart", "flux")
PREDICTION_TYPES = ("epsilon", "v_prediction")

IMAGE_SIZE = 64
VAE_CHANNELS = (16, 32, 32)  # three levels: downsampling factor 2 ** (3 - 1) = 4
LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 2 ** (len(VAE_CHANNELS) - 1)  # 16
TEXT_HIDDEN = 32
MAX_TOKENS = 16  # tokenizer model_max_length = CLIP max_position_embeddings ("a large red circle on the left" is 9)

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
T5_EOS, T5_PAD = "</s>", "<pad>"


def _with_template(base, template: str, specials: list[str], **tokens):
    """Rebuild `base` (a word-level `PreTrainedTokenizerFast`) with a post-processor that adds `specials`."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = base.backend_tokenizer
    backend.decoder = None  # decode joins words with spaces (readable truncation warnings)
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, backend.token_to_id(token)) for token in specials]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", model_max_length=MAX_TOKENS, **tokens)


def clip_tokenizer():
    """Word-level stand-in for `CLIPTokenizer`: `<|startoftext|> words <|endoftext|>`, padded with `<|endoftext|>`.

    CLIP pools the hidden state at the first `eos_token_id`, so the eos token must end every prompt; like the SD 1.x
    tokenizer, padding reuses it.
    """
    base = word_level_tokenizer([CLIP_EOS, CLIP_BOS], pad_token=CLIP_EOS)
    return _with_template(
        base, f"{CLIP_BOS} $A {CLIP_EOS}", [CLIP_BOS, CLIP_EOS], bos_token=CLIP_BOS, eos_token=CLIP_EOS,
        pad_token=CLIP_EOS,
    )


def t5_tokenizer():
    """Word-level stand-in for `T5Tokenizer`: `words </s>`, padded with `<pad>`."""
    base = word_level_tokenizer([T5_EOS], pad_token=T5_PAD)
    return _with_template(base, f"$A {T5_EOS}", [T5_EOS], eos_token=T5_EOS, pad_token=T5_PAD)


def _clip_text_model(tokenizer, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # not 2, so CLIP pools at the first eos (not the legacy argmax id)
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def _t5_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_HIDDEN,
        d_kv=16,
        d_ff=2 * TEXT_HIDDEN,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def _vae(flow: bool):
    """AutoencoderKL 64x64x3 <-> 16x16x4. The flow families (SD3/Flux VAEs) have no quant convs and a shift factor;
    the shift stays 0 because `StableDiffusionPipeline` ignores it (PITFALLS)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        shift_factor=0.0 if flow else None,
        use_quant_conv=not flow,
        use_post_quant_conv=not flow,
    ).eval()


def _ddim(prediction_type: str):
    from diffusers import DDIMScheduler

    # Stable Diffusion's noise schedule; "trailing" so that a few-step run still ends at a useful t (PITFALLS).
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # unused by "trailing"; 0 triggers diffusers' "outdated config" warning at every load
        timestep_spacing="trailing",
        prediction_type=prediction_type,
    )


def _unet(cross_attention_dim: int, **extra):
    """A 2-level UNet (32, 64 channels) with cross-attention only at the 8x8 level and in the mid block."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),  # heads per level (the diffusers name is historical)
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        **extra,
    ).eval()


def _sd(prediction_type: str) -> dict:
    tokenizer = clip_tokenizer()
    return dict(
        vae=_vae(flow=False),
        text_encoder=_clip_text_model(tokenizer, with_projection=False),
        tokenizer=tokenizer,
        unet=_unet(cross_attention_dim=TEXT_HIDDEN),
        scheduler=_ddim(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(prediction_type: str) -> dict:
    tokenizer = clip_tokenizer()
    time_embed_dim = 8
    return dict(
        vae=_vae(flow=False),
        text_encoder=_clip_text_model(tokenizer, with_projection=False),
        text_encoder_2=_clip_text_model(tokenizer, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        # SDXL concatenates the penultimate hidden states of both encoders: 32 + 32 = 64.
        unet=_unet(
            cross_attention_dim=2 * TEXT_HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            # 6 micro-conditioning numbers (original size, crop, target size) + the pooled text projection.
            projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
        ),
        scheduler=_ddim(prediction_type),
    )


def _sd3() -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    tokenizer = clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=2 * TEXT_HIDDEN,  # the two CLIP hidden states side by side, zero-padded to T5's width
        caption_projection_dim=32,  # = heads * head_dim
        pooled_projection_dim=2 * TEXT_HIDDEN,  # both CLIP projections concatenated
        pos_embed_max_size=32,  # patch grids up to 32x32 (images up to 256 px)
    ).eval()
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(flow=True),
        text_encoder=_clip_text_model(tokenizer, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text_model(tokenizer, with_projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _pixart(prediction_type: str) -> dict:
    from diffusers import PixArtTransformer2DModel

    tokenizer = t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=2 * LATENT_CHANNELS,  # learned variance, as PixArt-Sigma
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        cross_attention_dim=32,  # = heads * head_dim
        caption_channels=TEXT_HIDDEN,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
    ).eval()
    return dict(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(tokenizer),
        vae=_vae(flow=False),
        transformer=transformer,
        scheduler=_ddim(prediction_type),
    )


def _flux() -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # Flux packs 2x2 latent patches into the channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,  # T5 width
        pooled_projection_dim=TEXT_HIDDEN,  # CLIP pooled output
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    ).eval()
    # FLUX.1's scheduler: the shift grows with the number of image tokens.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return dict(
        scheduler=scheduler,
        vae=_vae(flow=True),
        text_encoder=_clip_text_model(tokenizer, with_projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _pipeline_class(family: str):
    import diffusers

    return {
        "sd": diffusers.StableDiffusionPipeline,
        "sdxl": diffusers.StableDiffusionXLPipeline,
        "sd3": diffusers.StableDiffusion3Pipeline,
        "pixart": diffusers.PixArtSigmaPipeline,
        "flux": diffusers.FluxPipeline,
    }[family]


# family -> builder returning the pipeline's components (the DDIM families take the prediction type)
_COMPONENTS = {"sd": _sd, "sdxl": _sdxl, "sd3": _sd3, "pixart": _pixart, "flux": _flux}
_DDIM_FAMILIES = ("sd", "sdxl", "pixart")
# A saved SD3 folder without its T5 encoder records `text_encoder_3: [null, null]`, but these two are not among
# StableDiffusion3Pipeline's optional components: `from_pretrained` must be told they stay None.
_RELOAD_KWARGS = {"sd3": {"text_encoder_3": None, "tokenizer_3": None}}


def tiny_pipeline(family: str, out_dir=None, seed: int = 0, prediction_type: str | None = None):
    """Build a tiny random stock diffusers pipeline of `family` (one of `DIFFUSION_FAMILIES`).

    Args:
        family: "sd", "sdxl", "sd3", "pixart" or "flux" (see the module docstring for the classes).
        out_dir: if given, the pipeline is saved there with `save_pretrained` and re-loaded with the stock class's
            `from_pretrained(out_dir)`, so the returned object is exactly what a stock loader sees.
        seed: seeds all weights; the caller's global torch RNG state is left untouched.
        prediction_type: DDIM prediction type of the DDIM families (sd, sdxl, pixart): "epsilon" (default) or
            "v_prediction". The flow-matching families (sd3, flux) take none.
    """
    if family not in _COMPONENTS:
        raise ValueError(f"unknown diffusion family {family!r}; allowed: {', '.join(DIFFUSION_FAMILIES)}")
    if prediction_type is not None and family not in _DDIM_FAMILIES:
        raise ValueError(f"prediction_type applies to the DDIM families {', '.join(_DDIM_FAMILIES)}, not {family!r}")
    prediction_type = prediction_type or "epsilon"
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")

    pipeline_class = _pipeline_class(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        builder = _COMPONENTS[family]
        pipeline = pipeline_class(**(builder(prediction_type) if family in _DDIM_FAMILIES else builder()))
    pipeline.set_progress_bar_config(disable=True)
    if out_dir is None:
        return pipeline
    out_dir = Path(out_dir)
    pipeline.save_pretrained(out_dir)
    pipeline = pipeline_class.from_pretrained(out_dir, **_RELOAD_KWARGS.get(family, {}))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


__all__ = ["DIFFUSION_FAMILIES", "clip_tokenizer", "t5_tokenizer", "tiny_pipeline"]
