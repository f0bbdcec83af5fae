"""TinyWorld's ground-truth judge: reads only pixels and the prompt, scores the 4 rubric dimensions (README: "TinyWorld: the embedded default").

Reading the image (numpy only):

1. Background = per-channel median of all pixels (the object covers at most about a third of the canvas), taken
   again over the pixels at least 3 px from the foreground found with it (noise would otherwise bias it).
2. Segmentation by palette colour: each pixel `p` is explained as a mix `bg + a (c_k - bg)` of the background
   and a palette colour `c_k`, choosing the colour whose line leaves the smallest residual (this keeps
   anti-aliased edges of a blue object from reading as purple). The pixel is on-palette when the residual is at
   most `max(40, 0.35 |p - bg|)`; it is foreground when `a >= 0.3` (on-palette) or `|p - bg| >= 60` (off-palette).
3. Connected components (8-connected, own labelling below); the main object is the largest; it must have at
   least `MIN_OBJECT_AREA` pixels, otherwise the image shows no object.

Attributes of the main object:

- colour: majority pixel label over the object's interior (pixels whose 8 neighbours are all in it); "other" when
  most of it is off-palette;
- shape: nearest prototype in (fill ratio = area / bounding-box area, corner fill = fraction filled of the four
  corner patches of side 15% of the box, taper = narrower / wider of the mean widths of the top and bottom
  quarters): square (1, 1, 1), circle (pi/4, 0, 1), triangle (0.5, 0.35, 0.15). An upside-down triangle reads as a
  triangle too;
- size: bounding-box side `max(w, h)`: large when >= sqrt(16 * 32) = 22.6 px, else small;
- position: the 3 x 3 grid cell of the bounding-box centre (see `grammar`); a corner cell is no position.

Artefacts (thresholds sit between clean renders and the corruptions of `corrupt.py`, see the benchmark):

| artefact       | measurement                                                                | flag      | severe   |
|----------------|----------------------------------------------------------------------------|-----------|----------|
| `blur`         | median over the object's boundary pixels of the largest step of its alpha to | < 0.45    | < 0.25   |
|                | a 4-neighbour, alpha measured along core colour - background (core = 1)     |           |          |
| `noise`        | robust std (1.4826 MAD, mean over channels) of pixels >= 4 px from any      | > 3       | > 10     |
|                | foreground                                                                  |           |          |
| `color_shift`  | background distance from (230, 230, 230), or the core colour's distance     | > 12 / 25 | > 35 / 50 |
|                | from the line gray -> its palette colour                                    |           |          |
| `fragments`    | other components (>= 4 px) of the object's colour                           | >= 1      | -        |
| `crop`         | object pixels with alpha >= 0.5 on the border; cut = 1 - min(w, h) / max(w, h) | >= 2 px   | cut>0.35 |
| `low_contrast` | core colour's position `a` on the line background -> palette colour          | < 0.7     | < 0.5    |
| `clutter`      | other components (>= 4 px) of another colour                                | >= 1      | -        |

Scores, each clipped to [1, 5] (all rules give half points, so they land on the 9 bins):

- alignment = 5 - 1 per wrong attribute (size, colour, shape, position); 1 without an object;
- realism = 5 - 1.5 per flagged blur / noise / colour shift, - 1 more for each severe one;
- plausibility = 5 - fragments (1.5, + 0.5 per fragment beyond the first, at most 2.5) - crop (1.5, + 1 if severe);
  1 without an object;
- aesthetics (a clear subject) = 5 - low contrast (1.5, + 1 if severe) - clutter (1, + 0.5 per distractor beyond
  the first, at most 2.5); 1 without an object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grammar import (
    ATTRIBUTES,
    BACKGROUND,
    CANVAS,
    COLORS,
    POSITION_CELLS,
    Attributes,
    parse_prompt,
)

PALETTE_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in PALETTE_NAMES], dtype=np.float64)  # (K, 3)
_GRAY = np.array(BACKGROUND, dtype=np.float64)
_OTHER = len(PALETTE_NAMES)  # label of off-palette pixels

FOREGROUND_ALPHA = 0.3
OFF_PALETTE_DISTANCE = 60.0
MIN_OBJECT_AREA = 20
MIN_COMPONENT_AREA = 4
SIZE_THRESHOLD = math.sqrt(16 * 32)
BLUR_SHARPNESS = 0.45  # blur: boundary sharpness below this
SHIFT_BACKGROUND = 12.0  # colour shift: background farther than this from gray ...
SHIFT_CORE = 25.0  # ... or the core colour farther than this from its palette line
SHAPE_PROTOTYPES: dict[str, tuple[float, float, float]] = {  # (fill, corner fill, taper)
    "square": (1.0, 1.0, 1.0),
    "circle": (math.pi / 4, 0.0, 1.0),
    "triangle": (0.5, 0.35, 0.15),
}
ARTEFACTS: tuple[str, ...] = ("blur", "noise", "color_shift", "fragments", "crop", "low_contrast", "clutter")
_CELL_NAMES = (("top-left corner", "at the top", "top-right corner"),
               ("on the left", "in the center", "on the right"),
               ("bottom-left corner", "at the bottom", "bottom-right corner"))
assert all(_CELL_NAMES[r][c] == p for p, (r, c) in POSITION_CELLS.items())


@dataclass
class Verdict:
    """The judge's reading of one image for one prompt.

    Args:
        prompt (`str`): the prompt judged against.
        expected ([`Attributes`]): what the prompt asks for.
        observed (`dict[str, str | None]`): attribute -> value read from the pixels (`None` without an object;
            colour "other" for an off-palette object; a corner name such as "top-left corner" for a position).
        correct (`dict[str, bool]`): attribute -> observed == expected.
        artefacts (`dict[str, bool]`): artefact name (see `ARTEFACTS`) -> flagged.
        measurements (`dict[str, float]`): the numbers behind the flags (see the module docstring).
        scores (`dict[str, float]`): rubric dimension -> score on the half-point bins 1.0 ... 5.0.
    """

    prompt: str
    expected: Attributes
    observed: dict[str, str | None]
    correct: dict[str, bool]
    artefacts: dict[str, bool]
    measurements: dict[str, float]
    scores: dict[str, float]

    @property
    def num_wrong(self) -> int:
        return sum(not ok for ok in self.correct.values())

    def to_record(self) -> dict:
        """JSON-ready summary: per-attribute verdicts, flagged artefacts and scores."""
        return {
            "prompt": self.prompt,
            "attributes": {a: {"expected": getattr(self.expected, a), "observed": self.observed[a],
                               "correct": self.correct[a]} for a in ATTRIBUTES},
            "artefacts": [name for name, flagged in self.artefacts.items() if flagged],
            "scores": dict(self.scores),
        }


def as_pixels(image) -> np.ndarray:
    """A float64 `(64, 64, 3)` array in [0, 255] from a uint8 `(H, W, 3)` array, a float `(H, W, 3)` array in
    [0, 1], a torch tensor `(3, H, W)` / `(H, W, 3)` (float in [0, 1] or uint8), or a PIL image.

    Raises:
        `ValueError`: if the image is not 64x64 RGB.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        image = np.asarray(image.convert("RGB"))
    elif hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    array = np.asarray(image)
    if array.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"TinyWorld images must be {CANVAS}x{CANVAS} RGB (shape ({CANVAS}, {CANVAS}, 3)), "
                         f"got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0
    raise ValueError(f"TinyWorld images must be uint8 in [0, 255] or float in [0, 1], got dtype {array.dtype}")


# ----- connected components and morphology (numpy) -------------------------------------------------------------
def _neighbourhoods(array: np.ndarray, fill, connectivity: int = 8) -> list[np.ndarray]:
    """The array shifted to each neighbour (and itself), padding with `fill`."""
    h, w = array.shape
    padded = np.pad(array, 1, constant_values=fill)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if connectivity == 8 or abs(dy) + abs(dx) <= 1]
    return [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in offsets]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: labels `(H, W)` (0 outside, 1..n inside) and n.

    Min-label propagation with pointer jumping: every pixel starts with its own flat index, repeatedly takes the
    smallest label in its neighbourhood and then the label of the pixel its label points to, which converges in
    about log2(component diameter) rounds.
    """
    h, w = mask.shape
    none = h * w
    labels = np.where(mask, np.arange(h * w).reshape(h, w), none)
    while True:
        new = np.where(mask, np.minimum.reduce(_neighbourhoods(labels, none)), none)
        flat = np.append(new.ravel(), none)  # index `none` maps to itself
        new = flat[new]
        if np.array_equal(new, labels):
            break
        labels = new
    roots, inverse = np.unique(labels[mask], return_inverse=True)
    out = np.zeros((h, w), dtype=np.int64)
    out[mask] = inverse + 1
    return out, len(roots)


def _erode(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    return np.logical_and.reduce(_neighbourhoods(mask, False, connectivity))


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        mask = np.logical_or.reduce(_neighbourhoods(mask, False))
    return mask


# ----- reading the pixels ----------------------------------------------------------------------------------------
def _segment(pixels: np.ndarray):
    """Background colour, per-pixel palette label (K = off-palette), alpha along each palette line, foreground."""
    background = np.median(pixels.reshape(-1, 3), axis=0)
    background, label, alpha, foreground = _segment_against(pixels, background)
    # The first median is biased by the object's pixels when the background is noisy; take it again without them.
    clear = ~_dilate(foreground, 2)
    if clear.sum() >= 64:
        background, label, alpha, foreground = _segment_against(pixels, np.median(pixels[clear], axis=0))
    return background, label, alpha, foreground


def _segment_against(pixels: np.ndarray, background: np.ndarray):
    d = pixels - background  # (H, W, 3)
    u = _PALETTE - background  # (K, 3): direction of each palette line
    norm2 = (u**2).sum(-1)
    alpha = d @ u.T / np.maximum(norm2, 1.0)  # (H, W, K)
    residual = np.linalg.norm(d[..., None, :] - alpha[..., None] * u, axis=-1)  # (H, W, K)
    # A palette colour too close to the background cannot be told apart from it along its line.
    usable = (norm2 >= 20.0**2) & (alpha > 0)
    residual = np.where(usable, residual, np.inf)
    best = residual.argmin(-1)
    best_residual = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    distance = np.linalg.norm(d, axis=-1)
    on_palette = best_residual <= np.maximum(40.0, 0.35 * distance)
    label = np.where(on_palette, best, _OTHER)
    foreground = np.where(on_palette, best_alpha >= FOREGROUND_ALPHA, distance >= OFF_PALETTE_DISTANCE)
    return background, label, alpha, foreground


def _majority(values: np.ndarray) -> int:
    return int(np.bincount(values, minlength=_OTHER + 1).argmax())


def _shape_features(mask: np.ndarray) -> tuple[float, float, float]:
    """(fill ratio, corner fill, taper) of a mask cropped to its bounding box."""
    h, w = mask.shape
    fill = mask.mean()
    k = max(1, round(0.15 * min(h, w)))
    corners = np.mean([mask[:k, :k].mean(), mask[:k, -k:].mean(), mask[-k:, :k].mean(), mask[-k:, -k:].mean()])
    q = max(1, h // 4)
    top, bottom = mask[:q].sum(1).mean(), mask[-q:].sum(1).mean()
    taper = min(top, bottom) / max(top, bottom, 1e-9)
    return float(fill), float(corners), float(taper)


def _classify_shape(features: tuple[float, float, float]) -> str:
    return min(SHAPE_PROTOTYPES, key=lambda s: sum((f - p) ** 2 for f, p in zip(features, SHAPE_PROTOTYPES[s])))


def _position_name(cx: float, cy: float) -> str:
    third = CANVAS / 3
    row, col = (min(2, max(0, int(v // third))) for v in (cy, cx))
    return _CELL_NAMES[row][col]


def _line_residual(color: np.ndarray, k: int) -> float:
    """Distance of `color` from the segment gray -> palette colour k (how far it is from any mix of the two)."""
    u = _PALETTE[k] - _GRAY
    t = np.clip((color - _GRAY) @ u / (u @ u), 0.0, 1.0)
    return float(np.linalg.norm(color - _GRAY - t * u))


def _noise_std(pixels: np.ndarray, foreground: np.ndarray) -> float:
    far = ~_dilate(foreground, 4)
    sample = pixels[far] if far.sum() >= 64 else pixels[~foreground]
    if len(sample) < 8:
        return 0.0
    mad = np.median(np.abs(sample - np.median(sample, axis=0)), axis=0)
    return float(1.4826 * mad.mean())


def _sharpness(alpha: np.ndarray, mask: np.ndarray) -> float:
    """Median over the object's boundary pixels (off the image border) of the largest alpha step to a 4-neighbour."""
    boundary = mask & ~_erode(mask, connectivity=4)
    boundary[[0, -1], :] = boundary[:, [0, -1]] = False
    if not boundary.any():
        return 1.0
    steps = np.max([np.abs(alpha - n) for n in _neighbourhoods(alpha, 0.0, connectivity=4)], axis=0)
    return float(np.median(steps[boundary]))


def judge(image, prompt: str) -> Verdict:
    """Judge one image against a prompt of the grammar (see the module docstring for every rule).

    Args:
        image: 64x64 RGB image, see [`as_pixels`] for the accepted types.
        prompt (`str`): a prompt of the TinyWorld grammar.

    Raises:
        `ValueError`: if the image is not 64x64 RGB or the prompt is outside the grammar.
    """
    expected = parse_prompt(prompt)
    pixels = as_pixels(image)
    background, label, alpha, foreground = _segment(pixels)
    components, count = label_components(foreground)
    areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
    bg_shift = float(np.linalg.norm(background - _GRAY))
    m = {"background_shift": bg_shift, "noise_std": _noise_std(pixels, foreground)}
    flags = dict.fromkeys(ARTEFACTS, False)
    realism = 5.0
    for name, value, flag, severe in (("noise", m["noise_std"], 3.0, 10.0), ("color_shift", bg_shift, SHIFT_BACKGROUND, 35.0)):
        flags[name] = value > flag
        realism -= (1.5 + (value > severe)) if flags[name] else 0.0

    if count == 0 or areas.max() < MIN_OBJECT_AREA:
        observed = dict.fromkeys(ATTRIBUTES)
        scores = {"alignment": 1.0, "realism": max(1.0, realism), "aesthetics": 1.0, "plausibility": 1.0}
        return Verdict(expected.prompt, expected, observed, dict.fromkeys(ATTRIBUTES, False), flags, m, scores)

    main_id = int(areas.argmax()) + 1
    mask = components == main_id
    interior = mask & _erode(mask)
    core_pixels = pixels[interior] if interior.any() else pixels[mask]
    color_index = _majority(label[interior] if interior.any() else label[mask])
    core = np.median(core_pixels, axis=0)

    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = y1 - y0, x1 - x0
    features = _shape_features(mask[y0:y1, x0:x1])
    observed = {
        "size": "large" if max(h, w) >= SIZE_THRESHOLD else "small",
        "color": PALETTE_NAMES[color_index] if color_index < _OTHER else "other",
        "shape": _classify_shape(features),
        "position": _position_name((x0 + x1) / 2, (y0 + y1) / 2),
    }
    correct = {a: observed[a] == getattr(expected, a) for a in ATTRIBUTES}
    m.update(extent=float(max(h, w)), center_x=(x0 + x1) / 2, center_y=(y0 + y1) / 2, fill=features[0],
             corner_fill=features[1], taper=features[2])

    # Realism: blur along the object's own colour line (so a faded object is not "blurry"), colour cast.
    v = core - background
    own_alpha = (pixels - background) @ v / max(v @ v, 1.0)
    m["sharpness"] = _sharpness(own_alpha, mask)
    ks = [color_index] if color_index < _OTHER else range(_OTHER)
    m["core_residual"] = min(_line_residual(core, k) for k in ks)
    flags["blur"] = m["sharpness"] < BLUR_SHARPNESS
    realism -= (1.5 + (m["sharpness"] < 0.25)) if flags["blur"] else 0.0
    if not flags["color_shift"] and m["core_residual"] > SHIFT_CORE:
        flags["color_shift"] = True
        realism -= 1.5 + (m["core_residual"] > 50.0)

    # Plausibility: fragments of the object's colour, object cut by the border.
    plausibility, distractors = _plausibility(label, components, areas, main_id, color_index, mask & (own_alpha >= 0.5),
                                              (h, w), m, flags)

    # Aesthetics: a clear subject (full contrast, no clutter).
    u = _PALETTE[color_index] - background if color_index < _OTHER else v
    m["contrast"] = float(v @ u / max(u @ u, 1.0))
    flags["low_contrast"], flags["clutter"] = m["contrast"] < 0.7, distractors > 0
    aesthetics = 5.0 - ((1.5 + (m["contrast"] < 0.5)) if flags["low_contrast"] else 0.0)
    aesthetics -= min(2.5, 0.5 + 0.5 * distractors) if distractors else 0.0

    scores = {"alignment": 5.0 - sum(not ok for ok in correct.values()), "realism": realism,
              "aesthetics": aesthetics, "plausibility": plausibility}
    scores = {d: float(min(5.0, max(1.0, s))) for d, s in scores.items()}
    return Verdict(expected.prompt, expected, observed, correct, flags, m, scores)


def _plausibility(label, components, areas, main_id: int, color_index: int, solid, size, m: dict,
                  flags: dict) -> tuple[float, int]:
    """The plausibility score (fragments of the object's colour, the object cut by the border) and the number of
    distractors (other objects, for aesthetics). `solid` is the object itself (alpha >= 0.5, not a blur halo);
    `m` and `flags` receive the measurements and artefact flags."""
    h, w = size
    count = len(areas)
    extras = [i + 1 for i in range(count) if i + 1 != main_id and areas[i] >= MIN_COMPONENT_AREA]
    extra_colors = [_majority(label[components == i]) for i in extras]
    fragments = sum(c == color_index for c in extra_colors)
    distractors = len(extras) - fragments
    # Cut by the border: the object itself reaches it along 2+ pixels.
    border = np.zeros_like(solid)
    border[[0, -1], :] = border[:, [0, -1]] = True
    touches = int((solid & border).sum()) >= 2
    m.update(fragments=float(fragments), distractors=float(distractors), cut=float(1 - min(h, w) / max(h, w)))
    flags["fragments"], flags["crop"] = fragments > 0, bool(touches)
    plausibility = 5.0 - (min(2.5, 1.0 + 0.5 * fragments) if fragments else 0.0)
    plausibility -= (1.5 + (m["cut"] > 0.35)) if touches else 0.0
    return plausibility, distractors


# ------------------------------------------------------------------ a generator measured by the judge
def summarize(verdicts: list[Verdict]) -> dict:
    """Per-attribute accuracy, all-attributes-correct rate, mean rubric scores and the share of images with each
    artefact flag (where the realism, plausibility and aesthetics points went) of a list of verdicts."""
    n = len(verdicts)
    return {
        "images": n,
        "accuracy": {a: sum(v.correct[a] for v in verdicts) / n for a in ATTRIBUTES},
        "all_correct": sum(all(v.correct[a] for a in ATTRIBUTES) for v in verdicts) / n,
        "mean_scores": {d: sum(v.scores[d] for v in verdicts) / n for d in verdicts[0].scores},
        "artefacts": {a: sum(v.artefacts[a] for v in verdicts) / n for a in ARTEFACTS},
    }


def judge_images(images: np.ndarray, prompts: list[str]) -> list[Verdict]:
    return [judge(image, prompt) for image, prompt in zip(images, prompts)]


def overall(verdict: Verdict, weights: dict[str, float] | None = None) -> float:
    """The judge's overall score of an image: the (weighted) mean of its rubric scores."""
    weights = weights or {d: 1.0 for d in verdict.scores}
    return sum(weights[d] * verdict.scores[d] for d in weights) / sum(weights.values())


def net_preference(candidate: list[Verdict], baseline: list[Verdict], margin: float = 0.2) -> dict:
    """Good-Same-Bad comparison on paired images (same prompt, same seed): GSB net = (good - bad) / all.

    An image pair is "good" when the candidate's overall judge score beats the baseline's by more than
    `margin` (a tie band like a human's), "bad" when it loses by more, "same" otherwise. The overall score is
    the mean of four rubric scores, so one attribute more or less right moves it by exactly 0.25 and a half point
    on one artefact dimension by 0.125: the default band 0.2 counts every attribute a person would see as a
    difference and ties the smallest artefact changes. (Before 2026-11 it was 0.25, which tied one-attribute
    differences; reports give both.)
    """
    good = bad = 0
    for c, b in zip(candidate, baseline):
        delta = overall(c) - overall(b)
        good += delta > margin
        bad += delta < -margin
    n = len(candidate)
    return {"good": good, "same": n - good - bad, "bad": bad, "net": (good - bad) / n}
