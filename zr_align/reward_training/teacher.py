"""The reasoning teacher: a VLM that writes a rationale, then reads a score distribution (SPEC §3).

For each (image, prompt, rubric dimension) the teacher continues the rubric prompt with a short rationale and
the score marker ("Score:"); the distribution over bins is read at the slot after the marker, teacher-forced,
exactly as a student reads it at the end of the prompt. The score token itself is never sampled (SPEC §3).

    prompt (rubric template, ends at the assistant turn) | rationale tokens | "Score" ":" | <slot>

One forward over the whole sequence gives both what GDSO needs: the log-probabilities of the rationale tokens
(the policy) and the slot distribution (the value read after that rationale). Rationales are sampled with
Hugging Face `generate` (KV cache, left padding), stopping at the first marker token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..rewards.output import RewardOutput
from ..rewards.zreward import ZRewardModel
from ..scores import ScoreDistribution
from .losses import marginalize


@dataclass
class Rollouts:
    """Rationales for `N = B * D * R` (image, dimension, rollout) rows, row `(b * D + d) * R + r`.

    Args:
        tokens: `(N, L)` rationale token ids, right-padded with the pad id.
        lengths: `(N,)` number of real rationale tokens per row (the marker is not included).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    repeats: int

    def texts(self, tokenizer) -> list[str]:
        rows = zip(self.tokens, self.lengths.tolist())
        return [" ".join(tokenizer.convert_ids_to_tokens(t[:n].tolist())) for t, n in rows]


@dataclass
class TeacherForward:
    """One teacher-forced pass over prompt + rationale + marker.

    Args:
        slot_logits: `(N, K)` bin logits at the score slot.
        token_logprobs: `(N, L)` log-probability of each rationale token (0 at padding).
        mask: `(N, L)` 1 for real rationale tokens.
        marker_logprob: `(N,)` log-probability of the first marker token after the rationale (learning when to
            stop; supervised by teacher SFT).
    """

    slot_logits: torch.Tensor
    token_logprobs: torch.Tensor
    mask: torch.Tensor
    marker_logprob: torch.Tensor


class ReasoningTeacher(torch.nn.Module):
    """A `ZRewardModel` whose config has a `teacher` section (score marker, rationale length).

    Scoring modes: "greedy" (one greedy rationale per image and dimension) and "sample" (`num_rationales`
    sampled rationales; the distribution is their mean, the teacher marginalised over its reasoning).
    """

    differentiable = False  # generation is discrete: the backprop trainers must use a student

    def __init__(self, reward_model: ZRewardModel):
        super().__init__()
        teacher = reward_model.config.teacher
        if not teacher or not teacher.get("score_marker"):
            raise ValueError(
                "this reward model has no rationale template (zreward_config.json has no teacher.score_marker); "
                "a reasoning teacher needs one, e.g. teacher={'score_marker': 'Score:', 'max_rationale_tokens': 24}"
            )
        self.reward_model = reward_model
        self.tokenizer = reward_model.tokenizer
        self.marker_ids = self.tokenizer.encode(teacher["score_marker"], add_special_tokens=False)
        if not self.marker_ids or self.tokenizer.unk_token_id in self.marker_ids:
            raise ValueError(f"score marker {teacher['score_marker']!r} is not in the tokenizer's vocabulary")
        self.max_rationale_tokens = int(teacher.get("max_rationale_tokens", 24))
        # A rationale is plain text: never chat markers, image placeholders, padding or unknown words.
        special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        self.suppressed = sorted(special - {self.marker_ids[0]})

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "ReasoningTeacher":
        return cls(ZRewardModel.from_pretrained(path, **overrides))

    def save_pretrained(self, path) -> None:
        self.reward_model.save_pretrained(path)

    @property
    def model(self):
        return self.reward_model.model

    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.reward_model.dimensions

    # ------------------------------------------------------------------ sequences
    def _prefix_ids(self, prompts: list[str], image_text: str) -> list[list[int]]:
        texts = self.reward_model.build_texts(prompts, image_text)  # row b * D + d
        return [self.tokenizer(t)["input_ids"] for t in texts]

    def _vision(self, images: torch.Tensor, repeats: int):
        vision = self.reward_model.preprocessor(images)
        batch, dims = images.shape[0], len(self.dimensions)
        index = torch.arange(batch, device=images.device).repeat_interleave(dims * repeats)
        dtype = self.model.dtype
        inputs = vision.model_inputs(index)
        return vision, {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}

    def _padded(self, rows: list[list[int]], left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(input_ids, attention_mask)` of token rows padded to one width: left for generation, right for a
        teacher-forced pass (positions then count from the start)."""
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        attention = torch.zeros_like(input_ids)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            input_ids[i, span] = torch.tensor(r, device=device)
            attention[i, span] = 1
        return input_ids, attention

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        prompts: list[str],
        num: int = 1,
        greedy: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """`num` rationales per (image, dimension), stopping at the score marker. No graph."""
        if generator is not None:  # HF sampling draws from the global RNG: seed it from the caller's generator
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        vision, pixels = self._vision(images, num)
        prefixes = [ids for ids in self._prefix_ids(prompts, vision.image_text) for _ in range(num)]
        device = images.device
        input_ids, attention = self._padded(prefixes, left=True, device=device)
        width, pad = input_ids.shape[1], self.tokenizer.pad_token_id
        extra = self.reward_model.family.extra_text_inputs(input_ids, self.reward_model.image_token_id)
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention, **pixels, **extra,
            max_new_tokens=self.max_rationale_tokens, do_sample=not greedy,
            temperature=temperature if not greedy else None, top_k=0 if not greedy else None,
            pad_token_id=pad, eos_token_id=self.marker_ids[0], suppress_tokens=self.suppressed,
        )
        new = out[:, width:]
        stop = (new == self.marker_ids[0]) | (new == pad)
        # length = position of the first marker / pad token (the whole budget if none)
        lengths = torch.where(stop.any(1), stop.float().argmax(1), torch.full_like(stop[:, 0], new.shape[1],
                                                                                   dtype=torch.long))
        tokens = torch.where(torch.arange(new.shape[1], device=device)[None] < lengths[:, None], new, pad)
        return Rollouts(tokens, lengths, num)

    def encode_rationales(self, texts: list[str]) -> Rollouts:
        """Rationale texts (e.g. from the training data) -> `Rollouts` of one per row."""
        ids = [self.tokenizer.encode(t, add_special_tokens=False)[: self.max_rationale_tokens] for t in texts]
        width = max(1, max(len(i) for i in ids))
        tokens = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        for row, i in enumerate(ids):
            tokens[row, : len(i)] = torch.tensor(i, dtype=torch.long)
        return Rollouts(tokens, torch.tensor([len(i) for i in ids]), 1)

    def forward_rollouts(self, images: torch.Tensor, prompts: list[str], rollouts: Rollouts) -> TeacherForward:
        """Teacher-forced pass over prompt + rationale + marker for every rollout row. Differentiable in the
        model's weights (this is what GDSO, SFT and the marginal targets use)."""
        vision, pixels = self._vision(images, rollouts.repeats)
        prefixes = [ids for ids in self._prefix_ids(prompts, vision.image_text) for _ in range(rollouts.repeats)]
        device = images.device
        rows, starts = [], []
        for prefix, tokens, n in zip(prefixes, rollouts.tokens.tolist(), rollouts.lengths.tolist()):
            starts.append(len(prefix))
            rows.append(prefix + tokens[:n] + self.marker_ids)
        input_ids, attention = self._padded(rows, left=False, device=device)
        width = input_ids.shape[1]
        extra = self.reward_model.family.extra_text_inputs(input_ids, self.reward_model.image_token_id)
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention, **pixels, **extra).last_hidden_state
        head = self.model.get_output_embeddings()
        n_rows = len(rows)
        slot = attention.sum(1) - 1  # the last marker token: the next token is the score
        bins = head.weight[self.reward_model.bin_token_ids]  # only the K bin rows of the LM head
        slot_logits = hidden[torch.arange(n_rows, device=device), slot] @ bins.T
        # rationale token j of row i sits at position starts[i] + j and is predicted at starts[i] + j - 1
        length = rollouts.tokens.shape[1]
        offsets = torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device)[None] - 1
        mask = (torch.arange(length, device=device)[None] < rollouts.lengths.to(device)[:, None]).float()
        offsets = offsets.clamp(max=width - 1)
        h = hidden.gather(1, offsets[..., None].expand(-1, -1, hidden.shape[-1]))  # (N, L, H)
        logprobs = F.log_softmax(head(h).float(), dim=-1)
        targets = rollouts.tokens.to(device).clamp(min=0)
        token_logprobs = logprobs.gather(-1, targets[..., None]).squeeze(-1) * mask
        # the first marker token sits right after the rationale and is predicted from the position before it
        before_marker = torch.tensor(starts, device=device) + rollouts.lengths.to(device) - 1
        marker_logits = head(hidden[torch.arange(n_rows, device=device), before_marker]).float()
        marker_logprob = F.log_softmax(marker_logits, dim=-1)[:, self.marker_ids[0]]
        return TeacherForward(slot_logits.float(), token_logprobs, mask, marker_logprob)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def marginal_probs(self, images: torch.Tensor, prompts: list[str], num: int = 1, greedy: bool = False,
                       temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(B, D, K)` score distributions read after `num` rationales per (image, dimension), averaged over the
        rationales: the teacher marginalised over its reasoning (SPEC §4; RISD's target)."""
        rollouts = self.generate(images, prompts, num=num, greedy=greedy, temperature=temperature,
                                 generator=generator)
        probs = self.forward_rollouts(images, prompts, rollouts).slot_logits.softmax(-1)
        batch, dims = images.shape[0], len(self.dimensions)
        return marginalize(probs.view(batch * dims, num, -1)).view(batch, dims, -1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], mode: str = "greedy", num_rationales: int = 4,
              generator: torch.Generator | None = None) -> RewardOutput:
        """Scores after greedy or sampled rationales; with several, the distribution is their mean (RISD's
        reasoning-marginalised target)."""
        if mode not in ("greedy", "sample"):
            raise ValueError(f"mode must be 'greedy' or 'sample', got {mode!r}")
        num = 1 if mode == "greedy" else num_rationales
        probs = self.marginal_probs(images, prompts, num=num, greedy=mode == "greedy", generator=generator)
        return self.reward_model.output_from_distribution(
            ScoreDistribution(probs, self.reward_model.bin_values.float())
        )

    def scorer(self, mode: str = "greedy", num_rationales: int = 4):
        def score(images, prompts):
            return self.score(images, list(prompts), mode=mode, num_rationales=num_rationales)

        return score
