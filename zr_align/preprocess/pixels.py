"""Checks and clamping of the pixel tensors every preprocessor receives.

The contract of the reward plugin (SPEC §5): images are a float tensor `(B, 3, H, W)` in [0, 1]. A decoder
gives [-1, 1]: map it with `from_signed`. A hard clamp zeroes the gradient of every saturated pixel, so the
clamp mode is a choice: "hard", "straight_through" (clamped forward, identity backward) or "none" (the input
must already lie in [0, 1]).
"""

from __future__ import annotations

import torch

CLAMP_MODES = ("hard", "straight_through", "none")

__all__ = ["CLAMP_MODES", "check_images", "clamp_pixels", "from_signed", "normalize"]


def from_signed(images: torch.Tensor) -> torch.Tensor:
    """Map decoder output in [-1, 1] to [0, 1]. Differentiable."""
    return (images + 1.0) * 0.5


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
    if clamp == "none":
        lo, hi = images.min(), images.max()
        if lo < -atol or hi > 1.0 + atol:
            raise ValueError(
                f"pixel values span [{float(lo):.4g}, {float(hi):.4g}], outside [0, 1] with clamp='none'; "
                "map [-1, 1] output with zr_align.preprocess.from_signed or use clamp='hard' or 'straight_through'"
            )


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
