"""Reward-model training data: rated images and preference pairs as JSONL files (Z-Reward's score distributions and RISD).

Both files hold one JSON object per line; blank lines are skipped. Image paths are relative to the folder of the
JSONL file (absolute paths are allowed too).

**Rated images** (`rated.jsonl`), one line per image:

```json
{"image": "images/0003_01.png", "prompt": "a large red circle on the left",
 "ratings": {"alignment": [5.0, 4.5, 5.0], "realism": [3.5, 3.0, 3.5], ...},
 "rationale": {"alignment": "size large yes color red yes shape circle yes position left yes", ...},
 "source": "corrupt:blur", "split": "train"}
```

- `image`, `prompt`: required.
- Labels, one of these per dimension (looked up in this order, so a line may mix them across dimensions):
  - `"ratings": {dim: [r1, r2, ...]}`: one rating per annotator, each a bin value. Soft label = the histogram
    of the ratings (`ScoreDistribution.from_ratings`, optionally label-smoothed); human mean = mean rating.
  - `"mean": {dim: m}` with `"std": {dim: s}`: soft label = the discretised Gaussian whose mean is exactly `m`
    (`ScoreDistribution.from_mean_std`); human mean = `m`.
  - `"score": {dim: y}`: one score, soft label = two-bin linear interpolation (`ScoreDistribution.from_score`);
    human mean = `y`.
- `rationale` (optional): `{dim: str}`, a short attribute-by-attribute check text that a reasoning teacher learns
  to write before its score slot (TinyWorld's vocabulary: `zr_align.tinyworld.reward_data.RATIONALE_WORDS`).
- `source` (optional): where the image came from, e.g. `"render"`, `"corrupt:blur"`, `"sft_sample"`.
- `split` (optional): `"train"`, `"validation"` or `"test"`.

**Unlabelled images** (`RatedImages.add_unlabelled`, RISD / OPD's `risd.unlabelled`): lines with `image` and `prompt`
only, e.g. the `samples.jsonl` that `zr-align tinyworld sample` writes; a teacher's targets are their only labels.

**Preference pairs** (`pairs.jsonl`), one line per pair of images for the same prompt:

```json
{"prompt": "a large red circle on the left", "image_a": "images/0003_00.png", "image_b": "images/0003_04.png",
 "preference": "a", "margin": 1.35, "mean_a": {"alignment": 5.0, ...}, "mean_b": {"alignment": 3.8, ...}}
```

- `prompt`, `image_a`, `image_b`, `preference` (`"a"`, `"b"` or `"tie"`): required.
- `margin` (optional): how much a beat b (e.g. the difference of the panel's mean scores); NaN when absent.
- `mean_a`, `mean_b` (optional): per-dimension human mean scores of the two images.

Every line is validated when the dataset is built (images are read lazily, in `__getitem__`); bad input raises a
one-line `ValueError` naming the file, the line and the problem.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from ..rewards.loading import load_image, load_pixels
from ..scores import DEFAULT_BINS, ScoreDistribution

PREFERENCES: tuple[str, ...] = ("a", "b", "tie")
# Preference -> the human label of `metrics.pairwise_accuracy`: 1 = a better, 0 = b better, 0.5 = tie.
PREFERENCE_LABELS: dict[str, float] = {"a": 1.0, "b": 0.0, "tie": 0.5}
LABEL_FIELDS: tuple[str, ...] = ("ratings", "mean", "score")  # "std" goes with "mean"

_RATING_ATOL = 1e-6  # same tolerance as `ScoreDistribution.from_ratings`


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """`(line number, object)` for every non-blank line of a JSONL file.

    Raises:
        `ValueError`: if the file is missing, empty, or a line is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass a JSONL file")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} must be a JSON object, got {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise ValueError(f"{path} is empty; it needs one JSON object per line")
    return records


def _require(record: dict, fields: Sequence[str], where: str) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise ValueError(f"{where} lacks field(s) {missing}")


def _image_path(root: Path, name: Any, field: str, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: {field} must be a file path string, got {name!r}")
    path = root / name
    if not path.is_file():
        raise ValueError(f"{where}: {field} file {path} does not exist")
    return path


def _dim_map(record: dict, field: str, where: str) -> dict:
    value = record.get(field, {})
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {field} must be an object {{dimension: ...}}, got {type(value).__name__}")
    return value


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {what} must be a finite number, got {value!r}")
    return float(value)


def _image_and_prompt(record: dict, root: Path, where: str) -> Path:
    """A rated or unlabelled line's image path, after checking it has an `image` and a string `prompt`."""
    _require(record, ("image", "prompt"), where)
    if not isinstance(record["prompt"], str):
        raise ValueError(f"{where}: prompt must be a string, got {record['prompt']!r}")
    return _image_path(root, record["image"], "image", where)


class RatedImages(Dataset):
    """Images rated on rubric dimensions, with per-dimension soft labels over the score bins (Z-Reward's score distributions).

    Args:
        path (`str` or `os.PathLike`): a rated-images JSONL file (format in the module docstring).
        bins (`Sequence[float]`, *optional*, defaults to `DEFAULT_BINS`): the score bins (1.0, 1.5, ..., 5.0).
        dimensions (`Sequence[str]`, *optional*): the dimensions to load; every line must label each of them.
            Default: the dimensions labelled on the first line, in its order.
        smoothing (`float`, *optional*, defaults to 0.0): label smoothing of rating histograms (mass spread
            uniformly over the bins); mean/std and single-score labels are not smoothed.
        cache_bytes (`int`, *optional*, defaults to 1 GiB): decoded images are kept in memory (8-bit, as the file
            holds them) until this many bytes are held, so that a training run decodes each file once, not once per
            epoch; 0 decodes on every access. The pixels are the same either way.

    An item is a dict:
        - `image` (`torch.Tensor` of shape `(3, H, W)`): float in [0, 1];
        - `prompt` (`str`);
        - `labels` (`dict[str, torch.Tensor]`): dimension -> soft label `(K,)`, float32, summing to 1;
        - `mean` (`dict[str, float]`): dimension -> human mean score;
        - `rationale` (`dict[str, str]` or `None`), `source` (`str` or `None`), `path` (`str`), `index` (`int`).

    Raises:
        `ValueError`: on a missing or empty file, a line without `image`, `prompt` or a label of some dimension, a
        missing image file, a rating that is not a bin value, or a mean/score outside the bin range.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        bins: Sequence[float] = DEFAULT_BINS,
        dimensions: Sequence[str] | None = None,
        smoothing: float = 0.0,
        cache_bytes: int = 1 << 30,
    ):
        self.path = Path(path)
        self.cache_bytes = cache_bytes
        self._decoded: dict[int, torch.Tensor] = {}  # index -> (3, H, W) uint8
        self._held = 0
        self.bins = tuple(float(b) for b in bins)
        records = read_jsonl(self.path)
        root = self.path.parent
        if dimensions is None:
            number, first = records[0]
            where = f"{self.path} line {number}"
            dimensions = list(dict.fromkeys(d for f in LABEL_FIELDS for d in _dim_map(first, f, where)))
            if not dimensions:
                raise ValueError(f"{where} has no labels; give 'ratings', 'mean' + 'std' or 'score' per dimension")
        self.dimensions = tuple(dimensions)
        self.smoothing = smoothing
        self._rating_labels: dict[tuple, tuple[torch.Tensor, float]] = {}  # see `_from_ratings`
        self.items = [self._parse(number, record, root) for number, record in records]

    def _parse(self, number: int, record: dict, root: Path) -> dict:
        where = f"{self.path} line {number}"
        image = _image_and_prompt(record, root, where)
        ratings, means, stds, scores = (_dim_map(record, f, where) for f in ("ratings", "mean", "std", "score"))
        labels, human_mean = {}, {}
        for dim in self.dimensions:
            if dim in ratings:
                labels[dim], human_mean[dim] = self._from_ratings(ratings[dim], dim, where)
            elif dim in means:
                if dim not in stds:
                    raise ValueError(f"{where}: 'mean' of {dim} needs a 'std' of {dim} too")
                m = _number(means[dim], f"mean of {dim}", where)
                s = _number(stds[dim], f"std of {dim}", where)
                labels[dim], human_mean[dim] = self._label(ScoreDistribution.from_mean_std, where, dim, m, s), m
            elif dim in scores:
                y = _number(scores[dim], f"score of {dim}", where)
                labels[dim], human_mean[dim] = self._label(ScoreDistribution.from_score, where, dim, y), y
            else:
                raise ValueError(f"{where} has no label for dimension {dim!r}; give 'ratings', 'mean' + 'std' or "
                                 "'score' for it")
        rationale = record.get("rationale")
        if rationale is not None and not (
            isinstance(rationale, dict) and all(isinstance(v, str) for v in rationale.values())
        ):
            raise ValueError(f"{where}: rationale must be an object {{dimension: text}}")
        return {"path": image, "prompt": record["prompt"], "labels": labels, "mean": human_mean,
                "rationale": rationale, "source": record.get("source"), "split": record.get("split")}

    def _from_ratings(self, values: Any, dim: str, where: str) -> tuple[torch.Tensor, float]:
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: ratings of {dim} must be a non-empty list of bin values, got {values!r}")
        # A panel of a few raters gives few distinct rating lists (TinyWorld: 40,320 lists, 3,424 distinct):
        # each is checked and histogrammed once (the type is in the key, so that `true` never passes as 1.0).
        key = tuple((type(v), v) for v in values)
        if key not in self._rating_labels:
            self._rating_labels[key] = self._checked_label(values, dim, where)
        probs, mean = self._rating_labels[key]
        return probs.clone(), mean

    def _checked_label(self, values: list, dim: str, where: str) -> tuple[torch.Tensor, float]:
        for value in values:
            value = _number(value, f"rating of {dim}", where)
            if min(abs(value - b) for b in self.bins) > _RATING_ATOL:
                raise ValueError(f"{where}: rating {value:g} of {dim} is not one of the bins "
                                 f"{[round(b, 6) for b in self.bins]}")
        ratings = [float(v) for v in values]
        dist = ScoreDistribution.from_ratings(ratings, torch.tensor(self.bins, dtype=torch.float64), self.smoothing)
        return dist.probs.float(), sum(ratings) / len(ratings)

    def _label(self, constructor, where: str, dim: str, *args: float) -> torch.Tensor:
        try:
            dist = constructor(*(torch.tensor(a, dtype=torch.float64) for a in args),
                               torch.tensor(self.bins, dtype=torch.float64))
        except ValueError as error:  # e.g. a mean outside the bin range
            raise ValueError(f"{where}: {dim}: {error}") from None
        return dist.probs.float()

    def add_unlabelled(self, path: str | os.PathLike) -> int:
        """Append the images of a JSONL with an `image` and a `prompt` per line and no labels (label fields, if
        any, are ignored): rows that only a teacher's targets train (RISD / OPD on images of the domain the student
        will score, e.g. a generator's samples). Their `labels` and `mean` are None. Returns how many were added.

        Raises:
            `ValueError`: on a missing or empty file, a line without `image` or `prompt`, or a missing image file.
        """
        path = Path(path)
        records = read_jsonl(path)
        for number, record in records:
            where = f"{path} line {number}"
            self.items.append({"path": _image_and_prompt(record, path.parent, where),
                               "prompt": record["prompt"], "labels": None, "mean": None, "rationale": None,
                               "source": record.get("source", "unlabelled"), "split": record.get("split")})
        return len(records)

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, index: int) -> torch.Tensor:
        """The item's image, `(3, H, W)` float in [0, 1], decoded from its file once while the cache has room."""
        pixels = self._decoded.get(index)
        if pixels is None:
            pixels = load_pixels(self.items[index]["path"])
            if self._held + pixels.numel() <= self.cache_bytes:
                self._decoded[index] = pixels
                self._held += pixels.numel()
        return pixels.float() / 255.0

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {
            "image": self._image(index),
            "prompt": item["prompt"],
            "labels": None if item["labels"] is None else dict(item["labels"]),
            "mean": None if item["mean"] is None else dict(item["mean"]),
            "rationale": item["rationale"],
            "source": item["source"],
            "path": str(item["path"]),
            "index": index,
        }

    def human_means(self, weights: dict[str, float] | None = None) -> torch.Tensor:
        """`(N,)` weighted mean over dimensions of the human mean scores (equal weights by default)."""
        weights = weights or dict.fromkeys(self.dimensions, 1.0)
        total = sum(weights.values())
        return torch.tensor([sum(w * it["mean"][d] for d, w in weights.items()) / total for it in self.items],
                            dtype=torch.float64)


class PreferencePairs(Dataset):
    """Pairs of images for the same prompt with a human preference (format in the module docstring).

    An item is a dict: `prompt` (`str`), `image_a`, `image_b` (`torch.Tensor` of shape `(3, H, W)` in [0, 1]),
    `preference` (`"a"`, `"b"` or `"tie"`), `label` (`float`: 1 = a better, 0 = b better, 0.5 = tie), `margin`
    (`float`, NaN when absent), `mean_a`, `mean_b` (`dict[str, float]` or `None`), `path_a`, `path_b` (`str`).

    Raises:
        `ValueError`: on a missing or empty file, a line without `prompt`, `image_a`, `image_b` or `preference`,
        a missing image file, or a preference other than "a", "b" or "tie".
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        root = self.path.parent
        self.items = [self._parse(number, record, root) for number, record in read_jsonl(self.path)]

    def _parse(self, number: int, record: dict, root: Path) -> dict:
        where = f"{self.path} line {number}"
        _require(record, ("prompt", "image_a", "image_b", "preference"), where)
        if not isinstance(record["prompt"], str):
            raise ValueError(f"{where}: prompt must be a string, got {record['prompt']!r}")
        if record["preference"] not in PREFERENCES:
            raise ValueError(f"{where}: preference must be one of {list(PREFERENCES)}, got {record['preference']!r}")
        margin = record.get("margin")
        item = {
            "prompt": record["prompt"],
            "path_a": _image_path(root, record["image_a"], "image_a", where),
            "path_b": _image_path(root, record["image_b"], "image_b", where),
            "preference": record["preference"],
            "margin": float("nan") if margin is None else _number(margin, "margin", where),
        }
        for side in ("mean_a", "mean_b"):
            means = _dim_map(record, side, where) if side in record else None
            item[side] = None if means is None else {d: _number(v, f"{side} of {d}", where) for d, v in means.items()}
        return item

    @property
    def labels(self) -> torch.Tensor:
        """`(N,)` human labels: 1 = a better, 0 = b better, 0.5 = tie."""
        return torch.tensor([PREFERENCE_LABELS[it["preference"]] for it in self.items], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        return {
            "prompt": item["prompt"],
            "image_a": load_image(item["path_a"]),
            "image_b": load_image(item["path_b"]),
            "preference": item["preference"],
            "label": PREFERENCE_LABELS[item["preference"]],
            "margin": item["margin"],
            "mean_a": item["mean_a"],
            "mean_b": item["mean_b"],
            "path_a": str(item["path_a"]),
            "path_b": str(item["path_b"]),
            "index": index,
        }


def _stack_images(images: list[torch.Tensor], name: str) -> torch.Tensor:
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ValueError(f"{name} of a batch must share one size, got {sorted(shapes)}; resize them or use "
                         "batch_size=1")
    return torch.stack(images)


def _stack_dims(dicts: list[dict | None]) -> dict[str, torch.Tensor] | None:
    # Per-dimension tensors over the batch; None unless every item has every dimension of the first.
    if any(d is None for d in dicts) or any(set(d) != set(dicts[0]) for d in dicts):
        return None
    return {k: torch.stack([torch.as_tensor(d[k], dtype=torch.float32) for d in dicts]) for k in dicts[0]}


def collate(items: list[dict]) -> dict:
    """Batch items of [`RatedImages`] or [`PreferencePairs`] (for `torch.utils.data.DataLoader(collate_fn=...)`).

    Rated images give `images` `(B, 3, H, W)`, `prompts`, `labels` `{dim: (B, K)}`, `mean` `{dim: (B,)}` (both
    None when a row of the batch has no labels: `RatedImages.add_unlabelled`), `rationales` (list of dicts or
    None), `sources`, `paths`, `indices`. Pairs give `images_a`, `images_b`
    `(B, 3, H, W)`, `prompts`, `labels` `(B,)` (1 / 0 / 0.5), `margins` `(B,)`, `mean_a`, `mean_b`
    (`{dim: (B,)}`, or None unless every pair has them), `preferences`, `paths_a`, `paths_b`, `indices`.

    Raises:
        `ValueError`: for an empty list or images of different sizes.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    if "image_a" in items[0]:
        return {
            "images_a": _stack_images([it["image_a"] for it in items], "image_a"),
            "images_b": _stack_images([it["image_b"] for it in items], "image_b"),
            "prompts": [it["prompt"] for it in items],
            "labels": torch.tensor([it["label"] for it in items], dtype=torch.float32),
            "margins": torch.tensor([it["margin"] for it in items], dtype=torch.float32),
            "mean_a": _stack_dims([it["mean_a"] for it in items]),
            "mean_b": _stack_dims([it["mean_b"] for it in items]),
            "preferences": [it["preference"] for it in items],
            "paths_a": [it["path_a"] for it in items],
            "paths_b": [it["path_b"] for it in items],
            "indices": [it["index"] for it in items],
        }
    labelled = all(it["labels"] is not None for it in items)  # unlabelled rows (`add_unlabelled`): no labels
    return {
        "images": _stack_images([it["image"] for it in items], "images"),
        "prompts": [it["prompt"] for it in items],
        "labels": {d: torch.stack([it["labels"][d] for it in items]) for d in items[0]["labels"]} if labelled else None,
        "mean": ({d: torch.tensor([it["mean"][d] for it in items], dtype=torch.float32) for d in items[0]["mean"]}
                 if labelled else None),
        "rationales": [it["rationale"] for it in items],
        "sources": [it["source"] for it in items],
        "paths": [it["path"] for it in items],
        "indices": [it["index"] for it in items],
    }


__all__ = ["LABEL_FIELDS", "PREFERENCES", "PREFERENCE_LABELS", "PreferencePairs", "RatedImages", "collate",
           "read_jsonl"]
