"""Seeded corruptions of rendered scenes, the controlled negatives of reward-model training data (README: "TinyWorld: the embedded default").

Each corruption declares the rubric dimension it is meant to lower (the judge's rules in `judge.py` are written
so that it does):

| kind             | dimension    | what it does                                                                  |
|------------------|--------------|-------------------------------------------------------------------------------|
| `wrong_color`    | alignment    | re-draw the same geometry in another palette colour                          |
| `wrong_shape`    | alignment    | re-draw the same box as another shape                                        |
| `wrong_size`     | alignment    | re-draw at the other size (same jitter scale; centre moved only to fit)      |
| `wrong_position` | alignment    | re-draw at a random centre of another position                               |
| `blur`           | realism      | Gaussian blur, sigma 1.2-2.0 px                                              |
| `noise`          | realism      | additive Gaussian pixel noise, sigma 8-16 (of 255)                           |
| `color_shift`    | realism      | the whole image offset by an RGB vector of length 30-45 (a colour cast)       |
| `object_cast`    | realism      | the object re-drawn in its colour moved 30-45 off the gray -> colour line     |
| `fragments`      | plausibility | 1-3 small discs (3.5-5 px) of the object colour, detached from the object    |
| `crop`           | plausibility | the object moved so that 30-50% of it lies outside the canvas                |
| `low_contrast`   | aesthetics   | the object faded towards the background (45-60% of its contrast kept)        |
| `clutter`        | aesthetics   | 3-5 small distractor shapes (5-8 px) in other palette colours                |

Aesthetics here means a *clear subject*: a washed-out object or a background cluttered with unrelated shapes.
Re-drawn scenes keep the prompt's attributes in `Corrupted.scene` except the changed one, so
`Corrupted.scene.prompt` describes what is actually shown while the original prompt describes what was asked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .grammar import BACKGROUND, CANVAS, COLORS, SHAPES, SIZE_PIXELS, VALUES, Scene
from .render import (
    Rendered,
    as_generator,
    blank,
    center_range,
    composite,
    coverage,
    draw,
    gaussian_blur,
    sample_center,
    to_uint8,
)


@dataclass
class Corrupted:
    """A corrupted image.

    Args:
        image (`np.ndarray` of shape `(64, 64, 3)`, uint8): the corrupted pixels.
        scene ([`Scene`]): the main object as now drawn (a wrong attribute shows here; pixel corruptions keep it).
        kind (`str`): the corruption's name in `CORRUPTIONS`.
        dimension (`str`): the rubric dimension it is meant to lower.
        detail (`str`): what was done, e.g. "color red -> blue" or "blur sigma 1.53".
    """

    image: np.ndarray
    scene: Scene
    kind: str
    dimension: str
    detail: str


# A corruption function maps (image, scene, rng, severity) to (new image, scene now drawn, detail); the image is
# uint8 and `severity` the `(low, high)` range its strength is drawn from (ignored by the wrong-attribute kinds).
CorruptionFn = Callable[[np.ndarray, Scene, np.random.Generator, tuple], "tuple[np.ndarray, Scene, str]"]

# kind -> (low, high) range of its strength, as in the table above: blur sigma (px), noise sigma (of 255), cast
# length, number of fragments, share of the object kept inside the canvas, contrast kept, number of distractors.
# Every draw from these ranges is flagged by the judge (the controlled negatives of evaluation; `object_cast`: 99%,
# as the RGB cube clips some casts of bright colours).
SEVERITIES: dict[str, tuple[float, float]] = {
    "blur": (1.2, 2.0), "noise": (8.0, 16.0), "color_shift": (30.0, 45.0), "object_cast": (30.0, 45.0),
    "fragments": (1, 3),
    "crop": (0.5, 0.7), "low_contrast": (0.45, 0.6), "clutter": (3, 5),
}
# Wider ranges for training data that teaches where the judge's thresholds lie: from barely visible (below the
# judge's flag, so labelled clean) to severe.
WIDE_SEVERITIES: dict[str, tuple[float, float]] = {
    "blur": (0.4, 2.6), "noise": (1.5, 24.0), "color_shift": (6.0, 60.0), "object_cast": (8.0, 60.0), "fragments": (1, 3),
    "crop": (0.5, 0.85), "low_contrast": (0.3, 0.9), "clutter": (1, 5),
}


def _other(values: tuple[str, ...], current: str, rng: np.random.Generator) -> str:
    choices = [v for v in values if v != current]
    return choices[rng.integers(len(choices))]


def _wrong_attribute(attribute: str) -> CorruptionFn:
    def apply(image: np.ndarray, scene: Scene, rng: np.random.Generator, severity=None):
        new = _other(VALUES[attribute], getattr(scene, attribute), rng)
        if attribute == "size":
            # Keep the jitter scale; move the centre only as far as the new extent needs to fit its third.
            extent = scene.extent * SIZE_PIXELS[new] / SIZE_PIXELS[scene.size]
            center = tuple(float(np.clip(c, *center_range(scene.position, extent, axis)))
                           for axis, c in enumerate(scene.center))
            changed = replace(scene, size=new, extent=extent, center=center)
        elif attribute == "position":
            changed = replace(scene, position=new, center=sample_center(new, scene.extent, rng))
        else:
            changed = replace(scene, **{attribute: new})
        return draw(changed), changed, f"{attribute} {getattr(scene, attribute)} -> {new}"

    return apply


def _blur(image, scene, rng, severity):
    sigma = rng.uniform(*severity)
    return to_uint8(gaussian_blur(image.astype(np.float64), sigma)), scene, f"blur sigma {sigma:.2f}"


def _noise(image, scene, rng, severity):
    sigma = rng.uniform(*severity)
    noisy = image.astype(np.float64) + rng.normal(0.0, sigma, image.shape)
    return to_uint8(noisy), scene, f"noise sigma {sigma:.1f}"


def _color_shift(image, scene, rng, severity):
    direction = rng.normal(size=3)
    offset = direction / np.linalg.norm(direction) * rng.uniform(*severity)
    shifted = to_uint8(image.astype(np.float64) + offset)
    return shifted, scene, "color shift " + " ".join(f"{v:+.0f}" for v in offset)


def _object_cast(image, scene, rng, severity):
    # The cast a generator makes: the object's own colour off its palette line (the judge's core-residual check),
    # the background untouched. The offset is across the gray -> colour line, so its length is the residual.
    color = np.asarray(COLORS[scene.color], dtype=np.float64)
    line = color - np.asarray(BACKGROUND, dtype=np.float64)
    length = rng.uniform(*severity)
    for _ in range(20):  # a direction the RGB cube does not clip much (bright colours sit at its faces)
        direction = rng.normal(size=3)
        direction -= (direction @ line) / (line @ line) * line
        offset = np.clip(color + direction / np.linalg.norm(direction) * length, 0.0, 255.0) - color
        if np.linalg.norm(offset) >= 0.9 * length:
            break
    alpha = coverage(scene.shape, scene.center, scene.extent)
    cast = to_uint8(composite(blank(), alpha, color + offset))
    return cast, scene, "object cast " + " ".join(f"{v:+.0f}" for v in offset)


def _free_spot(taken: list[tuple[float, float, float]], extent: float, gap: float,
               rng: np.random.Generator) -> tuple[float, float] | None:
    """A centre for a box of side `extent` inside the canvas, `gap` px clear of every taken (x, y, side) box."""
    half = extent / 2
    for _ in range(500):
        x, y = rng.uniform(half + 1, CANVAS - half - 1, size=2)
        if all(max(abs(x - tx), abs(y - ty)) >= half + side / 2 + gap for tx, ty, side in taken):
            return float(x), float(y)
    return None


def _add_blobs(image: np.ndarray, scene: Scene, rng: np.random.Generator, count: int, extents: tuple[float, float],
               colors: list[str], shapes: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """Paint up to `count` small shapes clear of the object and of each other; returns the image and the number."""
    taken = [(*scene.center, scene.extent)]
    canvas = image.astype(np.float64)
    painted = 0
    for _ in range(count):
        extent = rng.uniform(*extents)
        spot = _free_spot(taken, extent, gap=3.0, rng=rng)
        if spot is None:
            break
        shape, color = shapes[rng.integers(len(shapes))], colors[rng.integers(len(colors))]
        canvas = composite(canvas, coverage(shape, spot, extent), COLORS[color])
        taken.append((*spot, extent))
        painted += 1
    return to_uint8(canvas), painted


def _fragments(image, scene, rng, severity):
    count = int(rng.integers(severity[0], severity[1] + 1))
    image, n = _add_blobs(image, scene, rng, count, (3.5, 5.0), [scene.color], ("circle",))
    return image, scene, f"{n} fragment(s) of {scene.color}"


def _clutter(image, scene, rng, severity):
    others = [c for c in COLORS if c != scene.color]
    count = int(rng.integers(severity[0], severity[1] + 1))
    image, n = _add_blobs(image, scene, rng, count, (5.0, 8.0), others, SHAPES)
    return image, scene, f"{n} distractor(s)"


def _crop(image, scene, rng, severity):
    # Push the object out through the border its position is nearest to (a random one for the center).
    side = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom"}.get(
        scene.position) or ("left", "right", "top", "bottom")[rng.integers(4)]
    visible = rng.uniform(*severity)
    offset = scene.extent * (visible - 0.5)  # centre distance from the border, inside the canvas
    x, y = scene.center
    x = offset if side == "left" else CANVAS - offset if side == "right" else x
    y = offset if side == "top" else CANVAS - offset if side == "bottom" else y
    moved = replace(scene, center=(float(x), float(y)))
    return draw(moved), moved, f"crop {side}, {1 - visible:.0%} outside"


def _low_contrast(image, scene, rng, severity):
    keep = rng.uniform(*severity)
    background = np.asarray(BACKGROUND, dtype=np.float64)
    faded = background + keep * (image.astype(np.float64) - background)
    return to_uint8(faded), scene, f"contrast x{keep:.2f}"


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: the rubric `dimension` it lowers and the function that applies it."""

    dimension: str
    apply: CorruptionFn


CORRUPTIONS: dict[str, Corruption] = {
    "wrong_color": Corruption("alignment", _wrong_attribute("color")),
    "wrong_shape": Corruption("alignment", _wrong_attribute("shape")),
    "wrong_size": Corruption("alignment", _wrong_attribute("size")),
    "wrong_position": Corruption("alignment", _wrong_attribute("position")),
    "blur": Corruption("realism", _blur),
    "noise": Corruption("realism", _noise),
    "color_shift": Corruption("realism", _color_shift),
    "object_cast": Corruption("realism", _object_cast),
    "fragments": Corruption("plausibility", _fragments),
    "crop": Corruption("plausibility", _crop),
    "low_contrast": Corruption("aesthetics", _low_contrast),
    "clutter": Corruption("aesthetics", _clutter),
}
# The attribute each wrong-attribute corruption changes.
WRONG_ATTRIBUTE: dict[str, str] = {f"wrong_{a}": a for a in ("color", "shape", "size", "position")}
# The corruptions that re-draw the scene (and so erase any pixel corruption before them), in the order they combine:
# the scene's attributes, then where it sits, then the object's cast (drawn on the moved scene).
REDRAW_ORDER: tuple[str, ...] = (*WRONG_ATTRIBUTE, "crop", "object_cast")


def combine_order(kinds: list[str]) -> list[str]:
    """`kinds` in the order to apply them: re-drawing ones first (`REDRAW_ORDER`), pixel ones after in their order."""
    return sorted(kinds, key=lambda k: REDRAW_ORDER.index(k) if k in REDRAW_ORDER else len(REDRAW_ORDER))


def corrupt(rendered: Rendered, kind: str, seed: int | np.random.Generator | None = None,
            severity: tuple[float, float] | None = None) -> Corrupted:
    """Apply the corruption `kind` to a clean rendering.

    Args:
        rendered ([`Rendered`]): output of `render.render` (the scene is needed to re-draw it).
        kind (`str`): a key of `CORRUPTIONS`.
        seed (`int`, `np.random.Generator` or `None`): the corruption's randomness (a Generator is advanced).
        severity (`tuple[float, float]`, *optional*): the range the strength is drawn from; default
            `SEVERITIES[kind]` (see `WIDE_SEVERITIES` for training data).

    Raises:
        `ValueError`: for an unknown `kind`.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; allowed: {', '.join(CORRUPTIONS)}")
    corruption = CORRUPTIONS[kind]
    severity = SEVERITIES.get(kind) if severity is None else severity
    image, scene, detail = corruption.apply(rendered.image, rendered.scene, as_generator(seed), severity)
    return Corrupted(image, scene, kind, corruption.dimension, detail)

