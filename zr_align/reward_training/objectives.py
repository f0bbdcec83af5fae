"""One training objective per method (`METHODS` in config.py): teacher SFT, GDSO, GRPO, RewardDance, student
SFT, RISD, OPD. Each is a small class: built once with the models it needs, then `loss(batch, generator)`
returns `(loss, metrics)` for a batch of rated images (`zr_align.reward_training.data.collate`).

Shapes: `B` images, `D` rubric dimensions, `K` bins, `G` rollouts; rows are ordered `(b * D + d) * G + g`.
"""

from __future__ import annotations

import torch

from ..scores import ScoreDistribution
from . import losses
from .teacher import ReasoningTeacher, Rollouts


def human_targets(batch: dict, dimensions, bins: torch.Tensor):
    """`(B, D, K)` soft labels, `(B, D)` human means and `(B, D)` nearest-bin indices, in rubric order."""
    labels = torch.stack([batch["labels"][d] for d in dimensions], dim=1)
    means = torch.stack([batch["mean"][d] for d in dimensions], dim=1).float()
    nearest = (means[..., None] - bins.to(means)).abs().argmin(-1)
    return labels, means, nearest


def dimension_weights(config, dimensions) -> torch.Tensor:
    """`(D,)` loss weights of the rubric dimensions (`config.dimension_weights`, default 1 each)."""
    weights = getattr(config, "dimension_weights", None) or {}
    unknown = set(weights) - set(dimensions)
    if unknown:
        raise ValueError(f"dimension_weights names {sorted(unknown)}, not dimensions of the rubric {dimensions}")
    return torch.tensor([float(weights.get(d, 1.0)) for d in dimensions])


def score_slot_loss(logits: torch.Tensor, batch: dict, dimensions, bins: torch.Tensor, config) -> torch.Tensor:
    """The score slot's supervised loss on `(B, D, K)` logits, weighted per dimension: cross-entropy to the
    annotators' soft label (`score_label="soft"`, a distribution loss; equals KL(q || p) + H(q)) or to the bin
    nearest their mean ("nearest", the classic SFT token)."""
    labels, _, nearest = human_targets(batch, dimensions, bins)
    logp = torch.log_softmax(logits.float(), -1)
    if getattr(config, "score_label", "soft") == "soft":
        per_row = -(labels.to(logp) * logp).sum(-1)  # (B, D)
    else:
        per_row = -logp.gather(-1, nearest[..., None]).squeeze(-1)
    weights = dimension_weights(config, dimensions).to(per_row)
    return (per_row * weights).sum(-1).mean() / weights.sum().clamp_min(1e-8)


def check_token_weights(rollouts: Rollouts, tokenizer, weights: dict | None) -> torch.Tensor:
    """`(N, L)` loss weights of the rationale tokens of `rollouts`: the tokens of a check named in `weights` (from
    its word to the next "yes" or "no", both included; e.g. "shift yes", "shape circle no") get its weight, every
    other token 1 (padding too; its log-probability is 0)."""
    out = torch.ones(rollouts.tokens.shape, dtype=torch.float32)
    if not weights:
        return out
    for row, (ids, length) in enumerate(zip(rollouts.tokens.tolist(), rollouts.lengths.tolist())):
        current = 1.0
        for j, token in enumerate(tokenizer.convert_ids_to_tokens(ids[:length])):
            current = float(weights.get(token, current))
            out[row, j] = current
            if token in ("yes", "no"):
                current = 1.0
    return out


def pair_indices(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs (i < j) of batch images that share a prompt."""
    a, b = [], []
    for i in range(len(prompts)):
        for j in range(i + 1, len(prompts)):
            if prompts[i] == prompts[j]:
                a.append(i)
                b.append(j)
    return torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)


def pairwise_fidelity(means: torch.Tensor, stds: torch.Tensor, human: torch.Tensor, prompts: list[str]):
    """Thurstone fidelity between same-prompt images on every dimension (Z-Reward's GDSO, direct pairwise supervision); 0 without pairs.
    `means`, `stds`, `human`: `(B, D)`."""
    a, b = pair_indices(prompts)
    if len(a) == 0:
        return means.sum() * 0.0
    target = (human[a] > human[b]).float() + 0.5 * (human[a] == human[b]).float()
    return losses.thurstone_fidelity(means[a].flatten(), stds[a].flatten(), means[b].flatten(), stds[b].flatten(),
                                     target.flatten())


class TeacherSFT:
    """Teacher initialisation: cross-entropy on the data's rationale tokens (those of the checks named in
    `check_weights` weighted, `check_token_weights`) and the stop marker, plus `score_weight` times the score
    slot's loss after that rationale (`score_slot_loss`: soft label by default)."""

    def __init__(self, teacher: ReasoningTeacher, config):
        self.teacher, self.config = teacher, config

    def loss(self, batch, generator):
        t = self.teacher
        dims = t.dimensions
        if batch["rationales"] is None:
            raise ValueError("teacher_sft needs a 'rationale' per dimension on every data line")
        texts = [r[d] for r in batch["rationales"] for d in dims]  # row b * D + d
        rollouts = t.encode_rationales(texts)
        out = t.forward_rollouts(batch["images"], batch["prompts"], rollouts)
        token_logprobs, check_weights = out.token_logprobs, getattr(self.config, "check_weights", None)
        if check_weights:  # scales a check's tokens; the normaliser stays the token count, the others keep theirs
            token_logprobs = token_logprobs * check_token_weights(rollouts, t.tokenizer, check_weights).to(
                token_logprobs)
        token_nll = -(token_logprobs.sum() + out.marker_logprob.sum()) / (out.mask.sum() + len(texts))
        logits = out.slot_logits.view(len(batch["prompts"]), len(dims), -1)
        score = score_slot_loss(logits, batch, dims, t.reward_model.bin_values, self.config)
        weight = getattr(self.config, "score_weight", 1.0)
        return token_nll + weight * score, {"token_nll": token_nll.item(), "score_ce": score.item()}


class GDSO:
    """Group-wise Direct Score Optimisation (Z-Reward's GDSO): G sampled rationales per (image, dimension); the reward of
    a rationale is how close the *expectation* of the distribution read after it is to the human score,
    R = -|E - y|; group-normalised advantages drive a clipped policy gradient on the rationale tokens (KL to the
    frozen reference), while the score slot gets direct pointwise (KL to the human soft label) and pairwise
    (Thurstone fidelity on score gaps within a prompt) supervision."""

    def __init__(self, teacher: ReasoningTeacher, config, reference: ReasoningTeacher):
        self.teacher, self.reference, self.config = teacher, reference, config.gdso

    def rollout_forward(self, batch, generator):
        """Sample G rationales per (image, dimension); teacher-forced passes of the policy (with grad) and the
        frozen reference (without) over them."""
        images, prompts = batch["images"], batch["prompts"]
        rollouts: Rollouts = self.teacher.generate(images, prompts, num=self.config.rollouts,
                                                   temperature=self.config.temperature, generator=generator)
        out = self.teacher.forward_rollouts(images, prompts, rollouts)
        with torch.no_grad():
            ref = self.reference.forward_rollouts(images, prompts, rollouts)
        return out, ref

    def loss(self, batch, generator):
        t, c = self.teacher, self.config
        dims, G = t.dimensions, c.rollouts
        labels, means_h, _ = human_targets(batch, dims, t.reward_model.bin_values)
        out, ref = self.rollout_forward(batch, generator)
        B, D = labels.shape[:2]
        dist = ScoreDistribution.from_logits(out.slot_logits.view(B, D, G, -1), t.reward_model.bin_values.float())
        rewards = losses.distribution_reward(dist.mean.detach().view(B * D, G), means_h.view(B * D))
        advantages = losses.group_advantages(rewards)  # (B*D, G)
        policy = losses.clipped_policy_loss(
            out.token_logprobs.view(B * D, G, -1), out.token_logprobs.detach().view(B * D, G, -1),
            ref.token_logprobs.view(B * D, G, -1), advantages, out.mask.view(B * D, G, -1),
            clip_eps=c.clip_eps, kl_coef=c.kl_coef,
        )
        point = losses.pointwise_kl(out.slot_logits, labels[:, :, None].expand(B, D, G, -1).reshape(B * D * G, -1))
        # pairwise: per image, the distribution marginalised over its rollouts
        marginal = ScoreDistribution(dist.probs.mean(2), dist.values)
        pair = pairwise_fidelity(marginal.mean, marginal.std, means_h, batch["prompts"])
        loss = c.pg_weight * policy.loss + c.point_weight * point + c.pair_weight * pair
        return loss, {"pg": policy.loss.item(), "kl_ref": policy.kl.item(), "point": point.item(),
                      "pair": pair.item(), "reward": rewards.mean().item(),
                      "rationale_tokens": out.mask.sum(1).mean().item()}


class GRPOScoreToken(GDSO):
    """Baseline: GRPO where the teacher also *samples* its score token after each rationale and is rewarded for
    its accuracy, 1 - |s - y| / 4; the advantage multiplies the log-probability of rationale + score token."""

    def loss(self, batch, generator):
        t, c = self.teacher, self.config
        dims, G = t.dimensions, c.rollouts
        _, means_h, _ = human_targets(batch, dims, t.reward_model.bin_values)
        out, ref = self.rollout_forward(batch, generator)
        B, D = means_h.shape
        sampled = losses.sample_score_tokens(out.slot_logits.detach(), generator, 1).view(B * D, G)
        rewards = losses.score_accuracy_reward(sampled, means_h.view(B * D),
                                               t.reward_model.bin_values)
        advantages = losses.group_advantages(rewards)
        score_logprob = torch.log_softmax(out.slot_logits, -1).gather(-1, sampled.view(-1, 1)).view(B * D, G)
        sequence_logprob = out.token_logprobs.view(B * D, G, -1).sum(-1) + score_logprob
        kl = losses.k3_kl(out.token_logprobs, ref.token_logprobs, out.mask)
        loss = -(advantages * sequence_logprob).mean() + c.kl_coef * kl
        return loss, {"reward": rewards.mean().item(), "kl_ref": kl.item()}


class RewardDance:
    """Baseline: the model answers whether the image satisfies the rubric; reward = P("yes"). Stored as a reward
    model with two bins, "no" = 1.0 and "yes" = 5.0, so E = 1 + 4 P(yes); trained with binary cross-entropy
    against the normalised human score (y - 1) / 4 as a soft label."""

    def __init__(self, reward_model, config):
        self.reward_model = reward_model

    def loss(self, batch, generator):
        rm = self.reward_model
        _, means_h, _ = human_targets(batch, rm.dimensions, rm.bin_values)
        logits = rm.forward_logits(batch["images"], batch["prompts"])  # (B, D, 2): [no, yes]
        label = ((means_h - 1.0) / 4.0).clamp(0, 1).flatten()
        loss = losses.reward_dance_loss(logits[..., 1].flatten(), logits[..., 0].flatten(), label)
        return loss, {"bce": loss.item()}


class StudentSFT:
    """Baseline: the student learns the human labels directly, no teacher (`score_slot_loss`: the soft label by
    default, the nearest bin's token with `score_label="nearest"`)."""

    def __init__(self, reward_model, config):
        self.reward_model, self.config = reward_model, config

    def loss(self, batch, generator):
        rm = self.reward_model
        logits = rm.forward_logits(batch["images"], batch["prompts"])
        loss = score_slot_loss(logits, batch, rm.dimensions, rm.bin_values, self.config)
        return loss, {"ce": loss.item()}


class RISD:
    """Reasoning-Internalised Score Distillation (Z-Reward's RISD): forward KL(q_T || p_S) to the teacher's
    distribution marginalised over N sampled rationales (`targets`: cached, indexed by data row), plus optional
    human pointwise KL and mean matching."""

    def __init__(self, reward_model, config, targets: torch.Tensor):
        self.reward_model, self.config, self.targets = reward_model, config.risd, targets

    def loss(self, batch, generator):
        rm, c = self.reward_model, self.config
        teacher = self.targets[torch.as_tensor(batch["indices"])]  # (B, D, K)
        logits = rm.forward_logits(batch["images"], batch["prompts"])
        values = rm.bin_values.float()
        loss = losses.risd_loss(logits.flatten(0, 1), teacher.flatten(0, 1),
                                student_mean=(logits.softmax(-1) * values).sum(-1).flatten(),
                                teacher_mean=(teacher * values).sum(-1).flatten(), mean_weight=c.mean_weight)
        if c.human_weight:
            labels, _, _ = human_targets(batch, rm.dimensions, rm.bin_values)
            loss = loss + c.human_weight * losses.pointwise_kl(logits.flatten(0, 1), labels.flatten(0, 1))
        return loss, {"kl_teacher": loss.item()}


class OPD(RISD):
    """Baseline: on-policy distillation, the reverse KL(p_S || q_T) on the student's own distribution (exact
    over the K bins, i.e. the expectation over the student's samples; GKD-style, mode-seeking)."""

    def loss(self, batch, generator):
        rm = self.reward_model
        teacher = self.targets[torch.as_tensor(batch["indices"])].clamp_min(1e-8)
        logits = rm.forward_logits(batch["images"], batch["prompts"])
        loss = losses.opd_reverse_kl(logits.flatten(0, 1), teacher.log().flatten(0, 1), exact=True)
        return loss, {"reverse_kl": loss.item()}
