"""LlavaPreprocessor against the stock PIL image processors and LlavaProcessor (CLIP, LLaVA pad, SigLIP)."""

import numpy as np
import pytest
import torch
from PIL import Image

from zr_align.preprocess import build_preprocessor
from zr_align.preprocess.llava import LlavaPreprocessor, resize_output_size
from zr_align.preprocess.resample import resample_matrix
from zr_align.testing.parity import hf_image_processor, hf_llava_processor
from zr_align.tiny.llava import (
    build_siglip,
    clip_processor_config,
    llava_tokenizer,
    siglip_processor_config,
)

SIZES = [(64, 64), (48, 80), (50, 70), (90, 33), (20, 28), (32, 32), (17, 41)]


def _shortest_longest():
    config = clip_processor_config()
    config.update(size={"shortest_edge": 32, "longest_edge": 48}, do_center_crop=False)
    return config


def _small_resize_big_crop():
    # The resized image is smaller than the crop on one side: the crop zero-pads (HF center_crop).
    return clip_processor_config() | {"size": {"shortest_edge": 24}}


CONFIGS = {
    "clip": clip_processor_config,
    "llava_pad": lambda: clip_processor_config(image_processor_type="LlavaImageProcessor", do_pad=True),
    "llava_nopad": lambda: clip_processor_config(image_processor_type="LlavaImageProcessor"),
    "siglip": siglip_processor_config,
    "clip_shortest_longest": _shortest_longest,
    "clip_pad_crop": _small_resize_big_crop,
    # CLIP/SigLIP `do_pad` pads the normalised image with zeros at the bottom/right to `pad_size`.
    "siglip_pad_size": lambda: siglip_processor_config() | {"do_pad": True, "pad_size": {"height": 40, "width": 36}},
}


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise: resizing is not trivial and every 8-bit level matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [127 + 100 * np.sin(xx / rng.uniform(2, 6) + c) * np.cos(yy / rng.uniform(2, 6)) for c in range(3)]
    noise = rng.normal(0, 12, (h, w, 3))
    return np.clip(np.stack(chans, -1) + noise, 0, 255).astype(np.uint8)


def to_tensor(array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return (torch.from_numpy(array).permute(2, 0, 1).to(dtype) / 255.0)[None]


def one_level(config: dict, levels: float = 1.0) -> torch.Tensor:
    """`levels` 8-bit levels after normalisation, per channel, shaped for (B, C, H, W)."""
    std = torch.tensor(LlavaPreprocessor.from_processor_config(config).image_std)
    return (levels / 255.0 / std).view(1, -1, 1, 1) + 1e-5


def float_path_levels(pre: LlavaPreprocessor, size: tuple[int, int]) -> float:
    """Error bound, in 8-bit levels, of the unrounded resize against Pillow's two rounded passes.

    Pillow rounds after the horizontal pass (error e1, |e1| <= 0.5) and after the vertical pass (e2): the float
    path differs by e2 + M_v e1, so by at most 0.5 + 0.5 * max_i sum_j |M_v[i, j]|. The bicubic kernel's negative
    lobes make that row sum exceed 1 (up to ~1.26 when upscaling), so the bound is slightly above one level.
    """
    h, w = size
    if pre.pad_to_square:
        h = w = max(h, w)
    out_h, out_w = resize_output_size(h, w, pre.size)
    passes = int(out_h != h) + int(out_w != w)
    if passes < 2:
        return 0.5 * passes
    return 0.5 + 0.5 * resample_matrix(h, out_h, pre.resample, torch.float64).abs().sum(1).max().item()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("quantize", [False, True])
def test_pixel_values_match_hf_image_processor(name, size, quantize):
    config = CONFIGS[name]()
    array = image(*size, seed=size[0] * 100 + size[1])
    theirs = torch.as_tensor(np.asarray(hf_image_processor(config)(Image.fromarray(array))["pixel_values"]))
    pre = LlavaPreprocessor.from_processor_config(config, quantize=quantize)
    ours = pre(to_tensor(array)).tensors["pixel_values"]
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert tuple(ours.shape[-2:]) == pre.output_size(*size)
    # Rounded like Pillow: within one 8-bit level (Pillow's fixed-point weights can flip a rounding tie).
    # Unrounded (the default, smooth path): within the two-rounding bound, which is at most ~1.13 levels.
    levels = 1.0 if quantize else max(1.0, float_path_levels(pre, size))
    assert levels <= 1.15
    excess = ((ours - theirs).abs() - one_level(config, levels)).max().item()
    assert excess <= 0, f"{name} {size}: off by more than {levels:.3f} 8-bit levels (excess {excess:.3g})"


@pytest.mark.parametrize("name", ["clip", "llava_pad", "siglip", "clip_shortest_longest"])
@pytest.mark.parametrize("size", [(64, 64), (48, 80), (90, 33)])
def test_image_text_matches_llava_processor(name, size):
    config = CONFIGS[name]()
    tokenizer = llava_tokenizer()
    processor = hf_llava_processor(config, tokenizer)
    text = "USER: <image>\nPrompt: a red circle ASSISTANT:"
    encoded = processor(text=[text], images=[Image.fromarray(image(*size))], return_tensors="pt")
    vision = LlavaPreprocessor.from_processor_config(config, quantize=True)(to_tensor(image(*size)))
    ours = tokenizer([text.replace("<image>", vision.image_text)], return_tensors="pt")
    assert torch.equal(ours["input_ids"], encoded["input_ids"])
    excess = ((vision.tensors["pixel_values"] - encoded["pixel_values"]).abs() - one_level(config)).max().item()
    assert excess <= 0


def test_token_counts_per_tower():
    clip = LlavaPreprocessor.from_processor_config(clip_processor_config())
    siglip = LlavaPreprocessor.from_processor_config(siglip_processor_config())
    # 32x32 in 8x8 patches: 16 patches; CLIP's CLS token is dropped by the "default" strategy.
    assert clip.num_image_tokens(32, 32) == 16 and siglip.num_image_tokens(32, 32) == 16
    # Without the LlavaProcessor keys: stock patch 14, one token per patch for either tower.
    llava_keys = ("patch_size", "num_additional_image_tokens", "vision_feature_select_strategy")
    bare = {k: v for k, v in clip_processor_config(336).items() if k not in llava_keys}
    assert LlavaPreprocessor.from_processor_config(bare).num_image_tokens(336, 336) == 576
    legacy = clip_processor_config() | {"num_additional_image_tokens": 0}  # old processors: patches - 1
    assert LlavaPreprocessor.from_processor_config(legacy).num_image_tokens(32, 32) == 15


def test_token_budget_is_checked_not_applied():
    config = clip_processor_config()
    assert build_preprocessor("llava", config, max_image_tokens=16).num_image_tokens(32, 32) == 16
    with pytest.raises(ValueError, match="max_image_tokens"):
        build_preprocessor("llava", config, max_image_tokens=15)
    with pytest.raises(ValueError, match="min_image_tokens"):
        build_preprocessor("llava", config, min_image_tokens=17)
    # Size-dependent output (no crop): checked per call.
    pre = build_preprocessor("llava", _shortest_longest(), max_image_tokens=20)
    assert pre(torch.rand(1, 3, 32, 40)).image_text == "<image>" * 20  # (32, 40): 4 x 5 patches
    with pytest.raises(ValueError, match="max_image_tokens"):
        pre(torch.rand(1, 3, 32, 48))  # (32, 48): 4 x 6 = 24 tokens


@pytest.mark.parametrize("name", ["llava_pad", "siglip", "clip_pad_crop"])
def test_gradcheck_float64(name):
    pre = LlavaPreprocessor.from_processor_config(CONFIGS[name]())
    torch.manual_seed(0)
    images = (0.3 + 0.4 * torch.rand(1, 3, 20, 28, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: pre(x).tensors["pixel_values"], (images,), eps=1e-6, atol=1e-6,
                                    fast_mode=True)


def test_gradient_stays_per_sample():
    pre = LlavaPreprocessor.from_processor_config(CONFIGS["llava_pad"]())
    images = torch.rand(2, 3, 40, 24, requires_grad=True)
    pre(images).tensors["pixel_values"][0].sum().backward()
    assert images.grad[0].abs().sum() > 0 and torch.count_nonzero(images.grad[1]) == 0


def test_siglip_reward_parity_with_hf_processor():
    from zr_align.rewards import ZRewardConfig, ZRewardModel
    from zr_align.rewards.families import FAMILIES
    from zr_align.rubrics import Rubric
    from zr_align.scores import ScoreDistribution

    model, tokenizer, config = build_siglip(0)
    rubric = Rubric(template=FAMILIES["llava"].template).to_dict()
    reward_model = ZRewardModel(model, tokenizer, ZRewardConfig(family="llava", rubric=rubric), config)
    processor = hf_llava_processor(config, tokenizer)
    prompts = ["a large red circle on the left"]
    for size in [(64, 64), (48, 80), (90, 33)]:
        array = image(*size)
        texts = reward_model.build_texts(prompts, "<image>")
        encoded = processor(text=texts, images=[[Image.fromarray(array)] for _ in texts], return_tensors="pt",
                            padding=True)
        with torch.no_grad():
            ours = reward_model(to_tensor(array), prompts)
            theirs = ScoreDistribution.from_logits(reward_model.slot_logits(**encoded), reward_model.bin_values)
        ours_means = torch.stack([ours.scores[d].mean[0] for d in reward_model.dimensions])
        diff = (ours_means - theirs.mean).abs().max().item()
        print(f"parity llava-siglip {size}: max |dE| = {diff:.2e}")
        assert diff <= 0.01
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    reward_model(images, prompts * 2).reward[0].backward()
    assert torch.isfinite(images.grad).all() and images.grad[0].abs().sum() > 0
    assert torch.count_nonzero(images.grad[1]) == 0
