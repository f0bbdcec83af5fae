"""TinyWorld's prompt grammar (README: "TinyWorld: the embedded default"): `"a {size} {color} {shape} {position}"`, and its prompt splits.

The grammar is fixed (it may be extended, never changed): 2 sizes x 6 colours x 3 shapes x 5 positions
= 180 prompts, e.g. "a large red circle on the left". Images are 64x64 RGB with one object on a light-gray
background.

Geometry conventions, shared by the renderer and the judge:

- Continuous pixel coordinates: pixel `(row i, column j)` covers `[j, j + 1) x [i, i + 1)`, so its centre is at
  `(j + 0.5, i + 0.5)`; `x` grows to the right, `y` downwards.
- A scene's *centre* is the centre of the object's bounding box and its *extent* the side of that (square) box.
  For an upright triangle the area centroid sits `extent / 6` below the box centre; position always refers to the
  box centre.
- The canvas is cut into a 3 x 3 grid of thirds. A position names the grid cell that holds the centre: "on the
  left" is the left column *and* middle row, "at the top" the top row and middle column, and so on; "in the
  center" is the middle cell. The four corner cells belong to no position, so the five positions never overlap.

Splits ([`split_prompts`]): a seeded shuffle of the 180 prompts; the first 20% (36) are *test*, the next 10% (18)
*validation*, the remaining 126 *train*. A shuffle is redrawn (the next one from the same generator) until every
split contains every size, colour, shape and position, so test prompts are unseen *combinations* of attribute
values that all occur in training. Images come from per-image random layouts (see `render.render`), so each
prompt can be drawn any number of times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np

CANVAS = 64  # image side in pixels
BACKGROUND: tuple[int, int, int] = (230, 230, 230)  # light gray

SIZES: tuple[str, ...] = ("small", "large")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (150, 60, 190),
    "orange": (240, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom", "in the center")

# Bounding-box side in pixels of each size before jitter.
SIZE_PIXELS: dict[str, float] = {"small": 16.0, "large": 32.0}
# Grid cell (row, column) of the 3 x 3 thirds that holds the object centre for each position.
POSITION_CELLS: dict[str, tuple[int, int]] = {
    "on the left": (1, 0),
    "on the right": (1, 2),
    "at the top": (0, 1),
    "at the bottom": (2, 1),
    "in the center": (1, 1),
}

ATTRIBUTES: tuple[str, ...] = ("size", "color", "shape", "position")
VALUES: dict[str, tuple[str, ...]] = {"size": SIZES, "color": tuple(COLORS), "shape": SHAPES, "position": POSITIONS}


def _check_value(attribute: str, value: str) -> None:
    if value not in VALUES[attribute]:
        raise ValueError(f"unknown {attribute} {value!r}; allowed: {', '.join(VALUES[attribute])}")


@dataclass(frozen=True)
class Attributes:
    """The four discrete attributes a prompt names.

    Raises:
        `ValueError`: if a value is not in the grammar (the message names it and lists the allowed values).
    """

    size: str
    color: str
    shape: str
    position: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            _check_value(name, getattr(self, name))

    @property
    def prompt(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {self.position}"

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


@dataclass(frozen=True)
class Scene:
    """What the renderer drew: the attributes plus the continuous geometry.

    Args:
        size, color, shape, position (`str`): the attributes (validated like [`Attributes`]).
        center (`tuple[float, float]`): `(x, y)` of the bounding-box centre in pixels (see the module docstring).
            A corrupted scene may put it outside the canvas or outside its position's third.
        extent (`float`): side of the square bounding box in pixels (about 16 for small, 32 for large).
    """

    size: str
    color: str
    shape: str
    position: str
    center: tuple[float, float]
    extent: float

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            _check_value(name, getattr(self, name))
        if not self.extent > 0:
            raise ValueError(f"extent must be > 0 pixels, got {self.extent}")

    @property
    def attributes(self) -> Attributes:
        return Attributes(self.size, self.color, self.shape, self.position)

    @property
    def prompt(self) -> str:
        return self.attributes.prompt


def all_prompts() -> list[str]:
    """All 180 prompts, sizes outermost and positions innermost."""
    return [Attributes(s, c, h, p).prompt for s in SIZES for c in COLORS for h in SHAPES for p in POSITIONS]


_PROMPT_RE = re.compile(r"a (\S+) (\S+) (\S+) (.+)")


def parse_prompt(text: str) -> Attributes:
    """The attributes of a prompt of the grammar; case and repeated spaces are ignored, a final "." is allowed.

    Raises:
        `ValueError`: one line naming the unknown word and listing the allowed ones, or the expected form when
        the prompt does not have it at all.
    """
    normal = " ".join(str(text).lower().split()).rstrip(".")
    match = _PROMPT_RE.fullmatch(normal)
    if match is None:
        raise ValueError(f"prompt {text!r} is not of the form 'a {{size}} {{color}} {{shape}} {{position}}', "
                         "e.g. 'a large red circle on the left'")
    return Attributes(*match.groups())


@dataclass(frozen=True)
class PromptSplits:
    """Disjoint train / validation / test prompt lists (see the module docstring for how they are drawn)."""

    train: list[str]
    validation: list[str]
    test: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _covers_every_value(prompts: list[str]) -> bool:
    seen = [parse_prompt(p) for p in prompts]
    return all({getattr(a, name) for a in seen} == set(VALUES[name]) for name in ATTRIBUTES)


def split_prompts(seed: int = 0, test_fraction: float = 0.2, validation_fraction: float = 0.1) -> PromptSplits:
    """Seeded held-out split of the 180 prompts; every split contains every attribute value.

    Args:
        seed (`int`, *optional*, defaults to 0): seeds the shuffle; the same seed always gives the same splits.
        test_fraction (`float`, *optional*, defaults to 0.2): share of prompts held out for testing (36 of 180).
        validation_fraction (`float`, *optional*, defaults to 0.1): share for validation (18 of 180).

    Raises:
        `ValueError`: if the fractions leave a split with too few prompts to contain every attribute value.
    """
    prompts = all_prompts()
    num_test, num_val = round(test_fraction * len(prompts)), round(validation_fraction * len(prompts))
    smallest = max(len(v) for v in VALUES.values())
    if min(num_test, num_val, len(prompts) - num_test - num_val) < smallest:
        raise ValueError(f"test_fraction={test_fraction} and validation_fraction={validation_fraction} leave a split "
                         f"with fewer than {smallest} prompts; every split must contain every attribute value")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        order = [prompts[i] for i in rng.permutation(len(prompts))]
        test, val, train = order[:num_test], order[num_test:num_test + num_val], order[num_test + num_val:]
        if all(_covers_every_value(split) for split in (train, val, test)):
            # Kept in grammar order within each split so that listings read naturally.
            rank = {p: i for i, p in enumerate(prompts)}
            return PromptSplits(*(sorted(split, key=rank.__getitem__) for split in (train, val, test)))
    raise ValueError(f"no split with every attribute value in every split after 1000 shuffles (seed={seed}); "
                     "use larger fractions")
