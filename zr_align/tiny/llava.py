"""Tiny real LLaVA models (random weights, offline tokenizer): CLIP or SigLIP vision tower + tiny Llama.

The vision tower sees 32x32 images in 8x8 patches, so an image is 16 image tokens; the text model is a 2-layer
Llama of hidden size 64. The architecture classes, the processor pipelines and the forward are the real ones.

`vision_feature_layer` is -1 (the last tower layer), not LLaVA-1.5's -2: with -2 the last layer's output feeds
nothing, so gradient checkpointing would (correctly) never recompute it, and a 2-layer tower would waste half.
"""

from __future__ import annotations

import torch

from .tokenizer import word_level_tokenizer

LLAVA_SPECIAL_TOKENS = ["</s>", "<image>"]
TEXT_HIDDEN = 64
VISION_HIDDEN = 32
IMAGE_SIZE, PATCH = 32, 8
# Keys of a tiny model's preprocessor_config.json that belong to the LlavaProcessor, not the image processor.
PROCESSOR_KEYS = ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens")


def llava_tokenizer():
    return word_level_tokenizer(LLAVA_SPECIAL_TOKENS, pad_token="<pad>")


def clip_processor_config(size: int = IMAGE_SIZE, image_processor_type: str = "CLIPImageProcessor",
                          do_pad: bool = False) -> dict:
    """LLaVA-1.5-style settings: shortest edge to `size`, center crop `size`x`size`, CLIP statistics.

    With `image_processor_type="LlavaImageProcessor"` and `do_pad=True`, images are first padded to a square with
    the mean colour (LLaVA's "pad" aspect mode).
    """
    config = {
        "image_processor_type": image_processor_type,
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
        # LlavaProcessor / model settings (a real checkpoint keeps them in processor_config.json / config.json)
        "patch_size": PATCH,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
    }
    if do_pad:
        config["do_pad"] = True
    return config


def siglip_processor_config(size: int = IMAGE_SIZE) -> dict:
    """SigLIP-tower settings: resize to `size`x`size` (no crop), mean = std = 0.5, no CLS token."""
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "patch_size": PATCH,
        "vision_feature_select_strategy": "full",
        "num_additional_image_tokens": 0,
    }


def tiny_llava_model(tokenizer, seed: int = 0, vision: str = "clip"):
    """A random tiny `LlavaForConditionalGeneration`; `initializer_range` 0.1 so the score reacts to pixels."""
    import transformers

    torch.manual_seed(seed)
    common = {
        "hidden_size": VISION_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": IMAGE_SIZE, "patch_size": PATCH, "initializer_range": 0.1,
    }
    if vision == "clip":
        vision_config = transformers.CLIPVisionConfig(**common, projection_dim=VISION_HIDDEN)
        strategy = "default"
    elif vision == "siglip":
        vision_config = transformers.SiglipVisionConfig(**common, vision_use_head=False)
        strategy = "full"
    else:
        raise ValueError(f"vision must be 'clip' or 'siglip', got {vision!r}")
    text_config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = transformers.LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-1,
        initializer_range=0.1,
    )
    return transformers.LlavaForConditionalGeneration(config).eval()


def build(seed: int = 0):
    """`(model, tokenizer, processor_config)` of a tiny LLaVA with a CLIP tower (LLaVA-1.5 preprocessing)."""
    tokenizer = llava_tokenizer()
    return tiny_llava_model(tokenizer, seed, "clip"), tokenizer, clip_processor_config()


def build_siglip(seed: int = 0):
    """`(model, tokenizer, processor_config)` of a tiny LLaVA-style model with a SigLIP tower."""
    tokenizer = llava_tokenizer()
    return tiny_llava_model(tokenizer, seed, "siglip"), tokenizer, siglip_processor_config()
