"""Differentiable image resampling that reproduces Pillow's ``Image.resize``.

The Hugging Face image processors resize ``uint8`` images with Pillow. To match them from a float tensor we
re-implement Pillow's separable resampling (the idea of ``libImaging/Resample.c``: per output pixel, a filter
kernel stretched by the downscale factor, weights normalised to sum to one; a horizontal and a vertical
pass, each rounded and clipped to 8 bits) as two matrix products. Everything here is on the gradient
path: no ``.item()``, no numpy on tensors that carry gradients.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["RESAMPLE_FILTERS", "resample_matrix", "pil_resize"]


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (0.54 + 0.46 * math.cos(x))


def _bicubic(x: float, a: float = -0.5) -> float:
    # Pillow uses a = -0.5 (Keys' cubic convolution).
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 < x < 3.0 else 0.0


# name -> (kernel, support in input pixels at scale 1). Names follow ``PIL.Image.Resampling``.
RESAMPLE_FILTERS = {
    "box": (_box, 0.5),
    "bilinear": (_triangle, 1.0),
    "hamming": (_hamming, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}
# ``PIL.Image.Resampling`` integer codes, as stored in HF ``preprocessor_config.json`` files.
PIL_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@lru_cache(maxsize=256)
def _coefficients(in_size: int, out_size: int, resample: str) -> tuple[tuple[float, ...], ...]:
    """Row ``i`` holds the weights of every input pixel for output pixel ``i`` (Pillow's precompute_coeffs)."""
    kernel, support = RESAMPLE_FILTERS[resample]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)  # widen the kernel when downscaling (anti-aliasing)
    support = support * filter_scale
    inv_scale = 1.0 / filter_scale
    rows = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        # Same floating-point order as Pillow, so kernels with a discontinuity (box) break ties alike.
        weights = [kernel((x + lo - center + 0.5) * inv_scale) for x in range(hi - lo)]
        total = sum(weights)
        row = [0.0] * in_size
        for x, w in zip(range(lo, hi), weights):
            row[x] = w / total if total != 0.0 else 0.0
        rows.append(tuple(row))
    return tuple(rows)


PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit images (32 - 8 - 2)


def resample_matrix(
    in_size: int, out_size: int, resample: str = "bicubic", dtype=torch.float32, device=None, fixed_point=False
) -> torch.Tensor:
    """The ``(out_size, in_size)`` matrix ``M`` such that ``M @ signal`` resamples a 1-D signal like Pillow.

    With `fixed_point`, weights are rounded (half away from zero) to multiples of 2**-22 as Pillow does for
    8-bit images; use float64 then, or the products are not exact.
    """
    if resample not in RESAMPLE_FILTERS:
        # NEAREST has no gradient worth the name and Pillow computes it with float accumulation we do not copy.
        allowed = ", ".join(RESAMPLE_FILTERS)
        raise ValueError(f"unsupported resample filter {resample!r}; use one of: {allowed}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resample {in_size} pixels to {out_size}; both sizes must be >= 1")
    m = torch.tensor(_coefficients(in_size, out_size, resample), dtype=torch.float64)
    if fixed_point:
        scale = float(1 << PRECISION_BITS)
        m = torch.trunc(m * scale + torch.where(m < 0, -0.5, 0.5)) / scale
    return m.to(dtype=dtype, device=device)


@lru_cache(maxsize=1)
def _pillow_orders_passes() -> bool:
    """Whether the installed Pillow may run the vertical pass first (Pillow >= 13, python-pillow/Pillow#9549)."""
    try:
        import PIL
    except ImportError:  # no oracle installed: assume a current Pillow
        return True
    return int(PIL.__version__.split(".")[0]) >= 13


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Pillow >= 13 resamples vertically first when the height shrinks by more than twice the width's shrink.

    Measured on Pillow 13.0.0 (exact on 1483 random size pairs): `out_h < in_h and in_h - out_h > 2 * (in_w - out_w)`.
    The order only matters through the per-pass 8-bit rounding and clipping.
    """
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    if in_h == out_h or in_w == out_w or not _pillow_orders_passes():
        return False
    return out_h < in_h and in_h - out_h > 2 * (in_w - out_w)


def _round_straight_through(x: torch.Tensor) -> torch.Tensor:
    # Forward: Pillow's rounding to 8 bits, floor(x + 1/2) (its accumulator starts at half a unit).
    # Backward: identity, so the gradient is not zeroed.
    return x + (torch.floor(x + 0.5) - x).detach()


def pil_resize(
    images: torch.Tensor,
    size: tuple[int, int],
    resample: str | int = "bicubic",
    clip: bool = True,
    quantize: bool = False,
) -> torch.Tensor:
    """Resize like ``PIL.Image.resize`` on the ``uint8`` version of ``images``. Differentiable.

    Args:
        images (`torch.Tensor` of shape `(B, C, H, W)`): pixel values in [0, 1].
        size (`tuple[int, int]`): output `(height, width)`.
        resample (`str` or `int`): a name of `RESAMPLE_FILTERS` or a `PIL.Image.Resampling` code.
        clip (`bool`): clip each pass to [0, 1] as Pillow clips to 8 bits. A clip zeroes the gradient of the
            overshooting pixels only (cubic and Lanczos kernels overshoot at sharp edges).
        quantize (`bool`): emulate Pillow's 8-bit arithmetic: input rounded to 8-bit levels, fixed-point weights,
            each pass rounded, computed in float64; all roundings with a straight-through gradient. Bit-exact
            with Pillow in our tests; off by default (a rounding makes the function piecewise constant, which
            numerical gradient checks cannot follow).

    Returns:
        `torch.Tensor` of shape `(B, C, height, width)`.
    """
    if isinstance(resample, int):
        resample = PIL_CODES[resample]
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = images.shape[-2:]
    dtype = images.dtype
    # With `quantize`, work on the 0..255 scale in float64, where Pillow's integer arithmetic is exact.
    peak = 255.0 if quantize else 1.0
    if quantize:
        images = _round_straight_through(images.double() * 255.0)

    def finish(x: torch.Tensor) -> torch.Tensor:
        if quantize:
            x = _round_straight_through(x)
        return x.clamp(0.0, peak) if clip else x

    def horizontal(x):
        m = resample_matrix(in_w, out_w, resample, x.dtype, x.device, fixed_point=quantize)
        return finish(x @ m.T)  # (B, C, H, W) @ (W, W') -> (B, C, H, W')

    def vertical(x):
        m = resample_matrix(in_h, out_h, resample, x.dtype, x.device, fixed_point=quantize)
        return finish(m @ x)  # (H', H) @ (B, C, H, W) -> (B, C, H', W)

    # Pillow skips a pass whose size is unchanged; the order of the two passes matters through the per-pass
    # rounding and clipping.
    passes = [horizontal] * (out_w != in_w) + [vertical] * (out_h != in_h)
    if vertical_first((in_h, in_w), (out_h, out_w)):
        passes.reverse()
    for apply in passes:
        images = apply(images)
    return (images / peak).to(dtype)
