"""Idefics3Preprocessor against the stock HF Idefics3 processor (PIL backend): pixels, masks, prompt text, budget."""

import numpy as np
import pytest
import torch
from PIL import Image

from zr_align.preprocess import build_preprocessor
from zr_align.preprocess.idefics3 import Idefics3Preprocessor
from zr_align.preprocess.resample import pil_resize
from zr_align.tiny.idefics3 import idefics3_processor_config, idefics3_tokenizer

# square, wide, tall, tiny, exactly one tile, already at the target, large, very tall (vertical pass first in
# Pillow 13 for both the first resize and the global view), very wide
SIZES = [(64, 64), (48, 80), (50, 70), (90, 33), (20, 28), (7, 9), (32, 32), (96, 96), (200, 150), (300, 40),
         (31, 200)]
ONE_LEVEL = 2.0 / 255  # one 8-bit level after normalising with std 0.5


def noisy_image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth structure plus noise: resizing it is not trivial and Lanczos overshoots (clipping is exercised)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = 127 + 120 * np.sin(xx[..., None] / rng.uniform(2, 6, 3) + yy[..., None] / rng.uniform(2, 6, 3))
    return np.clip(smooth + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def hf_processor(config: dict):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    image_config = {k: v for k, v in config.items() if k not in ("image_processor_type", "image_seq_len")}
    return Idefics3Processor(Idefics3ImageProcessorPil(**image_config), idefics3_tokenizer(),
                             image_seq_len=config["image_seq_len"])


def compare(config: dict, size, seed: int = 0, quantize: bool = True):
    processor = hf_processor(config)
    array = noisy_image(*size, seed)
    theirs = processor(text=["<image>"], images=[[Image.fromarray(array)]], return_tensors="pt")
    ours = Idefics3Preprocessor.from_processor_config(config, quantize=quantize)(to_tensor(array)[None])
    # The exact replacement string of the HF processor, from its own row/col decision.
    info = processor.image_processor([[Image.fromarray(array)]], return_row_col_info=True)
    expected_text = processor.replace_image_token(info, 0)
    return processor, theirs, ours, expected_text


@pytest.mark.parametrize("size", SIZES)
def test_exact_parity_with_quantize(size):
    config = idefics3_processor_config()
    processor, theirs, ours, expected_text = compare(config, size, quantize=True)
    assert ours.image_text == expected_text
    assert processor.tokenizer(ours.image_text)["input_ids"] == theirs["input_ids"][0].tolist()
    pixel_values = ours.tensors["pixel_values"]
    assert pixel_values.shape == theirs["pixel_values"].shape
    assert pixel_values.dtype == torch.float32
    # Bit-exact 8-bit levels: only float32 rescale/normalise arithmetic separates the two.
    assert (pixel_values - theirs["pixel_values"]).abs().max() <= 1e-6
    assert torch.equal(ours.tensors["pixel_attention_mask"], theirs["pixel_attention_mask"].bool())
    expected_tokens = Idefics3Preprocessor.from_processor_config(config).num_image_tokens(*size)
    assert ours.image_text.count("<image>") == expected_tokens


@pytest.mark.parametrize("size", SIZES)
def test_float_path_within_two_levels(size):
    # Without quantize the chained resizes (up to six passes, each rounded to uint8 by Pillow) stay in floats:
    # measured at most 1.74 levels, 0.03-0.37 on average (the unrounded path vs a chain of roundings).
    _, theirs, ours, expected_text = compare(idefics3_processor_config(), size, seed=1, quantize=False)
    assert ours.image_text == expected_text
    diff = (ours.tensors["pixel_values"] - theirs["pixel_values"]).abs()
    assert diff.max() <= 2 * ONE_LEVEL
    assert diff.mean() <= 0.45 * ONE_LEVEL


@pytest.mark.parametrize(
    "overrides",
    [
        {"size": {"longest_edge": 32}},  # one unsplit tile
        {"do_image_splitting": False},
        {"size": {"longest_edge": 100}},  # not a multiple of the tile
        {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
        {"resample": 3},
    ],
)
@pytest.mark.parametrize("size", [(64, 64), (90, 33), (31, 200)])
def test_config_variants_exact(overrides, size):
    config = idefics3_processor_config() | overrides
    _, theirs, ours, expected_text = compare(config, size, seed=2)
    assert ours.image_text == expected_text
    assert ours.tensors["pixel_values"].shape == theirs["pixel_values"].shape
    assert (ours.tensors["pixel_values"] - theirs["pixel_values"]).abs().max() <= 1e-5
    assert torch.equal(ours.tensors["pixel_attention_mask"], theirs["pixel_attention_mask"].bool())


def test_batch_equals_one_by_one_and_is_per_sample():
    pre = build_preprocessor("idefics3", idefics3_processor_config(), quantize=True)
    images = torch.rand(3, 3, 50, 70, requires_grad=True)
    batch = pre(images)
    for i in range(3):
        single = pre(images[i : i + 1])
        assert single.image_text == batch.image_text
        assert torch.equal(single.tensors["pixel_values"][0], batch.tensors["pixel_values"][i])
    batch.tensors["pixel_values"][0].sum().backward()
    assert images.grad[0].abs().sum() > 0
    assert torch.count_nonzero(images.grad[1:]) == 0


@pytest.mark.parametrize("in_size,out_size", [((300, 40), (96, 12)), ((96, 32), (32, 32)), ((40, 300), (12, 96)),
                                              ((64, 64), (96, 96)), ((114, 36), (105, 32)), ((22, 38), (48, 79))])
def test_pillow_pass_order(in_size, out_size):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (*in_size, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(array).resize(out_size[::-1], Image.LANCZOS)).astype(np.float64)
    x = to_tensor(array)[None].double()
    ours = pil_resize(x, out_size, "lanczos", quantize=True)[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(ours - pil).max() < 1e-6


# ---------------------------------------------------------------- image-token budget
ASPECTS = [(64, 64), (64, 63), (48, 80), (90, 33), (31, 200), (300, 40), (10, 1000), (1000, 10)]


@pytest.mark.parametrize("max_tokens", [4, 19, 20, 40, 41, 68, 100, 400])
def test_max_image_tokens_bounds_every_aspect_ratio(max_tokens):
    pre = Idefics3Preprocessor.from_processor_config(idefics3_processor_config(), max_image_tokens=max_tokens)
    seq, tile = pre.image_seq_len, pre.tile_size
    counts = [pre.num_image_tokens(*hw) for hw in ASPECTS]
    assert max(counts) <= max_tokens
    assert pre.longest_edge % tile == 0
    grid = pre.longest_edge // tile
    # The largest grid: one more tile per side would exceed the budget for a square image.
    assert (grid + 1) ** 2 * seq + seq > max_tokens
    assert pre.num_image_tokens(64, 64) == (grid * grid + 1 if grid > 1 else 1) * seq


def test_min_image_tokens_and_conflicts():
    config = idefics3_processor_config()  # 4 tokens per tile, longest edge 3 tiles
    pre = Idefics3Preprocessor.from_processor_config(config, min_image_tokens=30)
    assert pre.longest_edge == 7 * 32  # a 1 x 7 strip + global = 32 tokens >= 30
    assert min(pre.num_image_tokens(*hw) for hw in ASPECTS) >= 30
    # A minimum already met keeps the checkpoint's resolution.
    assert Idefics3Preprocessor.from_processor_config(config, min_image_tokens=8).longest_edge == 96
    both = Idefics3Preprocessor.from_processor_config(config, min_image_tokens=12, max_image_tokens=40)
    assert both.longest_edge == 96
    with pytest.raises(ValueError, match="below one tile"):
        Idefics3Preprocessor.from_processor_config(config, max_image_tokens=3)
    with pytest.raises(ValueError, match="widen the budget"):
        Idefics3Preprocessor.from_processor_config(config, min_image_tokens=30, max_image_tokens=40)
    with pytest.raises(ValueError, match="do_image_splitting"):
        Idefics3Preprocessor.from_processor_config(config | {"do_image_splitting": False}, min_image_tokens=8)
    unsplit = Idefics3Preprocessor.from_processor_config(config | {"do_image_splitting": False}, max_image_tokens=4)
    assert unsplit.num_image_tokens(50, 70) == 4
