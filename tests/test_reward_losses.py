"""Tests for `zr_align.reward_training.losses` (CPU, fast): hand-computed values, gradients, edge cases."""

import math

import pytest
import torch

from zr_align.reward_training import (
    clipped_policy_loss,
    distribution_reward,
    group_advantages,
    marginalize,
    opd_reverse_kl,
    pointwise_kl,
    reward_dance_loss,
    risd_loss,
    sample_score_tokens,
    score_accuracy_reward,
    thurstone_fidelity,
)

F64 = torch.float64


def t(x, **kw):
    return torch.tensor(x, dtype=F64, **kw)


def close(a, b, **kw):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), **kw)


# ----- pointwise KL ----------------------------------------------------------------------------------------------
def test_pointwise_kl_hand_computed_and_gradient():
    """L = 1/N sum_n sum_k q_nk log(q_nk / p_nk), dL/dlogits = (p - q) / N.

    row 0: q = [0.5, 0.5], p = [0.25, 0.75]: 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3) = 0.143841
    row 1: q = [1, 0],     p = [0.5, 0.5]:   ln 2 = 0.693147 (the q = 0 bin adds 0)
    mean = 0.418494
    """
    logits = t([[0.0, math.log(3.0)], [0.0, 0.0]], requires_grad=True)
    q = t([[0.5, 0.5], [1.0, 0.0]])
    loss = pointwise_kl(logits, q)
    close(loss, 0.5 * (0.5 * math.log(4 / 3) + math.log(2)))
    loss.backward()
    # (p - q) / 2: row 0 [0.25 - 0.5, 0.75 - 0.5] / 2, row 1 [0.5 - 1, 0.5 - 0] / 2
    close(logits.grad, [[-0.125, 0.125], [-0.25, 0.25]])
    assert torch.isfinite(logits.grad).all()


def test_pointwise_kl_temperature_and_zero_at_match():
    """softmax([0, 2 ln 3] / 2) = softmax([0, ln 3]) = [0.25, 0.75], so KL([0.5, 0.5] || .) = 0.5 ln(4/3)."""
    close(pointwise_kl(t([[0.0, 2 * math.log(3.0)]]), t([[0.5, 0.5]]), temperature=2.0), 0.5 * math.log(4 / 3))
    q = t([[0.1, 0.2, 0.7]])
    close(pointwise_kl(q.log(), q), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        pointwise_kl(q, q, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        pointwise_kl(q, q[:, :2])


# ----- pairwise supervision --------------------------------------------------------------------------------------
def test_thurstone_fidelity_hand_computed():
    """P = Phi((E_a - E_b) / sqrt(s_a^2 + s_b^2)); L = 1 - sqrt(P y) - sqrt((1 - P)(1 - y)).

    E_a - E_b = 1, s_a^2 = s_b^2 = 0.5 -> z = 1, P = Phi(1) = 0.841345
      y = 1:   1 - sqrt(0.841345)                          = 0.082752
      y = 0:   1 - sqrt(0.158655)                          = 0.601684
      y = 0.5: 1 - sqrt(0.420672) - sqrt(0.079328)         = 0.069756
    E_a = E_b, y = 0.5: P = 0.5, L = 1 - 2 sqrt(0.25)     = 0
    (the 1e-8 added to the variance moves z by 5e-9, hence atol 1e-7)
    """
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    s = math.sqrt(0.5)
    ones = torch.ones(4, dtype=F64)
    mean_a = t([3.0, 3.0, 3.0, 2.0])
    mean_b = t([2.0, 2.0, 2.0, 2.0])
    y = t([1.0, 0.0, 0.5, 0.5])
    per_pair = [1 - math.sqrt(phi1), 1 - math.sqrt(1 - phi1),
                1 - math.sqrt(phi1 / 2) - math.sqrt((1 - phi1) / 2), 0.0]
    for i, expected in enumerate(per_pair):
        got = thurstone_fidelity(mean_a[i:i + 1], s * ones[:1], mean_b[i:i + 1], s * ones[:1], y[i:i + 1])
        close(got, expected, atol=1e-7, rtol=0)
    close(thurstone_fidelity(mean_a, s * ones, mean_b, s * ones, y), sum(per_pair) / 4, atol=1e-7, rtol=0)


def test_thurstone_fidelity_gradient_direction_and_saturation():
    """a preferred (y = 1): dL/dE_a < 0 < dL/dE_b; larger variance makes P less sure, so for a correctly ordered pair
    the loss rises with sigma (dL/dsigma > 0). Zero stds (one-hot distributions) and far-apart means stay finite."""
    mean_a, mean_b = t([3.0], requires_grad=True), t([2.5], requires_grad=True)
    std_a, std_b = t([0.4], requires_grad=True), t([0.3], requires_grad=True)
    thurstone_fidelity(mean_a, std_a, mean_b, std_b, t([1.0])).backward()
    assert mean_a.grad < 0 < mean_b.grad
    assert std_a.grad > 0 and std_b.grad > 0

    mean_a = t([5.0, 1.0, 3.0], requires_grad=True)
    zero = torch.zeros(3, dtype=F64, requires_grad=True)
    loss = thurstone_fidelity(mean_a, zero, t([1.0, 5.0, 3.0]), zero, t([1.0, 1.0, 0.5]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(mean_a.grad).all() and torch.isfinite(zero.grad).all()
    # pair 0 confidently right (0), pair 1 confidently wrong: P = 0 against y = 1 -> 1, pair 2 a tie at P = 0.5 (0)
    close(loss, (0.0 + 1.0 + 0.0) / 3)


def test_distribution_reward_and_group_advantages():
    """R = -|E - y|: E = [[3, 4.5]], y = [4] -> [[-1, -0.5]].

    A = (R - mean) / (std + 1e-4) with the population std: [1, 2, 3] -> mean 2, std sqrt(2/3) = 0.816497,
    A = [-1, 0, 1] / 0.816597. An identical group has std 0 -> A = 0 exactly (not NaN).
    """
    close(distribution_reward(t([[3.0, 4.5]]), t([4.0])), [[-1.0, -0.5]])
    adv = group_advantages(t([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]]))
    d = math.sqrt(2 / 3) + 1e-4
    close(adv, [[-1 / d, 0.0, 1 / d], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(group_advantages(t([[7.0]])), [[0.0]])  # a group of one: no signal, no NaN
    assert not group_advantages(t([[1.0, 2.0]], requires_grad=True)).requires_grad
    with pytest.raises(ValueError, match=r"\(M,\)"):
        distribution_reward(t([[3.0, 4.0]]), t([4.0, 2.0]))


def _policy_inputs():
    # M = 1 image, G = 2 rationales, L = 3 tokens; ratios rho = [1, 1.5, 0.5] in both rows.
    old = torch.full((1, 2, 3), math.log(0.5), dtype=F64)
    ratio = t([[[1.0, 1.5, 0.5], [1.0, 1.5, 0.5]]])
    lp = (old + ratio.log()).requires_grad_(True)
    adv = t([[1.0, -1.0]])
    mask = torch.tensor([[[1, 1, 1], [1, 1, 0]]])  # the last token of rationale 1 is padding
    return lp, old, adv, mask


def test_clipped_policy_loss_hand_computed():
    """l_t = -min(rho A, clip(rho, 0.8, 1.2) A), token mean over the 5 masked tokens.

    A = +1: rho = 1 -> 1; rho = 1.5 -> min(1.5, 1.2) = 1.2 (clipped); rho = 0.5 -> min(0.5, 0.8) = 0.5
    A = -1: rho = 1 -> -1; rho = 1.5 -> min(-1.5, -1.2) = -1.5;       rho = 0.5 -> masked out
    policy_loss = -(1 + 1.2 + 0.5 - 1 - 1.5) / 5 = -0.04; clip fraction = 1 / 5.
    With ref = old: k3 = exp(-ln rho) + ln rho - 1 = [0, 2/3 + ln 1.5 - 1, 2 - ln 2 - 1] = [0, 0.072132, 0.306853]
    kl = (0 + 0.072132 + 0.306853 + 0 + 0.072132) / 5 = 0.090223; loss = policy_loss + 0.01 kl.
    dl/dlp = -A rho / 5 where not clipped, 0 where clipped or masked:
      A = +1: [-0.2, 0, -0.1]; A = -1: [0.2, 0.3, 0]
    """
    lp, old, adv, mask = _policy_inputs()
    out = clipped_policy_loss(lp, old, old, adv, mask, clip_eps=0.2, kl_coef=0.01)
    k3_15 = 2 / 3 + math.log(1.5) - 1
    k3_05 = 2 - math.log(2) - 1
    kl = (2 * k3_15 + k3_05) / 5
    close(out.policy_loss, -0.04)
    close(out.kl, kl)
    close(out.loss, -0.04 + 0.01 * kl)
    close(out.clip_fraction, 0.2)
    assert not out.clip_fraction.requires_grad

    out = clipped_policy_loss(lp, old, old, adv, mask, clip_eps=0.2, kl_coef=0.0)
    out.loss.backward()
    # the clipped token (A > 0, rho = 1.5 > 1 + eps) gets exactly zero gradient
    close(lp.grad, [[[-0.2, 0.0, -0.1], [0.2, 0.3, 0.0]]])


def test_clipped_policy_loss_kl_term_and_masked_garbage():
    """k3 >= 0 and = 0 when lp = ref; its gradient pulls lp towards ref: d k3 / d lp = 1 - exp(ref - lp).

    Masked positions holding -inf must not leak NaN into the loss or the gradient.
    """
    lp, old, adv, mask = _policy_inputs()
    out = clipped_policy_loss(lp, lp.detach(), lp.detach(), adv, mask, kl_coef=1.0)
    close(out.kl, 0.0)
    ref = lp.detach() + 0.3  # reference more likely than the policy -> raising lp lowers the KL
    out = clipped_policy_loss(lp, lp.detach(), ref, torch.zeros_like(adv), mask, kl_coef=1.0)
    assert out.kl > 0
    out.loss.backward()
    assert (lp.grad[mask.bool()] < 0).all() and (lp.grad[~mask.bool()] == 0).all()

    garbage = lp.detach().clone()
    garbage[~mask.bool()] = -math.inf
    garbage.requires_grad_(True)
    out = clipped_policy_loss(garbage, old, old, adv, mask)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(garbage.grad).all()


def test_clipped_policy_loss_on_policy_equals_reinforce():
    """First step of GRPO (old = lp): rho = 1, nothing clipped, grad = -A / (#tokens) per masked token."""
    lp, _, adv, mask = _policy_inputs()
    out = clipped_policy_loss(lp, lp.detach(), lp.detach(), adv, mask)
    out.loss.backward()
    close(out.clip_fraction, 0.0)
    close(lp.grad, [[[-0.2, -0.2, -0.2], [0.2, 0.2, 0.0]]])


# ----- RISD ------------------------------------------------------------------------------------------------------
def test_marginalize_and_risd_loss_hand_computed():
    """q_T = mean_r p_T(.|r): [1, 0, 0] and [0, 0.5, 0.5] -> [0.5, 0.25, 0.25].

    KL(q_T || uniform) = 0.5 ln 1.5 + 2 * 0.25 ln 0.75 = 0.202733 - 0.143841 = 0.058892
    + mean_weight (E_S - E_T)^2 = 2 * (3 - 2.5)^2 = 0.5
    """
    q = marginalize(t([[[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]]))
    close(q, [[0.5, 0.25, 0.25]])
    kl = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    logits = torch.zeros(1, 3, dtype=F64)
    close(risd_loss(logits, q), kl)
    close(risd_loss(logits, q, t([3.0]), t([2.5]), mean_weight=2.0), kl + 0.5)
    with pytest.raises(ValueError, match="student_mean"):
        risd_loss(logits, q, mean_weight=1.0)
    with pytest.raises(ValueError, match=r"\(N, R, K\)"):
        marginalize(q)


def test_risd_descent_moves_student_towards_teacher():
    """Gradient descent on the forward KL drives p_S to q_T, including a zero-probability teacher bin; the teacher
    target receives no gradient."""
    teacher = t([[0.0, 0.1, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25]], requires_grad=True)
    logits = torch.zeros(2, 4, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=2.0)
    dist0 = (logits.softmax(-1) - teacher).abs().sum().item()
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = risd_loss(logits, teacher)
        loss.backward()
        assert torch.isfinite(logits.grad).all()
        losses.append(loss.item())
        opt.step()
    assert teacher.grad is None
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))  # monotone for this convex problem
    dist = (logits.softmax(-1) - teacher).abs().sum().item()
    assert dist < 0.05 * dist0
    assert logits.softmax(-1)[0, 0] < 0.02  # mass leaves the bin the teacher rules out


# ----- baselines -------------------------------------------------------------------------------------------------
def test_reward_dance_hand_computed():
    """P(yes) = softmax([ln 3, 0])_0 = 0.75; BCE: label 1 -> ln(4/3), label 0 -> ln 4."""
    yes, no = t([math.log(3.0), math.log(3.0)]), t([0.0, 0.0])
    close(reward_dance_loss(yes, no, t([1.0, 0.0])), 0.5 * (math.log(4 / 3) + math.log(4)))
    # equals 2-way cross-entropy over the two token logits
    ref = torch.nn.functional.cross_entropy(torch.stack([yes, no], -1), torch.tensor([0, 1]))
    close(reward_dance_loss(yes, no, t([1.0, 0.0])), ref)


def test_sample_score_tokens_and_accuracy_reward():
    """Samples follow softmax(logits), never hit a -inf bin, and are reproducible with a seeded generator.

    Reward 1 - |s - y| / 4 on bins 1..5: samples at bins [0, 8, 4] = scores [1, 5, 3], y = 3 -> [0.5, 0.5, 1].
    """
    logits = t([[0.0, math.log(3.0), -math.inf]])
    s1 = sample_score_tokens(logits, torch.Generator().manual_seed(0), num_samples=4000)
    s2 = sample_score_tokens(logits, torch.Generator().manual_seed(0), num_samples=4000)
    assert s1.shape == (1, 4000) and s1.dtype == torch.long and torch.equal(s1, s2)
    assert (s1 != 2).all()
    assert abs((s1 == 1).double().mean().item() - 0.75) < 0.03
    close(score_accuracy_reward(torch.tensor([[0, 8, 4]]), t([3.0])), [[0.5, 0.5, 1.0]])


def test_opd_reverse_kl_exact_hand_computed():
    """KL(p_S || p_T) = sum_k p_S (log p_S - log p_T); p_S = [0.25, 0.75], p_T = [0.5, 0.5]:
    0.25 ln 0.5 + 0.75 ln 1.5 = 0.130812 (the forward KL(p_T || p_S) would be 0.143841: the direction matters).
    """
    student = t([[0.25, 0.75]]).log()
    teacher = t([[0.5, 0.5]]).log()
    close(opd_reverse_kl(student, teacher), 0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    close(risd_loss(student, teacher.exp()), 0.5 * math.log(4 / 3))
    with pytest.raises(ValueError, match="sampled_tokens"):
        opd_reverse_kl(student, teacher, exact=False)


def test_opd_sampled_estimator_value_and_unbiased_gradient():
    """Value on samples [0, 1, 1]: mean of d = log p_S - log p_T = [ln 0.5, ln 1.5, ln 1.5] -> 0.039261.

    The score-function gradient with the leave-one-out baseline is unbiased: on many student samples it matches the
    exact reverse-KL gradient. The teacher gets no gradient.
    """
    student = t([[0.25, 0.75]]).log()
    teacher = t([[0.5, 0.5]]).log()
    value = opd_reverse_kl(student, teacher, torch.tensor([[0, 1, 1]]), exact=False)
    close(value, (math.log(0.5) + 2 * math.log(1.5)) / 3)

    torch.manual_seed(0)
    s_logits = torch.randn(3, 5, dtype=F64, requires_grad=True)
    t_logits = torch.randn(3, 5, dtype=F64, requires_grad=True)
    opd_reverse_kl(s_logits, t_logits).backward()
    exact_grad = s_logits.grad.clone()
    s_logits.grad = None
    samples = sample_score_tokens(s_logits, torch.Generator().manual_seed(1), num_samples=200_000)
    opd_reverse_kl(s_logits, t_logits, samples, exact=False).backward()
    close(s_logits.grad, exact_grad, atol=0.01, rtol=0)
    assert t_logits.grad is None
