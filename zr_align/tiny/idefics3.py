"""A tiny real Idefics3 (SmolVLM-style) model: random weights, offline word-level tokenizer, stock HF classes.

Tiles of 32 px with patch 8 give a 4x4 patch grid per tile; the pixel shuffle (`scale_factor` 2) turns it into
4 image tokens per tile. The longest edge is resized to 96 px (3 tiles), so a 64x64 image becomes a 3x3 grid plus
the global view: 10 tiles, 40 `<image>` tokens. Vision: SigLIP-style, hidden 32, 2 layers; text: Llama, hidden 64,
2 layers.
"""

from __future__ import annotations

import torch

from .tokenizer import word_level_tokenizer

TILE, PATCH, SCALE = 32, 8, 2
LONGEST_EDGE = 3 * TILE
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2
MAX_GRID = 6  # Idefics3Processor knows <row_i_col_j> up to 6 x 6
TEXT_HIDDEN = 64

IDEFICS3_SPECIAL_TOKENS = [
    "<end_of_utterance>",  # first: the eos token
    "<|im_start|>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    *[f"<row_{i + 1}_col_{j + 1}>" for i in range(MAX_GRID) for j in range(MAX_GRID)],
]


def idefics3_tokenizer():
    return word_level_tokenizer(IDEFICS3_SPECIAL_TOKENS, pad_token="<pad>")


def idefics3_processor_config() -> dict:
    """A valid `Idefics3ImageProcessor` config (as in `preprocessor_config.json`), plus the processor's
    `image_seq_len` (a `processor_config.json` setting in real checkpoints; HF's image processor ignores it)."""
    return {
        "image_processor_type": "Idefics3ImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": LONGEST_EDGE},
        "resample": 1,  # LANCZOS, like every Idefics3 / SmolVLM checkpoint
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
        "do_image_splitting": True,
        "max_image_size": {"longest_edge": TILE},
        "image_seq_len": IMAGE_SEQ_LEN,
    }


def tiny_idefics3_model(tokenizer, seed: int = 0):
    """A random tiny `Idefics3ForConditionalGeneration`; `initializer_range` 0.1 so the score reacts to pixels."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "initializer_range": 0.1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TILE,
            "patch_size": PATCH,
            "initializer_range": 0.1,
        },
        scale_factor=SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
    )
    model = transformers.Idefics3ForConditionalGeneration(config)
    assert model.model.image_seq_len == IMAGE_SEQ_LEN
    return model.eval()


def build(seed: int = 0):
    """`(model, tokenizer, processor_config)` of a tiny Idefics3 reward-model backbone."""
    tokenizer = idefics3_tokenizer()
    return tiny_idefics3_model(tokenizer, seed), tokenizer, idefics3_processor_config()
