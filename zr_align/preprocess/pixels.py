"""Checks and clamping of the pixel tensors every preprocessor receives.

The contract of the reward plugin (README: "The reward plugin"): images are a float tensor `(B, 3, H, W)` in [0, 1]. A decoder
gives [-1, 1]: map it with `from_signed`. A hard clamp zeroes the gradient of every saturated pixel, so the
clamp mode is a choice: "hard", "straight_through" (clamped forward, identity backward) or "none" (the input
must already lie in [0, 1]).

Clamping hides a wrong value convention, so `check_images` refuses inputs that are plainly not in [0, 1]:
floats in [0, 255] (divide by 255) and decoder output in [-1, 1] (map it with `from_signed`). The rule: any
value further than `RANGE_TOLERANCE` (0.1) outside [0, 1] is refused. A [0, 255] image has every pixel brighter
than 1.1/255 above it, and a [-1, 1] image every channel darker than 45% grey below it; a valid [0, 1] image
lies inside. Values inside the band are clamped as the clamp mode says. (A [-1, 1] image in which no channel of
any pixel is darker than 45% grey still passes: it cannot be told from a dim [0, 1] image by its values.)

Decoders overshoot [-1, 1]: trained ones by a few hundredths, the random tiny VAEs of the tests to [-0.82, 1.47]
after mapping. `from_signed` therefore pulls values beyond [-0.05, 1.05] (half the tolerance, a margin for
bf16 rounding) to that band in the forward pass only (straight-through: the gradient is the identity), so
decoder output mapped with it never trips the check, and what the reward computes is unchanged: its clamp mode
maps every value outside [0, 1] to the same bound, with the same gradient ("hard": zero; "straight_through":
identity; "none": refused as before).

`MinimumSize` refuses images smaller than a vision patch (`ZRewardModel` wraps its preprocessor in it): HF
processors upsample a 1x1 or 8x8 image and the model then scores interpolated mush.
"""

from __future__ import annotations

import torch

CLAMP_MODES = ("hard", "straight_through", "none")
RANGE_TOLERANCE = 0.1  # how far outside [0, 1] a value may lie before the input counts as a wrong convention
MIN_IMAGE_SIDE = 16  # pixels: the least side a reward model scores (more where one merged patch is larger)

__all__ = ["CLAMP_MODES", "MinimumSize", "check_images", "clamp_pixels", "from_signed", "normalize"]


def from_signed(images: torch.Tensor) -> torch.Tensor:
    """Map decoder output in [-1, 1] to [0, 1]. Differentiable, with an identity gradient everywhere.

    Overshoot beyond [-RANGE_TOLERANCE / 2, 1 + RANGE_TOLERANCE / 2] is pulled to that band in the forward pass
    only (see the module docstring): a decoder's output always passes `check_images`.
    """
    unit = (images + 1.0) * 0.5
    band = RANGE_TOLERANCE / 2
    return unit + (unit.clamp(-band, 1.0 + band) - unit).detach()


def check_images(images: torch.Tensor, clamp: str = "straight_through", atol: float = 1e-6) -> None:
    """Raise a one-line `ValueError` unless `images` is a finite float `(B, 3, H, W)` tensor usable with `clamp`.

    Reads values (a device sync on GPU) but never detaches: safe on the gradient path.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W) in [0, 1], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"images must have rank 4 (B, 3, H, W), got shape {tuple(images.shape)}; add a batch dim with images[None]"
        )
    if images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 channels in dim 1 (B, 3, H, W), got shape {tuple(images.shape)}; "
            "convert grey or RGBA images to RGB first"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch; pass at least one image")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}; use images.float() / 255")
    if clamp not in CLAMP_MODES:
        raise ValueError(f"clamp must be one of {CLAMP_MODES}, got {clamp!r}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf pixels; check the decoder output (e.g. fp16 overflow)")
    _check_value_convention(images.detach())
    if clamp == "none":
        lo, hi = images.min(), images.max()
        if lo < -atol or hi > 1.0 + atol:
            raise ValueError(
                f"pixel values span [{float(lo):.4g}, {float(hi):.4g}], outside [0, 1] with clamp='none'; "
                "map [-1, 1] output with zr_align.preprocess.from_signed or use clamp='hard' or 'straight_through'"
            )


def _check_value_convention(images: torch.Tensor) -> None:
    """Refuse [0, 255] and [-1, 1] inputs (see the module docstring for the rule)."""
    lo, hi = float(images.min()), float(images.max())
    if lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE:
        return
    span = f"[{lo:.4g}, {hi:.4g}]"
    if hi > 1.0 + RANGE_TOLERANCE and (lo >= -RANGE_TOLERANCE or hi > 2.0):
        raise ValueError(
            f"pixel values span {span}, beyond 1 + {RANGE_TOLERANCE}: images look like [0, 255]; "
            "divide them by 255 (the reward expects floats in [0, 1])"
        )
    raise ValueError(
        f"pixel values span {span}, below -{RANGE_TOLERANCE}: images look like decoder output in [-1, 1]; "
        "map them with zr_align.preprocess.from_signed (the reward expects floats in [0, 1])"
    )


class MinimumSize:
    """A preprocessor that first refuses `(B, 3, H, W)` images with a side below `min_side`, then delegates to
    `preprocessor` (every other attribute too). `min_side`: `MIN_IMAGE_SIDE`, or one merged vision patch
    (`patch_size * merge_size`) where that is larger (Qwen2-VL: 28)."""

    def __init__(self, preprocessor, min_side: int | None = None):
        self.preprocessor = preprocessor
        patch = getattr(preprocessor, "patch_size", 1) * getattr(preprocessor, "merge_size", 1)
        self.min_side = min_side if min_side is not None else max(MIN_IMAGE_SIDE, patch)

    def __call__(self, images: torch.Tensor):
        if isinstance(images, torch.Tensor) and images.ndim == 4 and min(images.shape[-2:]) < self.min_side:
            raise ValueError(
                f"images of {images.shape[-2]}x{images.shape[-1]} pixels are too small to score (each side must be "
                f"at least {self.min_side}, one vision patch); pass the image at its real resolution"
            )
        return self.preprocessor(images)

    def __getattr__(self, name):
        if name == "preprocessor":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.preprocessor, name)


def clamp_pixels(images: torch.Tensor, clamp: str) -> torch.Tensor:
    """Clamp to [0, 1] according to `clamp` (see module docstring). Differentiable."""
    if clamp == "hard":
        return images.clamp(0.0, 1.0)
    if clamp == "straight_through":
        return images + (images.clamp(0.0, 1.0) - images).detach()
    return images


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """`(x - mean) / std` per channel of a `(B, C, H, W)` tensor. Differentiable."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std
