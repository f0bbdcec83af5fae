"""`pil_resize` against Pillow itself, and the Qwen-VL preprocessing against the HF image processor."""

import numpy as np
import pytest
import torch
from PIL import Image

from zr_align.preprocess import (
    QwenVLPreprocessor,
    clamp_pixels,
    from_signed,
    pil_resize,
)
from zr_align.preprocess.qwen_vl import smart_resize
from zr_align.preprocess.resample import resample_matrix

SIZES = [((50, 70), (28, 56)), ((64, 64), (112, 84)), ((37, 90), (90, 37)), ((100, 60), (20, 13))]


def noise_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def as_tensor(array):
    return torch.from_numpy(array).permute(2, 0, 1)[None].double() / 255.0


@pytest.mark.parametrize("filter_name, code", [("bicubic", 3), ("bilinear", 2), ("lanczos", 1), ("box", 4),
                                               ("hamming", 5)])
@pytest.mark.parametrize("src, dst", SIZES)
def test_pil_resize_matches_pillow(filter_name, code, src, dst):
    array = noise_image(*src)  # noise is the worst case: every pixel an edge
    reference = np.asarray(Image.fromarray(array).resize(dst[::-1], resample=code)).astype(np.float64)
    ours = pil_resize(as_tensor(array), dst, filter_name)[0].permute(1, 2, 0).numpy() * 255
    # Pillow rounds to 8 bits after each of its two passes: at most one level apart, plus coefficient rounding.
    assert np.abs(ours - reference).max() <= 1.2
    quantized = pil_resize(as_tensor(array).float(), dst, filter_name, quantize=True)
    assert quantized.dtype == torch.float32
    # with Pillow's fixed-point arithmetic emulated: bit-exact
    assert np.abs(quantized[0].permute(1, 2, 0).double().numpy() * 255 - reference).max() < 1e-3


def test_resample_rows_sum_to_one_and_identity():
    m = resample_matrix(37, 90, "lanczos")
    assert torch.allclose(m.sum(1), torch.ones(90, dtype=m.dtype), atol=1e-6)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(pil_resize(x, (16, 16)), x)  # like Pillow, an unchanged size is no pass at all
    with pytest.raises(ValueError, match="unsupported resample filter 'nearest'"):
        pil_resize(x, (8, 8), "nearest")


def test_clamp_modes_and_signed_mapping():
    x = torch.tensor([-0.5, 0.25, 1.5], requires_grad=True)
    hard = clamp_pixels(x, "hard")
    (grad_hard,) = torch.autograd.grad(hard.sum(), x)
    ste = clamp_pixels(x, "straight_through")
    (grad_ste,) = torch.autograd.grad(ste.sum(), x)
    assert torch.equal(hard, ste)
    assert grad_hard.tolist() == [0.0, 1.0, 0.0] and grad_ste.tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(from_signed(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (50, 70), (90, 33), (20, 28)])
def test_qwen_pixel_values_match_hf_image_processor(size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from zr_align.tiny.qwen import qwen_processor_config

    config = qwen_processor_config("qwen2_vl")
    hf = Qwen2VLImageProcessorPil(**{k: v for k, v in config.items() if k != "image_processor_type"})
    array = noise_image(*size, seed=size[1])
    expected = hf(images=[Image.fromarray(array)], return_tensors="pt")
    for quantize, tol in ((False, 1.01 / 255 / 0.2613), (True, 1e-5)):  # one 8-bit level; exact
        pre = QwenVLPreprocessor.from_processor_config(config, quantize=quantize)
        ours = pre(as_tensor(array).float())
        assert ours.tensors["image_grid_thw"][0].tolist() == expected["image_grid_thw"][0].tolist()
        pixel_values = ours.model_inputs()["pixel_values"]
        assert pixel_values.shape == expected["pixel_values"].shape
        diff = (pixel_values - expected["pixel_values"]).abs()
        assert diff.max() <= tol
        assert ours.image_text == "<|image_pad|>" * int(expected["image_grid_thw"][0].prod() // 4)


def test_smart_resize_budget():
    pre = QwenVLPreprocessor.from_processor_config({"patch_size": 8, "merge_size": 2}, min_image_tokens=4,
                                                   max_image_tokens=16)
    assert pre.num_image_tokens(512, 512) == 16  # capped by the budget
    assert pre.num_image_tokens(8, 8) == 4  # raised to the minimum
    assert smart_resize(50, 70, 16, 4 * 256, 64 * 256) == (48, 64)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(2, 1000, 16, 256, 1024)
