"""Losses for training score-distribution reward models: GDSO (teacher), RISD (student) and the baselines.

Every loss is a plain function on batched tensors. Each is used by an objective of `objectives.py`, and all are
on the gradient path: none calls `.item()`, `.cpu()` or numpy, log-probabilities come from `log_softmax` (never `log(softmax)`), and zero
target probabilities contribute `0 log 0 = 0` with a finite gradient. Quantities that are targets or frozen
models (old / reference log-probs, teacher distributions, advantages) are detached where the docstring says so.

Shapes: `N` items, `K` score bins, `M` images of a prompt group, `G` samples per image, `L` rationale tokens,
`R` teacher rationales per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..scores import DEFAULT_BINS

# Largest |log-ratio| fed to `exp`: exp(20) ~ 5e8 is far outside any useful PPO ratio but still finite in fp16/bf16
# reductions; beyond it the gradient is cut (clamp), which only happens for a policy that has already diverged.
_MAX_LOG_RATIO = 20.0


def _safe_log(p: torch.Tensor) -> torch.Tensor:
    # log p with zeros mapped to log(1) = 0, so `q * _safe_log(q)` is 0 at q = 0 with a finite gradient.
    return torch.where(p > 0, p, torch.ones_like(p)).log()


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    # sqrt(x) for x >= 0 that is 0 at x = 0 with a zero (not infinite) gradient.
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} shape {tuple(a.shape)} must equal {name_b} shape {tuple(b.shape)}.")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}; use e.g. 1.0.")


def _forward_kl(target_probs: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    # KL(q || p) = sum_k q_k (log q_k - log p_k) per row; (N, K) -> (N,)
    return (target_probs * (_safe_log(target_probs) - log_p)).sum(-1)


# ----- GDSO direct supervision ----------------------------------------------------------------------------------
def pointwise_kl(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pointwise distribution loss `mean_n KL(q_n || p_n)` (Z-Reward's GDSO, direct pointwise supervision, GDSO direct pointwise supervision).

    `p = softmax(logits / temperature)` is the model's score distribution and `q` the human soft label:

        L = 1/N sum_n sum_k q_nk (log q_nk - log p_nk)

    Bins with `q_nk = 0` contribute 0. The gradient w.r.t. the logits is `(p - q) / temperature` per row (/ N).

    Args:
        logits (`torch.Tensor` of shape `(N, K)`): Score-slot logits over the bin tokens.
        target_probs (`torch.Tensor` of shape `(N, K)`): Human distributions (rows sum to 1), used as constants.
        temperature (`float`, *optional*, defaults to 1.0): Softmax temperature `tau` of the score distribution.

    Returns:
        `torch.Tensor`: scalar loss in nats.
    """
    _check_same_shape("logits", logits, "target_probs", target_probs)
    _check_temperature(temperature)
    log_p = F.log_softmax(logits / temperature, dim=-1)  # (N, K)
    return _forward_kl(target_probs.to(log_p.dtype), log_p).mean()


def thurstone_fidelity(
    mean_a: torch.Tensor,
    std_a: torch.Tensor,
    mean_b: torch.Tensor,
    std_b: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Thurstone-model fidelity loss on score gaps (Z-Reward's GDSO, direct pairwise supervision, GDSO direct pairwise supervision).

    Under a Thurstone Case-V model the scores are independent Gaussians, so the probability that `a` is preferred is

        P = Phi((E_a - E_b) / sqrt(sigma_a^2 + sigma_b^2 + eps))

    and the fidelity loss (Tsai et al., 2007, "FRank"; used for IQA by UNIQUE, Zhang et al. 2021, and DeQA-Score)
    compares it with the human preference probability `y`:

        L = 1/N sum_n [1 - sqrt(P_n y_n) - sqrt((1 - P_n)(1 - y_n))]

    `L = 0` iff `P = y`, so a tie (`y = 0.5`) asks for `E_a = E_b`. Unlike a logistic loss it is bounded in [0, 1]
    and does not push `|E_a - E_b|` to infinity. The UNIQUE code adds 1e-8 inside the square roots, which shifts
    the loss by 1e-4 wherever a product is 0 (every hard label); instead a zero product here takes the value 0 with
    a zero gradient (the exact derivative of `sqrt(P * 0)`; for `y > 0` a product is only 0 where `Phi` has
    saturated and its own derivative is already 0).

    Args:
        mean_a, std_a, mean_b, std_b (`torch.Tensor` of shape `(N,)`): Expected score and std of each image.
        target (`torch.Tensor` of shape `(N,)`): Human `P(a preferred)` in [0, 1]; 1 = a better, 0 = b better,
            0.5 = tie (or a vote fraction).
        eps (`float`, *optional*, defaults to 1e-8): Added to the variance, so two one-hot (zero-std) distributions
            give a finite `z`.

    Returns:
        `torch.Tensor`: scalar loss in [0, 1].
    """
    _check_same_shape("mean_a", mean_a, "mean_b", mean_b)
    _check_same_shape("mean_a", mean_a, "target", target)
    y = target.to(mean_a.dtype)
    z = (mean_a - mean_b) / (std_a.square() + std_b.square() + eps).sqrt()  # (N,)
    p = torch.special.ndtr(z)  # standard normal CDF, accurate in the tails
    return (1.0 - _safe_sqrt(p * y) - _safe_sqrt((1.0 - p) * (1.0 - y))).mean()


# ----- GDSO policy gradient on rationales ------------------------------------------------------------------------
def distribution_reward(expected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GDSO accuracy reward from the distribution expectation (Z-Reward's GDSO, policy gradient on rationales): `R_mg = -|E_mg - y_m|`.

    The score token is never sampled: `E_mg` is read from the score distribution after rationale `g` of image `m`.

    Args:
        expected (`torch.Tensor` of shape `(M, G)`): Expected scores.
        target (`torch.Tensor` of shape `(M,)`): Mean human score of each image.

    Returns:
        `torch.Tensor` of shape `(M, G)`: rewards (<= 0). Differentiable, but used as a constant by the policy loss.
    """
    if expected.dim() != 2 or target.shape != expected.shape[:1]:
        raise ValueError(f"expected must be (M, G) and target (M,), got {tuple(expected.shape)} and "
                         f"{tuple(target.shape)}.")
    return -(expected - target.to(expected.dtype).unsqueeze(-1)).abs()


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages (GRPO, Shao et al. 2024): `A_mg = (R_mg - mean_g R_m) / (std_g R_m + eps)`.

    The std is the population std (`correction=0`), so a group of one gives `A = 0` instead of NaN; a group of
    identical rewards also gives exactly `A = 0` (no learning signal), never NaN. Returned detached: advantages are
    constants of the policy-gradient surrogate.

    Args:
        rewards (`torch.Tensor` of shape `(M, G)`): One row per group (image), `G` samples each.
        eps (`float`, *optional*, defaults to 1e-4): Added to the std (trl's default).

    Returns:
        `torch.Tensor` of shape `(M, G)`.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (M, G) with one group per row, got shape {tuple(rewards.shape)}.")
    r = rewards.detach()
    mean = r.mean(dim=1, keepdim=True)  # (M, 1)
    std = r.std(dim=1, correction=0, keepdim=True)  # (M, 1)
    return (r - mean) / (std + eps)


@dataclass
class PolicyLossOutput:
    """Result of [`clipped_policy_loss`].

    Args:
        loss (`torch.Tensor`): scalar to minimise, `policy_loss + kl_coef * kl`.
        policy_loss (`torch.Tensor`): scalar clipped surrogate term (differentiable).
        kl (`torch.Tensor`): scalar k3 estimate of `KL(pi || pi_ref)` per token (differentiable).
        clip_fraction (`torch.Tensor`): scalar share of masked tokens whose gradient the clip removed (detached).
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of `KL(pi || pi_ref)` averaged over the masked tokens (Schulman's unbiased, always
    >= 0 estimator): `k3_t = exp(lp_ref - lp) - (lp_ref - lp) - 1`. `ref_logprobs` is detached; log-ratios are
    clamped to +-20 before `exp`; masked-out positions may hold any value (even -inf)."""
    keep = mask.bool()
    ref_log_ratio = (ref_logprobs.detach() - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    k3 = ref_log_ratio.exp() - ref_log_ratio - 1.0
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return torch.where(keep, k3, zero).sum() / keep.sum().clamp_min(1).to(logprobs.dtype)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.01,
) -> PolicyLossOutput:
    """PPO/GRPO clipped surrogate on the rationale tokens with a k3 KL penalty (Z-Reward's GDSO, policy gradient on rationales).

    With the per-token ratio `rho = exp(lp - lp_old)` and the sequence advantage `A_mg` broadcast over its tokens:

        l_t  = -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A)
        k3_t = exp(lp_ref - lp) - (lp_ref - lp) - 1            (Schulman's unbiased, always >= 0 KL estimator)
        L    = sum_t mask_t (l_t + kl_coef k3_t) / sum_t mask_t

    The mean runs over all masked tokens of the batch at once (token-level mean, as in DAPO), so long rationales
    are not down-weighted as in the per-sequence mean of the original GRPO. Where the clip is active (`A > 0` and
    `rho > 1 + eps`, or `A < 0` and `rho < 1 - eps`) the surrogate is constant, so that token's policy gradient is 0.
    `old_logprobs`, `ref_logprobs` and `advantages` are detached. Masked-out positions may hold any value (even
    -inf): they are removed with `torch.where`, not multiplied by 0. Log-ratios are clamped to +-20 before `exp`.

    Args:
        logprobs (`torch.Tensor` of shape `(M, G, L)`): Token log-probs under the current policy.
        old_logprobs (`torch.Tensor` of shape `(M, G, L)`): Under the policy that sampled the rationales.
        ref_logprobs (`torch.Tensor` of shape `(M, G, L)`): Under the frozen reference (the SFT teacher).
        advantages (`torch.Tensor` of shape `(M, G)`): e.g. from [`group_advantages`].
        mask (`torch.Tensor` of shape `(M, G, L)`): True (or 1) on rationale tokens; prompt, score slot and padding
            are 0.
        clip_eps (`float`, *optional*, defaults to 0.2): PPO clip range.
        kl_coef (`float`, *optional*, defaults to 0.01): Weight of the KL to the reference ("small" in Z-Reward's GDSO).

    Returns:
        [`PolicyLossOutput`].
    """
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("mask", mask)):
        _check_same_shape("logprobs", logprobs, name, t)
    if logprobs.dim() != 3 or advantages.shape != logprobs.shape[:2]:
        raise ValueError(f"logprobs must be (M, G, L) and advantages (M, G), got {tuple(logprobs.shape)} and "
                         f"{tuple(advantages.shape)}.")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}.")
    keep = mask.bool()
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(-1)  # (M, G, 1)

    log_ratio = (logprobs - old_logprobs.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = log_ratio.exp()  # (M, G, L)
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)

    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    n_tokens = keep.sum().clamp_min(1).to(logprobs.dtype)
    policy_loss = -torch.where(keep, surrogate, zero).sum() / n_tokens
    kl = k3_kl(logprobs, ref_logprobs, mask)
    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1.0 + clip_eps)) | ((adv < 0) & (ratio < 1.0 - clip_eps))
        clip_fraction = (clipped & keep).sum().to(logprobs.dtype) / n_tokens
    return PolicyLossOutput(policy_loss + kl_coef * kl, policy_loss, kl, clip_fraction)


# ----- RISD -----------------------------------------------------------------------------------------------------
def marginalize(probs: torch.Tensor) -> torch.Tensor:
    """Teacher distribution marginalised over its reasoning (Z-Reward's RISD): `q_T(k|x) = 1/R sum_r p_T(k|x, r_r)`.

    Args:
        probs (`torch.Tensor` of shape `(N, R, K)`): Score distributions after each of `R` sampled rationales.

    Returns:
        `torch.Tensor` of shape `(N, K)`: a mixture, so it keeps the spread *between* rationales as uncertainty.
    """
    if probs.dim() != 3:
        raise ValueError(f"probs must be (N, R, K) with R rationales per item, got shape {tuple(probs.shape)}.")
    return probs.mean(dim=1)


def risd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    student_mean: Optional[torch.Tensor] = None,
    teacher_mean: Optional[torch.Tensor] = None,
    mean_weight: float = 0.0,
) -> torch.Tensor:
    """Reasoning-Internalized Score Distillation loss (Z-Reward's RISD).

        L = 1/N sum_n KL(q_T,n || p_S,n) + mean_weight * 1/N sum_n (E_S,n - E_T,n)^2,   p_S = softmax(student_logits)

    The forward KL is mode-covering: where the teacher's rationales disagree, the student must spread its mass too,
    so the uncertainty survives distillation. The teacher side (`teacher_probs`, `teacher_mean`) is detached.

    Args:
        student_logits (`torch.Tensor` of shape `(N, K)`): Logits at the student's single score slot.
        teacher_probs (`torch.Tensor` of shape `(N, K)`): `q_T`, e.g. from [`marginalize`].
        student_mean (`torch.Tensor` of shape `(N,)`, *optional*): `E_S`, needed when `mean_weight > 0`.
        teacher_mean (`torch.Tensor` of shape `(N,)`, *optional*): `E_T`, needed when `mean_weight > 0`.
        mean_weight (`float`, *optional*, defaults to 0.0): Weight of the expectation-matching term (off by default).

    Returns:
        `torch.Tensor`: scalar loss.
    """
    _check_same_shape("student_logits", student_logits, "teacher_probs", teacher_probs)
    log_p = F.log_softmax(student_logits, dim=-1)  # (N, K)
    loss = _forward_kl(teacher_probs.detach().to(log_p.dtype), log_p).mean()
    if mean_weight != 0.0:
        if student_mean is None or teacher_mean is None:
            raise ValueError("mean_weight > 0 needs both student_mean and teacher_mean.")
        loss = loss + mean_weight * (student_mean - teacher_mean.detach().to(student_mean.dtype)).square().mean()
    return loss


# ----- baselines ------------------------------------------------------------------------------------------------
def reward_dance_loss(yes_logit: torch.Tensor, no_logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """RewardDance baseline (Wu et al. 2025): the VLM answers "yes"/"no" to "does the image satisfy the rubric /
    beat the reference?"; binary cross-entropy on the softmax over those two tokens.

        P = softmax([z_yes, z_no])_0 = sigmoid(z_yes - z_no)
        L = -1/N sum_n [y_n log P_n + (1 - y_n) log(1 - P_n)]

    Args:
        yes_logit, no_logit (`torch.Tensor` of shape `(N,)`): Logits of the "yes" and "no" tokens at the answer slot.
        label (`torch.Tensor` of shape `(N,)`): Float in [0, 1] (1 = yes; soft labels allowed).
    """
    _check_same_shape("yes_logit", yes_logit, "no_logit", no_logit)
    _check_same_shape("yes_logit", yes_logit, "label", label)
    return F.binary_cross_entropy_with_logits(yes_logit - no_logit, label.to(yes_logit.dtype))


@torch.no_grad()
def sample_score_tokens(
    logits: torch.Tensor, generator: Optional[torch.Generator] = None, num_samples: int = 1, temperature: float = 1.0
) -> torch.Tensor:
    """Sample score-bin indices from `softmax(logits / temperature)`, with replacement (GRPO / OPD baselines).

    Args:
        logits (`torch.Tensor` of shape `(N, K)`): Score-slot logits.
        generator (`torch.Generator`, *optional*): On the device of `logits`, for reproducible sampling.
        num_samples (`int`, *optional*, defaults to 1): Group size `G`.
        temperature (`float`, *optional*, defaults to 1.0): Sampling temperature.

    Returns:
        `torch.LongTensor` of shape `(N, G)`. Not differentiable (a sample).
    """
    _check_temperature(temperature)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, K), float32 for multinomial's sake
    return torch.multinomial(probs, num_samples, replacement=True, generator=generator)


def score_accuracy_reward(
    sampled: torch.Tensor, target: torch.Tensor, values: Union[Sequence[float], torch.Tensor] = DEFAULT_BINS
) -> torch.Tensor:
    """GRPO-baseline accuracy reward of a sampled score token: `r = 1 - |s - y| / (s_max - s_min)`, in [0, 1].

    Args:
        sampled (`torch.LongTensor` of shape `(N, G)`): Bin indices, e.g. from [`sample_score_tokens`].
        target (`torch.Tensor` of shape `(N,)`): Mean human score of each item.
        values: Bin values (defaults to the 9 half-point bins 1.0 ... 5.0).

    Returns:
        `torch.Tensor` of shape `(N, G)`.
    """
    v = torch.as_tensor(values, dtype=target.dtype if target.is_floating_point() else torch.get_default_dtype(),
                        device=sampled.device)
    s = v[sampled]  # (N, G)
    return 1.0 - (s - target.to(v).unsqueeze(-1)).abs() / (v[-1] - v[0])


def opd_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    sampled_tokens: Optional[torch.Tensor] = None,
    exact: bool = True,
) -> torch.Tensor:
    """On-policy distillation baseline (OPD; GKD, Agarwal et al. 2024): reverse `KL(p_S || p_T)` at the score slot.

    The reverse KL is mode-seeking: the student may collapse onto one teacher mode, which RISD's forward KL avoids.

    `exact=True` (default): with only `K` bins the expectation over the student's own samples can be summed exactly,

        L = 1/N sum_n sum_k p_S,nk (log p_S,nk - log p_T,nk)

    with the exact gradient by autograd; this is the zero-variance limit of the sampled estimator.

    `exact=False`: the Monte-Carlo estimator on `G` tokens `s_ng ~ p_S` (sampled from the *student*, e.g. by
    [`sample_score_tokens`]), as in the LLM recipe where the sequence space is too large to sum over. With
    `d(s) = log p_S(s) - log p_T(s)`, `grad KL = E_s[d(s) grad log p_S(s)]` (score-function / REINFORCE form; the
    pathwise term `E_s[grad log p_S(s)]` is 0). The returned surrogate is

        L = 1/(N G) sum_{n,g} [ sg(d_ng) + sg(d_ng - b_ng) (log p_S(s_ng) - sg(log p_S(s_ng))) ]

    whose *value* is the plain Monte-Carlo KL estimate and whose *gradient* is the score-function estimate with a
    leave-one-out baseline `b_ng = mean_{g' != g} d_ng'` (unbiased, lower variance; no baseline when `G = 1`).

    Args:
        student_logits (`torch.Tensor` of shape `(N, K)`): Student score-slot logits (trained).
        teacher_logits (`torch.Tensor` of shape `(N, K)`): Teacher logits (detached).
        sampled_tokens (`torch.LongTensor` of shape `(N, G)`, *optional*): Student samples; required for `exact=False`.
        exact (`bool`, *optional*, defaults to True): Sum over the bins instead of sampling.

    Returns:
        `torch.Tensor`: scalar loss (an estimate of the reverse KL in nats).
    """
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    log_s = F.log_softmax(student_logits, dim=-1)  # (N, K)
    log_t = F.log_softmax(teacher_logits.detach().to(log_s.dtype), dim=-1)  # (N, K)
    if exact:
        return (log_s.exp() * (log_s - log_t)).sum(-1).mean()
    if sampled_tokens is None:
        raise ValueError("opd_reverse_kl(exact=False) needs sampled_tokens drawn from the student.")
    if sampled_tokens.dim() != 2 or sampled_tokens.shape[0] != student_logits.shape[0]:
        raise ValueError(f"sampled_tokens must be (N, G) with N = {student_logits.shape[0]}, "
                         f"got {tuple(sampled_tokens.shape)}.")
    lp_s = log_s.gather(-1, sampled_tokens)  # (N, G)
    d = (lp_s - log_t.gather(-1, sampled_tokens)).detach()  # (N, G)
    g = sampled_tokens.shape[1]
    baseline = (d.sum(-1, keepdim=True) - d) / (g - 1) if g > 1 else torch.zeros_like(d)  # leave-one-out
    return (d + (d - baseline) * (lp_s - lp_s.detach())).mean()
