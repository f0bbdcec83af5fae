"""Anti-aliased rendering of TinyWorld scenes (numpy only).

Each shape is rasterised on a grid `supersample` times finer than the canvas; the fraction of sub-pixels inside
the shape (a box downsample) is the pixel's coverage `alpha`, and the pixel becomes
`background * (1 - alpha) + colour * alpha`, rounded to uint8. Shapes (bounding box of side `extent` centred on
`center`, see `grammar`):

- circle: the disc of diameter `extent`;
- square: axis-aligned, side `extent`;
- triangle: upright isosceles, apex at the top centre of the box, base along its bottom edge (width = height
  = `extent`), so it fills half its bounding box.

A layout jitters the size by up to ±15% and puts the centre uniformly in its position's third, at least
`THIRD_MARGIN` px inside the third's borders and with the whole object `CANVAS_MARGIN` px inside the canvas, so
that clean scenes are unambiguous for the judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import (
    BACKGROUND,
    CANVAS,
    COLORS,
    POSITION_CELLS,
    SIZE_PIXELS,
    Attributes,
    Scene,
    parse_prompt,
)

SIZE_JITTER = 0.15  # extent = SIZE_PIXELS[size] * uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
THIRD_MARGIN = 1.0  # px kept between the centre and its third's borders
CANVAS_MARGIN = 1.0  # px kept between a clean object's bounding box and the canvas border
SUPERSAMPLE = 4  # sub-pixels per pixel side for anti-aliasing
# Extents of a free layout (log-uniform): from 30% below the small size to 30% above the large one.
FREE_EXTENTS = (0.7 * SIZE_PIXELS["small"], 1.3 * SIZE_PIXELS["large"])


def as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed (or the Generator itself, which is then advanced in place)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def center_range(position: str, extent: float, axis: int) -> tuple[float, float]:
    """Interval of allowed centre coordinates along `axis` (0: x, 1: y) for a clean object of this extent.

    Raises:
        `ValueError`: if the object is too large to fit the third with the margins.
    """
    row, col = POSITION_CELLS[position]
    cell = col if axis == 0 else row
    third = CANVAS / 3
    low = max(cell * third + THIRD_MARGIN, extent / 2 + CANVAS_MARGIN)
    high = min((cell + 1) * third - THIRD_MARGIN, CANVAS - extent / 2 - CANVAS_MARGIN)
    if low > high:
        raise ValueError(f"an object of extent {extent:.1f} px does not fit {position!r} with the margins; "
                         f"extents up to {2 * (2 * third - THIRD_MARGIN - CANVAS_MARGIN) - CANVAS:.1f} px fit")
    return low, high


def sample_center(position: str, extent: float, rng: np.random.Generator, jitter: bool = True) -> tuple[float, float]:
    """A centre for `position`: uniform in the allowed range, or its midpoint when `jitter` is False."""
    ranges = [center_range(position, extent, axis) for axis in (0, 1)]
    if not jitter:
        return tuple(float((lo + hi) / 2) for lo, hi in ranges)
    return tuple(float(rng.uniform(lo, hi)) for lo, hi in ranges)


def sample_extent(size: str, rng: np.random.Generator, jitter: bool = True) -> float:
    """Bounding-box side for `size`, jittered by up to ±`SIZE_JITTER` when `jitter` is True."""
    scale = rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER) if jitter else 1.0
    return float(SIZE_PIXELS[size] * scale)


def layout(attributes: Attributes, rng: np.random.Generator, jitter: bool = True) -> Scene:
    """A random clean scene for the attributes (extent first, then a centre that fits it)."""
    extent = sample_extent(attributes.size, rng, jitter)
    center = sample_center(attributes.position, extent, rng, jitter)
    return Scene(**attributes.as_dict(), center=center, extent=extent)


@dataclass(frozen=True)
class Look:
    """How a drawing departs from the palette and the prototype shapes (the default departs in nothing).

    Args:
        rgb (`tuple[float, float, float]`, *optional*): the object's colour instead of its palette colour.
        rounding (`float`, *optional*, defaults to 0): corner rounding in extents (see `coverage`).
    """

    rgb: tuple[float, float, float] | None = None
    rounding: float = 0.0


def free_look(color: str, rng: np.random.Generator, blend: float = 0.5, rounding: float = 0.2) -> Look:
    """A look between the prototypes, as a generator draws them: half the time the colour mixed with another
    palette colour (weight uniform up to `blend`), half the time the corners rounded (uniform up to `rounding`).
    What the object then is (its colour, "other", a colour shift; its shape) is the judge's reading."""
    rgb = None
    if rng.random() < 0.5:
        others = [c for c in COLORS if c != color]
        other, weight = others[rng.integers(len(others))], rng.uniform(0, blend)
        rgb = tuple(float(v) for v in (1 - weight) * np.asarray(COLORS[color]) + weight * np.asarray(COLORS[other]))
    return Look(rgb=rgb, rounding=float(rng.uniform(0, rounding)) if rng.random() < 0.5 else 0.0)


def free_layout(attributes: Attributes, rng: np.random.Generator) -> Scene:
    """A scene of the attributes' colour and shape at any size and anywhere: extent log-uniform over
    `FREE_EXTENTS` (across the judge's small / large threshold), centre uniform with the whole object
    `CANVAS_MARGIN` px inside the canvas, so corner cells and the borders between cells are as common as anything.

    The scene keeps the attributes' size and position *words*; what it shows is whatever its geometry makes of
    them (the judge's reading). A clean `layout` only ever puts an object well inside one of five cells at one of
    two sizes; a generator's samples fall anywhere, so a reward model that must read them is taught the rule on
    free layouts too (`reward_data.perception_image`).
    """
    low, high = np.log(FREE_EXTENTS)
    extent = float(np.exp(rng.uniform(low, high)))
    lo, hi = extent / 2 + CANVAS_MARGIN, CANVAS - extent / 2 - CANVAS_MARGIN
    center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    return Scene(**attributes.as_dict(), center=center, extent=extent)


def coverage(shape: str, center: tuple[float, float], extent: float, supersample: int = SUPERSAMPLE,
             canvas: int = CANVAS, rounding: float = 0.0) -> np.ndarray:
    """Per-pixel coverage in [0, 1], shape `(canvas, canvas)`, of a shape; parts outside the canvas are cut off.
    `rounding` > 0 rounds its corners: the sub-pixel mask blurred by a Gaussian of that many extents and cut at 0.5
    (straight edges stay, corners and the apex pull in: a square rounded by 0.15 reads as a circle, a triangle by
    0.2)."""
    # Sub-pixel centres along one axis: (k + 0.5) / supersample for k in [0, canvas * supersample).
    t = (np.arange(canvas * supersample) + 0.5) / supersample
    x, y = t[None, :] - center[0], t[:, None] - center[1]  # (S, S) offsets from the box centre via broadcasting
    half = extent / 2
    if shape == "circle":
        inside = x**2 + y**2 <= half**2
    elif shape == "square":
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":
        # Apex at (0, -half), base at y = +half: the half-width at depth (y + half) below the apex is half of it.
        inside = (y <= half) & (np.abs(x) <= (y + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: circle, square, triangle")
    if rounding > 0:
        inside = gaussian_blur(inside.astype(np.float64), rounding * extent * supersample, "constant") >= 0.5
    # Box downsample: (S, S) -> (canvas, supersample, canvas, supersample) -> mean over the sub-pixels.
    return inside.reshape(canvas, supersample, canvas, supersample).mean(axis=(1, 3))


def gaussian_blur(image: np.ndarray, sigma: float, mode: str = "edge") -> np.ndarray:
    """Separable Gaussian blur of a float `(H, W[, C])` array over its first two axes (radius ceil(3 sigma)),
    padded by `np.pad`'s `mode`: "edge" for images (`corrupt`'s blur), "constant" (zeros) for a shape's mask."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode=mode)
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return out


def composite(image: np.ndarray, alpha: np.ndarray, rgb: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """`image * (1 - alpha) + rgb * alpha` on float images `(H, W, 3)`; returns a new array."""
    return image * (1 - alpha[..., None]) + np.asarray(rgb, dtype=np.float64) * alpha[..., None]


def blank(canvas: int = CANVAS) -> np.ndarray:
    """A float background image `(canvas, canvas, 3)`."""
    return np.broadcast_to(np.asarray(BACKGROUND, dtype=np.float64), (canvas, canvas, 3)).copy()


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def draw(scene: Scene, supersample: int = SUPERSAMPLE, look: Look | None = None) -> np.ndarray:
    """The uint8 image `(64, 64, 3)` of exactly this scene (no randomness); `look` departs from its palette colour
    and prototype shape."""
    look = look or Look()
    alpha = coverage(scene.shape, scene.center, scene.extent, supersample, rounding=look.rounding)
    rgb = COLORS[scene.color] if look.rgb is None else look.rgb
    return to_uint8(composite(blank(), alpha, rgb))


@dataclass
class Rendered:
    """A rendered image and the scene it shows.

    Args:
        image (`np.ndarray` of shape `(64, 64, 3)`, uint8): RGB pixels.
        scene ([`Scene`]): the attributes and geometry that were drawn.
    """

    image: np.ndarray
    scene: Scene


def render(prompt: str | Attributes, seed: int | np.random.Generator | None = None, jitter: bool = True,
           supersample: int = SUPERSAMPLE) -> Rendered:
    """Render a prompt with a random (seeded) layout.

    Args:
        prompt (`str` or [`Attributes`]): a prompt of the grammar, or its parsed attributes.
        seed (`int`, `np.random.Generator` or `None`): the layout's randomness; the same int gives the same image.
            A Generator is advanced in place (use one Generator to draw many different images).
        jitter (`bool`, *optional*, defaults to True): jitter size (±15%) and centre (within the third); False
            gives the canonical layout (nominal size, centre in the middle of its allowed range).
        supersample (`int`, *optional*, defaults to 4): anti-aliasing factor per pixel side.

    Raises:
        `ValueError`: for a prompt outside the grammar.
    """
    attributes = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    scene = layout(attributes, as_generator(seed), jitter)
    return Rendered(draw(scene, supersample), scene)
