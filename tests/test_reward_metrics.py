"""Tests for `zr_align.reward_training.metrics` (CPU, fast): hand-computed values and edge cases."""

import math

import pytest
import torch

from zr_align.reward_training import (
    distribution_nll,
    expected_calibration_error,
    pairwise_accuracy,
    spearman,
    throughput,
)

F64 = torch.float64


def test_pairwise_accuracy_ties_dropped_vs_tie_aware():
    """pred diffs [1, -1, 0, -0.02, -1] against human [1 (a), 1 (a), 0.5 (tie), 0.5 (tie), 0 (b)].

    ties dropped: pairs 0, 1, 4 -> correct, wrong, correct = 2/3.
    tie-aware, eps = 0.05: |diff| < eps are ties -> labels [a, b, tie, tie, b] -> 4/5 correct.
    tie-aware, eps = 0: only the exactly equal pair 2 is a predicted tie -> pair 3 (b) is wrong too -> 3/5.
    """
    pred_a = [3.0, 2.0, 4.0, 3.0, 1.0]
    pred_b = [2.0, 3.0, 4.0, 3.02, 2.0]
    human = [1.0, 1.0, 0.5, 0.5, 0.0]
    assert pairwise_accuracy(pred_a, pred_b, human) == pytest.approx(2 / 3)
    assert pairwise_accuracy(pred_a, pred_b, human, tie_aware=True) == pytest.approx(0.8)
    assert pairwise_accuracy(pred_a, pred_b, human, tie_aware=True, tie_eps=0.0) == pytest.approx(0.6)
    # accepts tensors too
    assert pairwise_accuracy(torch.tensor(pred_a), torch.tensor(pred_b), torch.tensor(human)) == pytest.approx(2 / 3)


def test_pairwise_accuracy_exact_prediction_ties_and_errors():
    """An exactly tied prediction on a strict human preference counts 1/2 (random tie-breaking): a constant
    predictor scores 0.5."""
    assert pairwise_accuracy([2.0, 2.0], [2.0, 2.0], [1.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="human tie"):
        pairwise_accuracy([1.0], [2.0], [0.5])
    with pytest.raises(ValueError, match="human labels"):
        pairwise_accuracy([1.0], [2.0], [0.7])
    with pytest.raises(ValueError, match="same length"):
        pairwise_accuracy([1.0, 2.0], [2.0], [1.0])


def test_spearman_hand_computed_with_ties():
    """x = [1..5], y = [5, 6, 7, 8, 7]: ranks y = [1, 2, 3.5, 5, 3.5].

    centred ranks: x [-2, -1, 0, 1, 2], y [-2, -1, 0.5, 2, 0.5];
    rho = (4 + 1 + 0 + 2 + 1) / sqrt(10 * 9.5) = 8 / sqrt(95) = 0.820783
    """
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)  # monotone, nonlinear
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [2, 2, 2]))  # undefined for a constant input
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])


def test_spearman_ties_hand_computed_and_closed_form():
    """Ties: x = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; centred, sum(rx ry) = 4.5, sum(rx^2) = 4.5,
    sum(ry^2) = 5, so rho = 4.5 / sqrt(22.5) = 3 / sqrt(10). Without ties: 1 - 6 sum(d^2) / (n (n^2 - 1)).
    (An independent check that needs no scipy: scipy is kept out of the environment that trains.)"""
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randperm(50, generator=g).double(), torch.randperm(50, generator=g).double()
    n = 50
    closed = 1 - 6 * (x - y).square().sum().item() / (n * (n * n - 1))
    assert spearman(x, y) == pytest.approx(closed, abs=1e-12)


def test_ece_perfectly_calibrated_is_zero():
    """4 items with confidence 0.75, 3 of them correct (acc 0.75), and 2 one-hot correct items (conf 1, acc 1)."""
    probs = torch.tensor([[0.75, 0.25, 0.0]] * 4 + [[0.0, 0.0, 1.0]] * 2, dtype=F64)
    target = torch.tensor([0, 0, 0, 1, 2, 2])
    assert expected_calibration_error(probs, target) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computed_and_soft_targets():
    """2 items conf 0.85 wrong -> |0 - 0.85| * 2/4; 2 items conf 0.65 right -> |1 - 0.65| * 2/4; ECE = 0.425 + 0.175 = 0.6.

    Soft (N, K) targets use their modal bin. With one confidence bin, ECE = |mean acc - mean conf| = |0.5 - 0.75|.
    """
    probs = torch.tensor([[0.85, 0.15], [0.85, 0.15], [0.35, 0.65], [0.35, 0.65]], dtype=F64)
    target = torch.tensor([1, 1, 1, 1])
    assert expected_calibration_error(probs, target) == pytest.approx(0.6)
    soft = torch.tensor([[0.4, 0.6], [0.1, 0.9], [0.2, 0.8], [0.0, 1.0]], dtype=F64)
    assert expected_calibration_error(probs, soft) == pytest.approx(0.6)
    assert expected_calibration_error(probs, target, n_bins=1) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="target"):
        expected_calibration_error(probs, torch.tensor([0, 1]))


def test_distribution_nll_hand_computed():
    """hard: p = [0.25, 0.75] with y = 1 -> ln(4/3); p = [0.5, 0.5] with y = 0 -> ln 2; mean 0.490415.
    soft: q = [0.5, 0.5] against p = [0.25, 0.75]: 0.5 ln 4 + 0.5 ln(4/3) = KL + H(q) = 0.143841 + 0.693147.
    A zero probability on the human bin stays finite."""
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=F64)
    assert distribution_nll(probs, torch.tensor([1, 0])) == pytest.approx(0.5 * (math.log(4 / 3) + math.log(2)))
    soft = torch.tensor([[0.5, 0.5]], dtype=F64)
    assert distribution_nll(probs[:1], soft) == pytest.approx(0.5 * math.log(4 / 3) + math.log(2))
    assert math.isfinite(distribution_nll(torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([1])))


def test_throughput_counts_images_and_runs_without_grad():
    calls = []

    def fn(x):
        calls.append(torch.is_grad_enabled())
        return x * 2

    batch = torch.zeros(8, 3, 4, 4)
    ips = throughput(fn, batch, repeats=3, warmup=2)
    assert math.isfinite(ips) and ips > 0
    assert calls == [False] * 5
    assert throughput(lambda d: d["images"] * 2, {"images": batch}, repeats=1, batch_size=8) > 0
