"""Simulated human raters for TinyWorld: the judge's scores turned into human-like ratings (README: "TinyWorld: the embedded default").

A panel has `num_raters` raters. Rater `r` rating dimension `d` of an image whose judge score is `s_d` gives

    rating = snap(clip(s_d + bias[r, d] + noise), bins)

where `bias[r, d] ~ N(0, bias_std[d])` is drawn once per panel (from `seed`: a rater is consistently harsh or
lenient) and `noise ~ N(0, noise_std[d])` afresh for every rating (from the generator passed to `rate`). Both are
largest on aesthetics, the most subjective dimension. `snap` picks the nearest bin, so ratings are valid inputs to
`ScoreDistribution.from_ratings`.

A pairwise preference compares the weighted mean over dimensions of the panel's mean ratings of two images for the
same prompt; a difference below `tie_threshold` is a tie, as a human panel would call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..scores import DEFAULT_BINS, ScoreDistribution
from .judge import judge
from .render import as_generator

DEFAULT_BIAS_STD: dict[str, float] = {"alignment": 0.15, "realism": 0.2, "aesthetics": 0.35, "plausibility": 0.2}
DEFAULT_NOISE_STD: dict[str, float] = {"alignment": 0.25, "realism": 0.35, "aesthetics": 0.6, "plausibility": 0.3}


@dataclass
class Ratings:
    """One image's ratings.

    Args:
        ratings (`dict[str, list[float]]`): dimension -> one rating per rater, each a bin value.
        values (`tuple[float, ...]`): the bins.
    """

    ratings: dict[str, list[float]]
    values: tuple[float, ...] = DEFAULT_BINS

    def mean(self) -> dict[str, float]:
        """Dimension -> the panel's mean rating."""
        return {d: float(np.mean(r)) for d, r in self.ratings.items()}

    def distributions(self, smoothing: float = 0.0) -> dict[str, ScoreDistribution]:
        """Dimension -> empirical distribution of the ratings (unbatched, probs of shape `(num_bins,)`)."""
        return {d: ScoreDistribution.from_ratings(r, self.values, smoothing) for d, r in self.ratings.items()}


@dataclass
class Preference:
    """A pairwise human preference.

    Args:
        winner (`str`): "a", "b" or "tie".
        margin (`float`): weighted mean rating of a minus that of b.
        mean_a, mean_b (`float`): the weighted mean ratings over dimensions.
    """

    winner: str
    margin: float
    mean_a: float
    mean_b: float


@dataclass
class AnnotatorPanel:
    """A reproducible panel of simulated raters.

    Args:
        num_raters (`int`, *optional*, defaults to 5): raters per image.
        seed (`int`, *optional*, defaults to 0): draws the raters' persistent biases.
        bias_std (`dict[str, float]`): dimension -> std of a rater's persistent bias (in score points). Its keys
            are the dimensions rated.
        noise_std (`dict[str, float]`): dimension -> std of the noise on each single rating; same keys.
        tie_threshold (`float`, *optional*, defaults to 0.25): preferences with a smaller mean difference are ties.
        bins (`tuple[float, ...]`): the rating scale (default 1.0, 1.5, ..., 5.0).

    Raises:
        `ValueError`: for `num_raters < 1`, a negative std or tie threshold, or mismatched dimensions.
    """

    num_raters: int = 5
    seed: int = 0
    bias_std: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BIAS_STD))
    noise_std: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_NOISE_STD))
    tie_threshold: float = 0.25
    bins: tuple[float, ...] = DEFAULT_BINS

    def __post_init__(self) -> None:
        if self.num_raters < 1:
            raise ValueError(f"num_raters must be >= 1, got {self.num_raters}")
        if set(self.bias_std) != set(self.noise_std):
            raise ValueError(f"bias_std and noise_std must name the same dimensions, got {sorted(self.bias_std)} "
                             f"and {sorted(self.noise_std)}")
        if min([*self.bias_std.values(), *self.noise_std.values(), self.tie_threshold]) < 0:
            raise ValueError("bias_std, noise_std and tie_threshold must be >= 0")
        rng = np.random.default_rng(self.seed)
        # Drawn in the order of `bias_std`, so a panel is fully determined by its arguments.
        self.biases = {d: rng.normal(0.0, s, self.num_raters) for d, s in self.bias_std.items()}
        self._bins = np.asarray(self.bins, dtype=np.float64)

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(self.bias_std)

    def _snap(self, x: np.ndarray) -> list[float]:
        x = np.clip(x, self._bins[0], self._bins[-1])
        return [float(v) for v in self._bins[np.abs(x[:, None] - self._bins).argmin(-1)]]

    def rate(self, scores: Mapping[str, float], seed: int | np.random.Generator | None = None) -> Ratings:
        """Each rater's rating of every dimension, given the judge's `scores` (e.g. `Verdict.scores`).

        Args:
            scores (`Mapping[str, float]`): dimension -> ground-truth score; must hold every panel dimension.
            seed (`int`, `np.random.Generator` or `None`): the per-rating noise (a Generator is advanced).

        Raises:
            `ValueError`: if a dimension is missing from `scores`.
        """
        missing = [d for d in self.dimensions if d not in scores]
        if missing:
            raise ValueError(f"scores lack dimension(s) {missing}; the panel rates {list(self.dimensions)}")
        rng = as_generator(seed)
        return Ratings({d: self._snap(scores[d] + self.biases[d] + rng.normal(0.0, self.noise_std[d], self.num_raters))
                        for d in self.dimensions}, tuple(self.bins))

    def annotate(self, image, prompt: str, seed: int | np.random.Generator | None = None) -> Ratings:
        """Judge the image for the prompt and rate it (see [`rate`])."""
        return self.rate(judge(image, prompt).scores, seed)

    def prefer(self, a: Ratings, b: Ratings, weights: Mapping[str, float] | None = None) -> Preference:
        """Which of two rated images (for the same prompt) the panel prefers.

        Args:
            a, b ([`Ratings`]): the panel's ratings of the two images.
            weights (`Mapping[str, float]`, *optional*): dimension -> weight; equal weights by default. Weights are
                normalised to sum to 1.

        Raises:
            `ValueError`: if the weights name an unknown dimension or do not sum to a positive number.
        """
        weights = dict.fromkeys(self.dimensions, 1.0) if weights is None else dict(weights)
        unknown = set(weights) - set(self.dimensions)
        if unknown or min(weights.values(), default=0) < 0 or not sum(weights.values()) > 0:
            raise ValueError(f"weights must be >= 0 over {list(self.dimensions)} with a positive sum, got {weights}")
        total = sum(weights.values())
        mean_a, mean_b = (sum(w * r.mean()[d] for d, w in weights.items()) / total for r in (a, b))
        margin = mean_a - mean_b
        winner = "tie" if abs(margin) < self.tie_threshold else ("a" if margin > 0 else "b")
        return Preference(winner, float(margin), float(mean_a), float(mean_b))

    def compare(self, image_a, image_b, prompt: str, seed: int | np.random.Generator | None = None,
                weights: Mapping[str, float] | None = None) -> Preference:
        """Judge and rate two images for one prompt, then [`prefer`] between them."""
        rng = as_generator(seed)
        return self.prefer(self.annotate(image_a, prompt, rng), self.annotate(image_b, prompt, rng), weights)
