"""Score distributions over a fixed grid of rating bins (e.g. MOS ratings 1.0, 1.5, ..., 5.0).

A reward model in this library predicts a categorical distribution over score bins rather than a scalar.
[`ScoreDistribution`] holds such batched distributions and exposes the statistics used as rewards (mean,
std, entropy, KL); everything derived from `probs` stays differentiable so it can sit inside a training loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any, Sequence, Union

import torch

Values = Union[Sequence[float], torch.Tensor]


def make_bins(low: float = 1.0, high: float = 5.0, num: int = 9) -> tuple[float, ...]:
    """Evenly spaced bin values from `low` to `high` inclusive (the default gives half-point MOS bins)."""
    if num < 2 or not high > low:
        raise ValueError(f"make_bins needs num >= 2 and high > low, got low={low}, high={high}, num={num}.")
    # Computed from the index rather than by repeated addition so that the ends are exact.
    return tuple(low + (high - low) * i / (num - 1) for i in range(num))


DEFAULT_BINS: tuple[float, ...] = make_bins()

_RATING_ATOL = 1e-6  # how far a rating may sit from a bin value and still count as that bin
_TINY_STD = 1e-6  # below this the discretised Gaussian is numerically a two-bin interpolation


def _ref_tensor(*objs: Any) -> torch.Tensor | None:
    # The first floating tensor among the inputs decides the output dtype/device.
    return next((o for o in objs if isinstance(o, torch.Tensor) and o.is_floating_point()), None)


def _as_values(values: Values, ref: torch.Tensor | None = None) -> torch.Tensor:
    # Bins follow the data's dtype/device so that downstream products never mix precisions.
    if ref is not None:
        return torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
    if isinstance(values, torch.Tensor) and values.is_floating_point():
        return values
    return torch.as_tensor(values, dtype=torch.get_default_dtype())


def _two_bin(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Put all mass of `y` on its two neighbouring bins so that the mean is exactly `y` (differentiable in `y`)."""
    k = v.shape[0]
    # `right=True` then -1 gives the left neighbour; clamping maps y == v[-1] to the last interval (weight 1 on top).
    idx = (torch.searchsorted(v, y.detach().contiguous(), right=True) - 1).clamp(0, k - 2)
    lo, hi = v[idx], v[idx + 1]
    w_hi = ((y - lo) / (hi - lo)).unsqueeze(-1)
    one_hot = lambda i: torch.nn.functional.one_hot(i, k).to(v.dtype)  # noqa: E731
    return one_hot(idx) * (1 - w_hi) + one_hot(idx + 1) * w_hi


def _safe_log(p: torch.Tensor) -> torch.Tensor:
    # log p with zeros mapped to log(1) = 0: `p * _safe_log(p)` is then 0 at p = 0 with a finite gradient.
    return torch.where(p > 0, p, torch.ones_like(p)).log()


def _check_in_range(x: torch.Tensor, v: torch.Tensor, name: str) -> None:
    # Validation only (off the gradient path): a Python bool is needed to raise.
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; pass finite values within [{v[0]:g}, {v[-1]:g}].")
    bad = (x < v[0]) | (x > v[-1])
    if bad.any():
        raise ValueError(f"{name} {x[bad][0]:g} is outside the bin range [{v[0]:g}, {v[-1]:g}]; clip it or widen the bins.")


@dataclass(eq=False)
class ScoreDistribution:
    """A batch of categorical distributions over ordered score bins.

    Args:
        probs (`torch.Tensor` of shape `(..., K)`):
            Probabilities over the bins; any number of leading batch dims (usually `(B, K)`). Not checked to be
            normalised, because that check would force a device sync on every construction.
        values (`torch.Tensor` of shape `(K,)` or sequence of floats):
            Strictly increasing bin values. Cast to the dtype/device of `probs`.

    Raises:
        `ValueError`: if `values` is not 1-D, has fewer than 2 bins, is not strictly increasing, or its length
        differs from the last dim of `probs`.
    """

    probs: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        self.values = torch.as_tensor(self.values, dtype=self.probs.dtype, device=self.probs.device)
        if self.values.dim() != 1:
            raise ValueError(f"values must be 1-D, got shape {tuple(self.values.shape)}; pass one value per bin.")
        if self.values.shape[0] < 2:
            raise ValueError("values must have at least 2 bins; a single bin carries no score information.")
        if not bool((self.values[1:] > self.values[:-1]).all()):
            raise ValueError(f"values must be strictly increasing, got {self.values.tolist()}; sort and deduplicate them.")
        if self.probs.dim() < 1 or self.probs.shape[-1] != self.values.shape[0]:
            raise ValueError(f"probs shape {tuple(self.probs.shape)}: last dim must equal len(values) = {len(self.values)}; "
                             "check the number of bins the head predicts.")

    # ----- constructors -----------------------------------------------------------------------------------------
    @classmethod
    def from_logits(cls, logits: torch.Tensor, values: Values = DEFAULT_BINS, temperature: float = 1.0) -> ScoreDistribution:
        """Softmax of `logits / temperature` over the last dim (differentiable w.r.t. `logits`).

        Raises:
            `ValueError`: if `temperature` is not > 0.
        """
        if not temperature > 0:  # also rejects NaN
            raise ValueError(f"temperature must be > 0, got {temperature}; use e.g. 1.0.")
        return cls(torch.softmax(logits / temperature, dim=-1), _as_values(values, logits))

    @classmethod
    def from_ratings(
        cls, ratings: torch.Tensor | Sequence[Sequence[float]], values: Values = DEFAULT_BINS, smoothing: float = 0.0
    ) -> ScoreDistribution:
        """Empirical distribution of annotator ratings, optionally label-smoothed.

        Args:
            ratings (`torch.Tensor` of shape `(..., R)` or a list of lists):
                Each rating must equal a bin value (within 1e-6). A list of lists may have rows of different
                lengths (different numbers of annotators per item); each row is histogrammed on its own.
            values: Bin values.
            smoothing (`float`, *optional*, defaults to 0.0):
                Returns `(1 - smoothing) * hist + smoothing / K`, i.e. that mass spread uniformly over bins.

        Raises:
            `ValueError`: for a NaN or off-bin rating, an empty row, or `smoothing` outside `[0, 1)`.
        """
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
        v = _as_values(values, _ref_tensor(ratings, values))
        if isinstance(ratings, torch.Tensor) or (len(ratings) > 0 and all(isinstance(r, Real) for r in ratings)):
            hist = cls._histogram(torch.as_tensor(ratings).to(v), v)  # a tensor, or one item's flat list
        else:  # rows may differ in length, so each is histogrammed on its own
            hist = torch.stack([cls._histogram(torch.as_tensor(r).to(v), v) for r in ratings])
        return cls((1.0 - smoothing) * hist + smoothing / v.shape[0], v)

    @staticmethod
    def _histogram(r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if r.dim() == 0 or r.shape[-1] == 0:
            raise ValueError("each item needs at least one rating; drop items without annotations.")
        if torch.isnan(r).any():
            raise ValueError("ratings contain NaN; drop missing annotations instead of encoding them as NaN.")
        dist, idx = (r.unsqueeze(-1) - v).abs().min(dim=-1)
        off = dist > _RATING_ATOL
        if off.any():
            raise ValueError(f"rating {r[off][0]:g} is not one of the bins {[round(x, 6) for x in v.tolist()]}.")
        return torch.nn.functional.one_hot(idx, v.shape[0]).to(v.dtype).mean(dim=-2)

    @classmethod
    def from_score(cls, score: torch.Tensor | float, values: Values = DEFAULT_BINS) -> ScoreDistribution:
        """Two-bin linear interpolation: mass `(s_{k+1} - y) / (s_{k+1} - s_k)` on `s_k`, the rest on `s_{k+1}`.

        The mean equals `score` exactly and the result is differentiable w.r.t. `score` (any shape, e.g. `(B,)`).

        Raises:
            `ValueError`: if a score is NaN or outside `[values[0], values[-1]]`.
        """
        v = _as_values(values, _ref_tensor(score, values))
        y = torch.as_tensor(score, dtype=v.dtype, device=v.device)
        _check_in_range(y, v, "score")
        return cls(_two_bin(y, v), v)

    @classmethod
    def from_mean_std(
        cls, mean: torch.Tensor | float, std: torch.Tensor | float, values: Values = DEFAULT_BINS, num_iters: int = 60
    ) -> ScoreDistribution:
        """Discretised Gaussian over the bins whose expected value is exactly `mean`.

        Weights are `exp(-(s_k - mu')^2 / (2 std^2))`. Truncation to the bin range pulls the expectation towards
        the centre, so the centre `mu'` is solved for instead of using `mean`: the expectation is strictly
        increasing in `mu'` (derivative `Var / std^2`), so a bracketed Newton iteration (bisection whenever a step
        leaves the bracket) converges, vectorised over the batch. Where float64 cannot resolve `mu'` finely enough, a
        final mix of a sliver of mass into an end bin removes the residual (< 1e-5 mass, and only above 1e-9 when
        std < ~1e-4). The solve runs in float64
        without autograd, so the result is not differentiable w.r.t. `mean`/`std`.

        Args:
            mean (`torch.Tensor` or `float`): Target means, within `[values[0], values[-1]]`. A mean at an end bin
                gives a one-hot on that bin.
            std (`torch.Tensor` or `float`): Gaussian widths (broadcast against `mean`). `std < 1e-6` (incl. 0)
                falls back to the two-bin interpolation of [`~ScoreDistribution.from_score`].
            values: Bin values.
            num_iters (`int`, *optional*, defaults to 60): Fixed iteration count (no data-dependent early exit, which
                would need a host sync per step).

        Raises:
            `ValueError`: if a mean is NaN or out of range, or a std is NaN or negative.
        """
        v_out = _as_values(values, _ref_tensor(mean, std, values))
        v = v_out.double()
        t, sig = torch.broadcast_tensors(*(torch.as_tensor(x, dtype=v.dtype, device=v.device).detach() for x in (mean, std)))
        _check_in_range(t, v, "mean")
        if torch.isnan(sig).any() or (sig < 0).any():
            raise ValueError("std must be >= 0 and not NaN (0 gives the two-bin interpolation).")
        fallback = (sig < _TINY_STD) | (t <= v[0]) | (t >= v[-1])
        sig = torch.where(fallback, torch.ones_like(sig), sig)  # dummy width keeps the solve finite on fallback rows
        var_scale = sig.square()

        # Solve for the offset d = mu' - c from the midpoint c of the interval holding the mean, with log-weights
        # u (2d - u) / (2 std^2), u = s - c (equal to -(s - mu')^2 / (2 std^2) up to a constant): for small std d
        # stays small and keeps full relative precision, for large std no huge squares cancel.
        k = (torch.searchsorted(v, t.contiguous(), right=True) - 1).clamp(0, v.shape[0] - 2)
        width = v[k + 1] - v[k]
        c = 0.5 * (v[k] + v[k + 1])
        u = v - c.unsqueeze(-1)

        def probs_at(d: torch.Tensor) -> torch.Tensor:
            return torch.softmax(u * (2 * d.unsqueeze(-1) - u) / (2 * var_scale.unsqueeze(-1)), dim=-1)

        # Start from the exact small-std answer (only the two neighbours carry mass, their log-ratio is
        # width * d / std^2), kept between the two neighbours so an interior bin mean starts at that bin.
        w = (t - v[k]) / width
        d = (var_scale / width * torch.logit(w)).clamp(-0.5 * width, 0.5 * width)
        # At this distance beyond the ends, adjacent-bin weight ratios are < e^-80, so E(lo) ~ v[0] and E(hi) ~ v[-1].
        span = (v[-1] - v[0]) + 80 * var_scale / (v[1:] - v[:-1]).min()
        lo, hi = v[0] - span - c, v[-1] + span - c
        for _ in range(num_iters):
            p = probs_at(d)
            e = (p * v).sum(-1)
            var = (p * (v - e.unsqueeze(-1)).square()).sum(-1)
            lo, hi = torch.where(e < t, d, lo), torch.where(e > t, d, hi)
            # Newton on logit((E - s_0) / (s_K - s_0)) rather than on E: far from the answer E saturates like a
            # sigmoid and plain Newton overshoots, while its logit is asymptotically linear in d. dE/dd = Var/std^2.
            a, b = e - v[0], v[-1] - e
            g = a.log() - b.log() - ((t - v[0]).log() - (v[-1] - t).log())
            newton = d - g * a * b * var_scale / ((a + b) * var).clamp_min(1e-300)
            d = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        p = probs_at(d)
        # Exactness guarantee: when float64 cannot resolve mu' finely enough (very small std), mix in a sliver of
        # the end bin on the side of the residual; this fixes the mean exactly and moves ~|residual| probability.
        e = (p * v).sum(-1)
        gap = torch.where(t > e, v[-1], v[0]) - e
        lam = ((t - e) / torch.where(gap == 0, torch.ones_like(gap), gap)).clamp(0, 1).unsqueeze(-1)
        end_hot = torch.nn.functional.one_hot((t > e).long() * (v.shape[0] - 1), v.shape[0]).to(v.dtype)
        p = (1 - lam) * p + lam * end_hot
        p = torch.where(fallback.unsqueeze(-1), _two_bin(t, v), p)
        return cls(p.to(v_out.dtype), v_out)

    @classmethod
    def stack(cls, dists: Sequence[ScoreDistribution], dim: int = 0) -> ScoreDistribution:
        """Stack distributions over the same bins along a new leading dim."""
        if not dists or any(not torch.equal(d.values, dists[0].values) for d in dists):
            raise ValueError("stack needs a non-empty list of distributions over identical bins.")
        return cls(torch.stack([d.probs for d in dists], dim=dim), dists[0].values)

    # ----- statistics (differentiable w.r.t. probs) -------------------------------------------------------------
    @property
    def num_bins(self) -> int:
        return self.values.shape[0]

    @property
    def batch_shape(self) -> torch.Size:
        return self.probs.shape[:-1]

    @property
    def mean(self) -> torch.Tensor:
        """Expected score `sum_k s_k p_k`, shape `batch_shape`."""
        return (self.probs * self.values).sum(-1)

    @property
    def variance(self) -> torch.Tensor:
        """`sum_k p_k (s_k - mean)^2`; the centred form cannot go negative, unlike `E[s^2] - mean^2`."""
        return (self.probs * (self.values - self.mean.unsqueeze(-1)).square()).sum(-1)

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation; the clamp keeps the gradient finite at zero variance (one-hot distributions)."""
        return self.variance.clamp_min(1e-12).sqrt()

    @property
    def entropy(self) -> torch.Tensor:
        """Shannon entropy in nats, with `0 log 0 = 0`.

        `torch.special.xlogy(p, p)` has a NaN gradient at `p = 0` (`p / p`), so zero entries take `log(1)`
        instead, which gives them a zero (finite) gradient.
        """
        return -(self.probs * _safe_log(self.probs)).sum(-1)

    def kl_to(self, other: ScoreDistribution) -> torch.Tensor:
        """`KL(self || other)` per leading index; see [`kl_divergence`]."""
        return kl_divergence(self, other)

    # ----- container helpers -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.probs.dim() < 2:
            raise TypeError("len() of an unbatched ScoreDistribution (probs is 1-D).")
        return self.probs.shape[0]

    def __getitem__(self, idx: Any) -> ScoreDistribution:
        """Index the leading (batch) dims only; the bin dim is always kept whole."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        # A trailing full slice means an index that reaches the bin dim raises "too many indices" instead.
        return ScoreDistribution(self.probs[idx + (slice(None),)], self.values)

    def to(self, *args: Any, **kwargs: Any) -> ScoreDistribution:
        """Like `torch.Tensor.to`; `values` follows the new dtype/device of `probs`."""
        probs = self.probs.to(*args, **kwargs)
        return ScoreDistribution(probs, self.values.to(device=probs.device, dtype=probs.dtype))

    def detach(self) -> ScoreDistribution:
        return ScoreDistribution(self.probs.detach(), self.values.detach())

    def to_dict(self) -> dict[str, list]:
        """JSON-ready lists of `values`, `mean`, `std`, `probs`.

        Uses `.tolist()` (host sync, no gradient); meant for logging, never for the loss.
        """
        d = self.detach().to("cpu")
        return {"values": d.values.tolist(), "mean": d.mean.tolist(), "std": d.std.tolist(), "probs": d.probs.tolist()}


def kl_divergence(p: ScoreDistribution, q: ScoreDistribution) -> torch.Tensor:
    """`KL(p || q) = sum_k p_k (log p_k - log q_k)` per (broadcast) leading index, in nats.

    Zero entries of `p` contribute 0 with a finite gradient; `q` is clamped to the smallest normal float so a
    zero `q_k` under positive `p_k` gives a large finite value instead of `inf`.

    Raises:
        `ValueError`: if the two distributions use different bins.
    """
    if p.values.shape != q.values.shape or not torch.allclose(p.values, q.values.to(p.values)):
        raise ValueError("kl_divergence needs both distributions over the same bins; rebin one of them first.")
    log_q = q.probs.clamp_min(torch.finfo(q.probs.dtype).tiny).log()
    return (p.probs * (_safe_log(p.probs) - log_q)).sum(-1)
