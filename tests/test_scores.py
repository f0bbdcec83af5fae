"""Tests for `zr_align.scores` (CPU, fast)."""

import json
import math

import pytest
import torch

from zr_align.scores import DEFAULT_BINS, ScoreDistribution, kl_divergence, make_bins

F64 = torch.float64
BINS64 = torch.tensor(DEFAULT_BINS, dtype=F64)


def test_default_bins():
    assert DEFAULT_BINS == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    assert make_bins() == DEFAULT_BINS
    assert make_bins(0.0, 1.0, 5) == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_statistics_match_hand_computed():
    d = ScoreDistribution(torch.tensor([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]], dtype=F64), [0.0, 1.0, 2.0])
    # mean = 0.3 + 1.0; var = 0.2*1.3^2 + 0.3*0.3^2 + 0.5*0.7^2
    torch.testing.assert_close(d.mean, torch.tensor([1.3, 1.0], dtype=F64))
    torch.testing.assert_close(d.variance, torch.tensor([0.61, 0.0], dtype=F64))
    torch.testing.assert_close(d.std, torch.tensor([math.sqrt(0.61), 1e-6], dtype=F64))
    h = -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))
    torch.testing.assert_close(d.entropy, torch.tensor([h, 0.0], dtype=F64))

    half = torch.zeros(9, dtype=F64)
    half[:2] = 0.5
    d = ScoreDistribution(half, DEFAULT_BINS)
    assert d.values.dtype == F64 and d.num_bins == 9
    torch.testing.assert_close(d.mean, torch.tensor(1.25, dtype=F64))
    torch.testing.assert_close(d.std, torch.tensor(0.25, dtype=F64))
    torch.testing.assert_close(d.entropy, torch.tensor(math.log(2), dtype=F64))


def test_mean_gradient_matches_analytic():
    torch.manual_seed(0)
    temperature = 0.7
    logits = torch.randn(4, 9, dtype=F64, requires_grad=True)
    d = ScoreDistribution.from_logits(logits, temperature=temperature)
    (grad,) = torch.autograd.grad(d.mean.sum(), logits)
    p = torch.softmax(logits.detach() / temperature, dim=-1)
    expected = p * (BINS64 - (p * BINS64).sum(-1, keepdim=True)) / temperature
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(d.probs.sum(-1), torch.ones(4, dtype=F64))


def test_entropy_and_std_gradients_finite_at_one_hot():
    probs = torch.zeros(2, 9, dtype=F64)
    probs[0, 3] = 1.0
    probs[1, 8] = 1.0
    probs.requires_grad_(True)
    d = ScoreDistribution(probs, DEFAULT_BINS)
    (g_ent,) = torch.autograd.grad(d.entropy.sum(), probs)
    (g_std,) = torch.autograd.grad(d.std.sum(), probs)
    assert torch.isfinite(g_ent).all() and torch.isfinite(g_std).all()
    torch.testing.assert_close(d.entropy, torch.zeros(2, dtype=F64))
    # d(-p log p)/dp = -(log p + 1) = -1 at p = 1; zero entries get 0.
    assert g_ent[0, 3].item() == pytest.approx(-1.0) and g_ent[0, 0].item() == 0.0

    # Softmax underflows to exact zeros here; the entropy gradient must still be finite.
    logits = torch.tensor([[1000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=F64, requires_grad=True)
    d = ScoreDistribution.from_logits(logits)
    assert (d.probs[0, 1:] == 0).all()
    (g,) = torch.autograd.grad(d.entropy.sum() + d.std.sum(), logits)
    assert torch.isfinite(g).all()


def test_from_ratings_histogram_and_smoothing():
    d = ScoreDistribution.from_ratings(torch.tensor([[3.0, 3.0, 4.0], [1.0, 5.0, 5.0]], dtype=F64))
    expected = torch.zeros(2, 9, dtype=F64)
    expected[0, 4], expected[0, 6] = 2 / 3, 1 / 3
    expected[1, 0], expected[1, 8] = 1 / 3, 2 / 3
    torch.testing.assert_close(d.probs, expected)
    torch.testing.assert_close(d.mean, torch.tensor([10 / 3, 11 / 3], dtype=F64))

    s = ScoreDistribution.from_ratings([[3, 3, 4], [1, 5, 5]], values=BINS64, smoothing=0.1)
    torch.testing.assert_close(s.probs, 0.9 * expected + 0.1 / 9)
    torch.testing.assert_close(s.probs.sum(-1), torch.ones(2, dtype=F64))

    # Ragged rows (different annotator counts) and ratings within 1e-6 of a bin.
    r = ScoreDistribution.from_ratings([[2.5], [4.5 + 1e-7, 4.5, 1.5, 1.5]], values=BINS64)
    assert r.probs.shape == (2, 9)
    assert r.probs[0, 3].item() == 1.0
    assert r.probs[1, 7].item() == pytest.approx(0.5) and r.probs[1, 1].item() == pytest.approx(0.5)

    single = ScoreDistribution.from_ratings([3.0, 3.5], values=BINS64)
    assert single.batch_shape == () and single.mean.item() == pytest.approx(3.25)


@pytest.mark.parametrize("std", [0.1, 0.5, 1.5])
def test_from_mean_std_mean_is_exact(std):
    means = torch.tensor([1.0 + 1e-9, 1.05, 1.3, 2.0, 2.75, 3.0, 3.6, 4.5, 4.9, 4.99], dtype=F64)
    d = ScoreDistribution.from_mean_std(means, std, values=BINS64)
    assert d.probs.shape == (10, 9)
    assert (d.probs >= 0).all()
    torch.testing.assert_close(d.probs.sum(-1), torch.ones(10, dtype=F64))
    assert (d.mean - means).abs().max().item() < 1e-6


def test_from_mean_std_shape_and_limits():
    d = ScoreDistribution.from_mean_std(3.0, 0.5, values=BINS64)
    assert abs(d.mean.item() - 3.0) < 1e-9
    assert abs(d.std.item() - 0.5) < 0.05
    # Symmetric around the central bin, peak at 3.0.
    torch.testing.assert_close(d.probs, d.probs.flip(-1))
    assert d.probs.argmax().item() == 4

    # Ends give one-hots; std 0 or tiny gives the two-bin interpolation; std may be a (B,) tensor.
    ends = ScoreDistribution.from_mean_std(torch.tensor([1.0, 5.0], dtype=F64), torch.tensor([0.5, 1.0], dtype=F64))
    assert ends.probs[0, 0].item() == 1.0 and ends.probs[1, -1].item() == 1.0
    tiny = ScoreDistribution.from_mean_std(torch.tensor([3.2, 3.2], dtype=F64), torch.tensor([0.0, 1e-8], dtype=F64))
    torch.testing.assert_close(tiny.probs, ScoreDistribution.from_score(torch.tensor([3.2, 3.2], dtype=F64)).probs)

    # Small (above the fallback) std keeps the mean exact; float32 inputs give float32 output.
    small = ScoreDistribution.from_mean_std(torch.tensor([2.2, 3.0, 4.74], dtype=F64), 1e-3, values=BINS64)
    assert (small.mean - torch.tensor([2.2, 3.0, 4.74], dtype=F64)).abs().max().item() < 1e-6
    f32 = ScoreDistribution.from_mean_std(torch.tensor([2.3]), 0.4)
    assert f32.probs.dtype == torch.float32 and abs(f32.mean.item() - 2.3) < 1e-5


def test_from_score_two_bin_exact():
    d = ScoreDistribution.from_score(torch.tensor([3.2, 1.0, 5.0, 4.75], dtype=F64))
    torch.testing.assert_close(d.mean, torch.tensor([3.2, 1.0, 5.0, 4.75], dtype=F64))
    expected = torch.zeros(4, 9, dtype=F64)
    expected[0, 4], expected[0, 5] = 0.6, 0.4  # (3.5 - 3.2) / 0.5 on 3.0
    expected[1, 0] = 1.0
    expected[2, 8] = 1.0
    expected[3, 7], expected[3, 8] = 0.5, 0.5
    torch.testing.assert_close(d.probs, expected)

    y = torch.tensor([2.3, 4.1], dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(ScoreDistribution.from_score(y).mean.sum(), y)
    torch.testing.assert_close(g, torch.ones(2, dtype=F64))
    assert ScoreDistribution.from_score(2.3).mean.item() == pytest.approx(2.3)


def test_batch_shapes_and_container_helpers():
    logits = torch.randn(3, 4, 9)
    d = ScoreDistribution.from_logits(logits)
    assert d.batch_shape == (3, 4) and len(d) == 3
    assert d.mean.shape == d.std.shape == d.entropy.shape == (3, 4)
    assert d[1].probs.shape == (4, 9) and d[:, 2].probs.shape == (3, 9) and d[..., 0].probs.shape == (3, 9)
    torch.testing.assert_close(d[1, 2].mean, d.mean[1, 2])
    with pytest.raises(IndexError):
        d[0, 0, 0]  # would index the bin dim

    d64 = d.to(F64)
    assert d64.probs.dtype == d64.values.dtype == F64
    assert not d.detach().probs.requires_grad
    payload = json.loads(json.dumps(ScoreDistribution.from_score(torch.tensor([3.2, 4.0], dtype=F64)).to_dict()))
    assert payload["mean"] == pytest.approx([3.2, 4.0]) and payload["probs"][0][4] == pytest.approx(0.6)
    assert payload["std"][1] == pytest.approx(1e-6)  # clamped zero variance

    stacked = ScoreDistribution.stack([d[0], d[1]])
    assert stacked.batch_shape == (2, 4)
    torch.testing.assert_close(stacked.probs, d.probs[:2])


def test_kl_divergence():
    p = ScoreDistribution(torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=F64), [1.0, 2.0, 3.0])
    q = ScoreDistribution(torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]], dtype=F64), [1.0, 2.0, 3.0])
    torch.testing.assert_close(p.kl_to(q), torch.tensor([math.log(2), math.log(2)], dtype=F64))
    torch.testing.assert_close(kl_divergence(q, q), torch.zeros(2, dtype=F64))

    probs = p.probs.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(kl_divergence(ScoreDistribution(probs, p.values), q).sum(), probs)
    assert torch.isfinite(g).all()
    # A zero in q under positive p mass gives a large but finite KL.
    assert torch.isfinite(q.kl_to(p)).all() and (q.kl_to(p) > 100).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="strictly increasing"):
        ScoreDistribution(torch.full((2, 3), 1 / 3), [1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="must equal len\\(values\\)"):
        ScoreDistribution(torch.full((2, 4), 0.25), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-D"):
        ScoreDistribution(torch.full((2, 2), 0.5), [[1.0, 2.0]])
    with pytest.raises(ValueError, match="rating 3.2 is not one of the bins"):
        ScoreDistribution.from_ratings([[3.0, 3.2]])
    with pytest.raises(ValueError, match="NaN"):
        ScoreDistribution.from_ratings(torch.tensor([[3.0, float("nan")]]))
    with pytest.raises(ValueError, match="smoothing"):
        ScoreDistribution.from_ratings([[3.0]], smoothing=1.0)
    with pytest.raises(ValueError, match="mean 5.5 is outside the bin range"):
        ScoreDistribution.from_mean_std(torch.tensor([3.0, 5.5]), 0.5)
    with pytest.raises(ValueError, match="std must be >= 0"):
        ScoreDistribution.from_mean_std(3.0, -0.1)
    with pytest.raises(ValueError, match="score 0.5 is outside"):
        ScoreDistribution.from_score(torch.tensor([0.5]))
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ScoreDistribution.from_logits(torch.zeros(1, 9), temperature=temperature)
    with pytest.raises(ValueError, match="same bins"):
        kl_divergence(ScoreDistribution.from_score(3.0), ScoreDistribution.from_score(3.0, values=make_bins(1, 5, 5)))
