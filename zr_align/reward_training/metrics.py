"""Reward-model evaluation metrics (Z-Reward's RISD): pairwise accuracy, Spearman, calibration, NLL and throughput.

These are evaluation code, off the gradient path: they detach their inputs and return Python floats.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence, Union

import torch

ArrayLike = Union[torch.Tensor, Sequence[float]]


def _as_1d(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}.")
    return t


def pairwise_accuracy(
    pred_a: ArrayLike, pred_b: ArrayLike, human: ArrayLike, tie_aware: bool = False, tie_eps: float = 0.05
) -> float:
    """Agreement of predicted scores with human pairwise preferences.

    Default (`tie_aware=False`), the headline metric of Z-Reward's evaluation: pairs the humans rated a tie are dropped; a pair
    counts 1 if the prediction orders it as the humans did, and 1/2 if the two predictions are exactly equal (the
    expected accuracy of breaking that tie at random, so a constant predictor scores 0.5 rather than 0 or 1).

    `tie_aware=True`: all pairs are kept and the prediction is a 3-way label: a tie when `|pred_a - pred_b| < tie_eps`
    (or the two are exactly equal, which no order can describe), otherwise the order of the two scores. A pair
    counts 1 when that label equals the human's (a predicted tie on a human tie is correct). `tie_eps` is a fixed argument, set before looking at the data (default 0.05, i.e.
    a tenth of a half-point bin on the 1-5 scale). Tie calibration in the style of Deutsch et al. (2023) picks the
    eps that maximises accuracy on the evaluated set; that tunes on the test set, so it is deliberately not done
    here — calibrate on a validation split if at all and pass the value in.

    Args:
        pred_a, pred_b (`torch.Tensor` or sequence of shape `(N,)`): Predicted scores (e.g. expected scores).
        human (`torch.Tensor` or sequence of shape `(N,)`): 1 = a better, 0 = b better, 0.5 = tie.
        tie_aware (`bool`, *optional*, defaults to False): Use the 3-way variant above.
        tie_eps (`float`, *optional*, defaults to 0.05): Prediction tie threshold, in score units.

    Returns:
        `float`: accuracy in [0, 1].

    Raises:
        `ValueError`: on shape mismatch, a human label outside {0, 0.5, 1}, a negative `tie_eps`, or no pair to score.
    """
    a, b, h = _as_1d(pred_a, "pred_a"), _as_1d(pred_b, "pred_b"), _as_1d(human, "human")
    if not a.shape == b.shape == h.shape:
        raise ValueError(f"pred_a, pred_b and human must have the same length, got {len(a)}, {len(b)}, {len(h)}.")
    if not ((h == 0) | (h == 0.5) | (h == 1)).all():
        raise ValueError("human labels must be 1 (a better), 0 (b better) or 0.5 (tie).")
    if not tie_eps >= 0:
        raise ValueError(f"tie_eps must be >= 0, got {tie_eps}.")
    diff = a - b
    if tie_aware:
        if len(h) == 0:
            raise ValueError("pairwise_accuracy needs at least one pair.")
        is_tie = (diff.abs() < tie_eps) | (diff == 0)
        pred = torch.where(is_tie, 0.5, (diff > 0).double())  # 3-way label, same coding as human
        return (pred == h).double().mean().item()
    keep = h != 0.5
    if not keep.any():
        raise ValueError("pairwise_accuracy: every pair is a human tie; use tie_aware=True to score them.")
    diff, h = diff[keep], h[keep]
    score = torch.where(diff == 0, 0.5, ((diff > 0) == (h == 1)).double())
    return score.mean().item()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    # 1-based ranks, tied values sharing the mean of the ranks they span (e.g. [10, 20, 20] -> [1, 2.5, 2.5]).
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    end = counts.cumsum(0).double()  # last rank of each group of equal values
    return (end - (counts.double() - 1) / 2)[inverse]


def spearman(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties get the mean rank, like scipy).

    Returns `nan` when either input is constant (the correlation is undefined), as scipy does.

    Raises:
        `ValueError`: if the inputs differ in length, have fewer than 2 items, or contain NaN.
    """
    x, y = _as_1d(pred, "pred"), _as_1d(target, "target")
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"spearman needs two 1-D inputs of the same length >= 2, got {len(x)} and {len(y)}.")
    if torch.isnan(x).any() or torch.isnan(y).any():
        raise ValueError("spearman inputs contain NaN; drop those items first.")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    if denom == 0:
        return float("nan")
    return ((rx * ry).sum() / denom).item()


def _target_bins(target: torch.Tensor, n: int, k: int) -> torch.Tensor:
    # Long (N,) bin indices, or soft (N, K) human distributions reduced to their modal bin (first on ties).
    if target.dim() == 2 and target.shape == (n, k) and target.is_floating_point():
        return target.argmax(-1)
    if target.dim() == 1 and target.shape[0] == n and not target.is_floating_point():
        if (target < 0).any() or (target >= k).any():
            raise ValueError(f"target bins must lie in [0, {k - 1}].")
        return target.long()
    raise ValueError(f"target must be long bins of shape ({n},) or soft probabilities of shape ({n}, {k}), "
                     f"got {target.dtype} {tuple(target.shape)}.")


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 10) -> float:
    """Expected calibration error of the predicted score distribution (Guo et al. 2017), in [0, 1].

    Confidence is `max_k p_k`, a prediction is correct when `argmax_k p_k` equals the human modal bin. Confidences
    fall into `n_bins` equal-width intervals `(i/B, (i+1)/B]` (a confidence of exactly 0 joins the first), and

        ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|

    Args:
        probs (`torch.Tensor` of shape `(N, K)`): Predicted distributions.
        target (`torch.LongTensor` of shape `(N,)` or `torch.Tensor` of shape `(N, K)`): Human bin index, or the
            human distribution (its modal bin is used; the first on ties).
        n_bins (`int`, *optional*, defaults to 10): Number of confidence intervals.
    """
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be (N, K) with N >= 1, got shape {tuple(probs.shape)}.")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    p = probs.detach().to("cpu", torch.float64)
    y = _target_bins(target.detach().cpu(), *p.shape)
    conf, pred = p.max(-1)
    correct = (pred == y).double()
    # ceil(conf * B) - 1 maps (i/B, (i+1)/B] to i.
    idx = ((conf * n_bins).ceil().long() - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(conf))
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    # sum_b |B_b|/N |acc_b - conf_b| = 1/N sum_b |sum_{i in b} (correct_i - conf_i)|
    return ((acc_sum - conf_sum).abs().sum() / count.sum()).item()


def distribution_nll(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Mean negative log-likelihood of the human labels under the predicted distribution, in nats.

    Long bins `(N,)`: `-1/N sum_n log p_n[y_n]`. Soft labels `(N, K)`: the cross-entropy `-1/N sum_n sum_k q_nk log
    p_nk` (equal to `KL(q || p) + H(q)`). Probabilities are clamped to the smallest normal float, so a zero
    probability on a human bin gives a large finite value instead of `inf`.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, K), got shape {tuple(probs.shape)}.")
    p = probs.detach().to("cpu", torch.float64)
    log_p = p.clamp_min(torch.finfo(p.dtype).tiny).log()
    t = target.detach().cpu()
    if t.is_floating_point() and t.shape == p.shape:
        q = t.double()
        return -(q * log_p).sum(-1).mean().item()
    y = _target_bins(t, *p.shape)
    return -log_p.gather(-1, y.unsqueeze(-1)).mean().item()


def throughput(
    fn: Callable[[Any], Any], batch: Any, repeats: int = 10, warmup: int = 1, batch_size: Optional[int] = None
) -> float:
    """Images per second of `fn(batch)`, timed over `repeats` calls after `warmup` untimed ones.

    Runs under `torch.no_grad()` (scoring, not training) and synchronises CUDA around the timed region, since
    kernels run asynchronously. The batch size is `batch_size`, else `len(batch)` (a tensor's first dim).

    Args:
        fn: The scorer, e.g. `lambda x: reward(x, prompts)`.
        batch: Its input.
        repeats (`int`, *optional*, defaults to 10): Timed calls.
        warmup (`int`, *optional*, defaults to 1): Untimed calls first (allocator, kernel selection, caches).
        batch_size (`int`, *optional*): Images per call when `len(batch)` is not it.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"throughput needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}.")
    n = batch_size if batch_size is not None else len(batch)

    def sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(warmup):
            fn(batch)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(batch)
        sync()
        elapsed = time.perf_counter() - start
    return n * repeats / max(elapsed, 1e-12)
