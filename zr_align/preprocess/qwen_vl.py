"""Torch preprocessing for the Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5).

All four share the layout of `Qwen2VLImageProcessor`: resize to a size whose sides are multiples of
`patch_size * merge_size` with the pixel count inside `[min_pixels, max_pixels]` ("smart resize"), rescale,
normalise, then cut into `patch_size` patches ordered by `merge_size` blocks, each patch repeated
`temporal_patch_size` times (a still image is a one-frame video), giving `pixel_values` `(num_patches, C*T*p*p)`
and `image_grid_thw` `[1, H/p, W/p]`. Qwen2-VL/2.5-VL use patch 14 and CLIP statistics; Qwen3-VL/3.5 use
patch 16 and mean = std = 0.5: both come from the checkpoint's `preprocessor_config.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .pixels import check_images, clamp_pixels, normalize
from .resample import PIL_CODES, pil_resize
from .vision_inputs import VisionInputs

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target `(height, width)`: sides multiples of `factor`, area in `[min_pixels, max_pixels]`, aspect kept.

    Same rule as the Qwen2-VL image processor, so that both paths see the same grid.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds 200; crop it first")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass
class QwenVLPreprocessor:
    """Differentiable `(B, 3, H, W)` in [0, 1] -> Qwen-VL `pixel_values`, `image_grid_thw`.

    Args:
        patch_size, merge_size, temporal_patch_size: the vision encoder's patching (from its processor config).
        min_pixels, max_pixels: the image-token budget: an image gets between `min_pixels / (p*m)^2` and
            `max_pixels / (p*m)^2` tokens. Fixed per reward model, so a fixed-size batch always costs the same.
        image_mean, image_std: normalisation statistics.
        resample: Pillow filter name used by the HF processor ("bicubic").
        clamp: "hard", "straight_through" or "none" (see `zr_align.preprocess.pixels`).
        quantize: reproduce the HF processor's 8-bit rounding after resizing (straight-through gradient).
        image_token: the placeholder token the LM sees once per merged patch.
    """

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    resample: str = "bicubic"
    clamp: str = "straight_through"
    quantize: bool = False
    do_normalize: bool = True
    image_token: str = "<|image_pad|>"
    flatten: tuple[str, ...] = field(default=("pixel_values",), repr=False)

    @classmethod
    def from_processor_config(
        cls,
        config: dict,
        clamp: str = "straight_through",
        min_image_tokens: int | None = None,
        max_image_tokens: int | None = None,
        image_token: str = "<|image_pad|>",
        quantize: bool = False,
    ) -> "QwenVLPreprocessor":
        """Build from an HF `preprocessor_config.json` dict; `*_image_tokens` override its pixel bounds."""
        patch, merge = config.get("patch_size", 14), config.get("merge_size", 2)
        size = config.get("size") or {}
        min_pixels = config.get("min_pixels") or size.get("shortest_edge", 56 * 56)
        max_pixels = config.get("max_pixels") or size.get("longest_edge", 28 * 28 * 1280)
        token_area = (patch * merge) ** 2
        if min_image_tokens is not None:
            min_pixels = min_image_tokens * token_area
        if max_image_tokens is not None:
            max_pixels = max_image_tokens * token_area
        resample = config.get("resample", 3)
        return cls(
            patch_size=patch,
            merge_size=merge,
            temporal_patch_size=config.get("temporal_patch_size", 2),
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            image_mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(config.get("image_std", OPENAI_CLIP_STD)),
            resample=PIL_CODES[resample] if isinstance(resample, int) else resample,
            clamp=clamp,
            quantize=quantize,
            do_normalize=config.get("do_normalize", True),
            image_token=image_token,
        )

    def __post_init__(self):
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}; lower the minimum")

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)

    def num_image_tokens(self, height: int, width: int) -> int:
        h, w = self.target_size(height, width)
        return (h // self.patch_size) * (w // self.patch_size) // self.merge_size**2

    def __call__(self, images: torch.Tensor) -> VisionInputs:
        """`images` `(B, 3, H, W)` in [0, 1] -> `VisionInputs`. Differentiable w.r.t. `images`."""
        check_images(images, self.clamp)
        images = clamp_pixels(images, self.clamp)
        batch, channels = images.shape[:2]
        height, width = self.target_size(*images.shape[-2:])
        images = pil_resize(images, (height, width), self.resample, quantize=self.quantize)
        if self.do_normalize:
            images = normalize(images, self.image_mean, self.image_std)

        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = height // p, width // p
        # (B, C, gh/m, m, p, gw/m, m, p) -> (B, gh/m, gw/m, m, m, C, p, p): patches grouped by merge block.
        x = images.reshape(batch, channels, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        # A still image is a video of one frame repeated `t` times: (..., C, p, p) -> (..., C, t, p, p).
        x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)
        pixel_values = x.reshape(batch, gh * gw, channels * t * p * p)
        grid = torch.tensor([1, gh, gw], device=images.device).expand(batch, 3)
        image_text = self.image_token * (gh * gw // m**2)
        return VisionInputs(
            tensors={"pixel_values": pixel_values, "image_grid_thw": grid},
            image_text=image_text,
            flatten=("pixel_values",),
        )
