"""Tiny real Qwen-VL-family models (random weights, offline tokenizer) saved as `ZRewardModel` folders.

Patch 8 with merge 2 keeps a 64x64 image at 16 image tokens, so every family runs in well under a second on
a CPU; the architecture classes, the processor layout and the forward are the real ones.
"""

from __future__ import annotations

import torch

from .tokenizer import word_level_tokenizer

QWEN_SPECIAL_TOKENS = ["<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                       "<|video_pad|>"]
TEXT_HIDDEN = 64
HEADS = 4
PATCH, MERGE = 8, 2


def qwen_tokenizer():
    return word_level_tokenizer(QWEN_SPECIAL_TOKENS, pad_token="<|endoftext|>")


def special_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _text_config(tokenizer, **extra) -> dict:
    head_dim = TEXT_HIDDEN // HEADS
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        # multimodal RoPE: the three sections (time, height, width) must sum to head_dim / 2
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **extra,
    } | ({"head_dim": head_dim} if "head_dim" not in extra else {})


def qwen_processor_config(family: str, patch: int = PATCH, min_tokens: int = 4, max_tokens: int = 64) -> dict:
    """The HF image-processor settings of a Qwen-family model: by default a tiny one (patch 8, merge 2; 4 to 64
    image tokens); `patch=14, max_tokens=1280` are Qwen2-VL-2B's."""
    qwen3 = family in ("qwen3_vl", "qwen3_5")
    token_area = (patch * MERGE) ** 2
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5] if qwen3 else [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.5, 0.5, 0.5] if qwen3 else [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
        "patch_size": patch,
        "temporal_patch_size": 2,
        "merge_size": MERGE,
        "size": {"shortest_edge": min_tokens * token_area, "longest_edge": max_tokens * token_area},
    }


def tiny_qwen_model(family: str, tokenizer, seed: int = 0):
    """A random tiny VLM of a Qwen family; `initializer_range` is large enough that the score reacts to pixels."""
    import transformers

    torch.manual_seed(seed)
    ids = special_token_ids(tokenizer)
    if family == "qwen2_vl":
        config = transformers.Qwen2VLConfig(
            text_config=_text_config(tokenizer, initializer_range=0.1),
            vision_config={
                "depth": 2, "embed_dim": 32, "hidden_size": TEXT_HIDDEN, "num_heads": 2, "mlp_ratio": 2,
                "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
                "initializer_range": 0.1,
            },
            **ids,
        )
        model = transformers.Qwen2VLForConditionalGeneration(config)
    elif family == "qwen2_5_vl":
        config = transformers.Qwen2_5_VLConfig(
            text_config=_text_config(tokenizer, initializer_range=0.1),
            vision_config={
                "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "out_hidden_size": TEXT_HIDDEN, "patch_size": PATCH, "spatial_merge_size": MERGE,
                "temporal_patch_size": 2,
                # window attention in pixels: 32 // merge // patch = 2x2 merged tokens per window, so a 64x64
                # image spans 4 windows; block 0 is windowed, block 1 attends over the whole image.
                "window_size": 32, "fullatt_block_indexes": [1],
                "initializer_range": 0.1,
            },
            **ids,
        )
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    elif family == "qwen3_vl":
        config = transformers.Qwen3VLConfig(
            text_config=_text_config(
                tokenizer, initializer_range=0.1,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                 "mrope_interleaved": True},
            ),
            vision_config={
                "depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "out_hidden_size": TEXT_HIDDEN, "patch_size": PATCH, "spatial_merge_size": MERGE,
                "temporal_patch_size": 2, "num_position_embeddings": 256,  # a 16x16 learned grid, interpolated
                # DeepStack: features after vision blocks 0 and 1 are added to text layers 0 and 1.
                "deepstack_visual_indexes": [0, 1],
                "initializer_range": 0.1,
            },
            **ids,
        )
        model = transformers.Qwen3VLForConditionalGeneration(config)
    elif family == "qwen3_5":
        config = transformers.Qwen3_5Config(
            text_config=_text_config(
                tokenizer, initializer_range=0.1, head_dim=32,
                # partial rotary (0.25 of head_dim 32 = 8 dims = 4 frequencies): mrope_section sums to 4
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                 "mrope_interleaved": True, "partial_rotary_factor": 0.25},
                # one Gated DeltaNet (linear attention) layer and one gated full-attention layer
                layer_types=["linear_attention", "full_attention"],
                linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                linear_num_key_heads=2, linear_num_value_heads=4,
            ),
            vision_config={
                "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "out_hidden_size": TEXT_HIDDEN, "patch_size": PATCH, "spatial_merge_size": MERGE,
                "temporal_patch_size": 2, "num_position_embeddings": 256,
                "initializer_range": 0.1,
            },
            **ids,
        )
        model = transformers.Qwen3_5ForConditionalGeneration(config)
    else:
        raise ValueError(f"no tiny builder for Qwen family {family!r}")
    return model.eval()
