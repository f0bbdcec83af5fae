"""The reasoning teacher: a VLM that writes a rationale, then reads a score distribution (Z-Reward's GDSO).

For each (image, prompt, rubric dimension) the teacher continues the rubric prompt with a short rationale and
the score marker ("Score:"); the distribution over bins is read at the slot after the marker, teacher-forced,
exactly as a student reads it at the end of the prompt. The score token itself is never sampled (Z-Reward's GDSO).

    per_dimension layout:  prompt (rubric template, ends at the assistant turn) | rationale | "Score" ":" <slot>
    joint layout:          image + prompt | alignment rationale Score: <slot> | realism rationale Score: <slot> | ...

In the joint layout (`zr_align.rewards.layout`) one sequence per image carries every dimension: the slot of
dimension d is read at its marker, and the next token is the next dimension's name, never a score token.
One forward over the whole sequence gives both what GDSO needs: the log-probabilities of the rationale tokens
(the policy) and the slot distributions (the values read after those rationales). Rationales are sampled with
Hugging Face `generate` (KV cache, left padding) under [`SegmentForcing`], which keeps the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..rewards.layout import assemble
from ..rewards.output import RewardOutput
from ..rewards.zreward import ZRewardModel
from ..scores import ScoreDistribution
from .losses import marginalize


class SegmentForcing:
    """A `transformers` logits processor that keeps generated rationales in the reward model's layout.

    Each row continues a prefix that ends with the first segment's header. The generated tokens are read as a
    small state machine: free rationale tokens until the marker's first token (forced once `max_tokens` are
    written), the rest of the marker, then the next segment's header (forced), and after the last segment's
    marker only padding (which ends the row). Rationales themselves are sampled freely.
    """

    def __init__(self, headers: list[list[int]], marker: list[int], max_tokens: int, pad_id: int, prompt_width: int):
        self.headers, self.marker, self.max_tokens = headers, marker, max_tokens
        self.pad_id, self.prompt_width = pad_id, prompt_width
        self.max_new_tokens = sum(len(h) for h in headers[1:]) + len(headers) * (max_tokens + len(marker)) + 1

    def _walk(self, generated: list[int]):
        """(forced next token or None, rationale tokens per segment so far)."""
        segments: list[list[int]] = [[]]
        phase, position = "free", 0
        for token in generated:
            if phase == "free":
                if token == self.marker[0]:
                    phase, position = "marker", 1
                else:
                    segments[-1].append(token)
            elif phase in ("marker", "header"):
                position += 1
            if phase == "marker" and position == len(self.marker):
                if len(segments) == len(self.headers):
                    phase = "done"
                else:
                    segments.append([])
                    phase, position = "header", 0
            if phase == "header" and position == len(self.headers[len(segments) - 1]):
                phase = "free"
        if phase == "done":
            return self.pad_id, segments
        if phase == "marker":
            return self.marker[position], segments
        if phase == "header":
            return self.headers[len(segments) - 1][position], segments
        return (self.marker[0] if len(segments[-1]) >= self.max_tokens else None), segments

    def parse(self, generated: list[int]) -> list[list[int]]:
        """The rationale tokens of each segment of one generated row (padding after the end ignored)."""
        segments = self._walk(generated)[1]
        return segments + [[] for _ in range(len(self.headers) - len(segments))]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i, row in enumerate(input_ids[:, self.prompt_width:].tolist()):
            forced = self._walk(row)[0]
            if forced is not None:
                scores[i] = torch.where(torch.arange(scores.shape[1], device=scores.device) == forced, 0.0,
                                        float("-inf"))
        return scores


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
        self.marker_ids = reward_model.marker_ids(teacher["score_marker"])
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
    # A rollout row `n = (b * D + d) * R + r` (image b, dimension d, rollout r) lives in sequence row `(b * D + d)
    # * R + r`, segment 0 (per-dimension layout), or in sequence row `b * R + r`, segment d (joint layout).
    def _rows(self, batch: int, repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(row, segment)` of every rollout row, each `(B * D * R,)`."""
        dims = len(self.dimensions)
        b, d, r = torch.meshgrid(torch.arange(batch), torch.arange(dims), torch.arange(repeats), indexing="ij")
        if self.reward_model.joint:
            return (b * repeats + r).flatten(), d.flatten()
        return ((b * dims + d) * repeats + r).flatten(), torch.zeros(batch * dims * repeats, dtype=torch.long)

    def _prefixes(self, prompts: list[str], image_text: str, repeats: int) -> list[list[int]]:
        return [ids for ids in self.reward_model.prefix_ids(prompts, image_text) for _ in range(repeats)]

    def _model_inputs(self, images: torch.Tensor, prompts: list[str], repeats: int):
        vision = self.reward_model.preprocessor(images)
        rows_per_image = repeats * (1 if self.reward_model.joint else len(self.dimensions))
        return vision, self.reward_model.pixel_inputs(vision, rows_per_image)

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
        """`num` rationales per (image, dimension), each stopped at the score marker. No graph.

        In the joint layout one generation writes every dimension's rationale in turn: a logits processor
        ([`SegmentForcing`]) forces each marker to be followed by the next dimension's header (never a score
        token) and caps each rationale at `max_rationale_tokens`.
        """
        from transformers import LogitsProcessorList

        if generator is not None:  # HF sampling draws from the global RNG: seed it from the caller's generator
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        rm = self.reward_model
        vision, pixels = self._model_inputs(images, prompts, num)
        headers = rm.segment_headers()
        prefixes = [p + headers[0] for p in self._prefixes(prompts, vision.image_text, num)]
        device = images.device
        width = max(len(p) for p in prefixes)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(prefixes), width), pad, dtype=torch.long, device=device)
        attention = torch.zeros_like(input_ids)
        for i, p in enumerate(prefixes):  # left padding for generation
            input_ids[i, width - len(p):] = torch.tensor(p, device=device)
            attention[i, width - len(p):] = 1
        forcing = SegmentForcing(headers, self.marker_ids, self.max_rationale_tokens, pad, width)
        extra = rm.family.extra_text_inputs(input_ids, rm.image_token_id)
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention, **pixels, **extra,
            max_new_tokens=forcing.max_new_tokens, do_sample=not greedy,
            temperature=temperature if not greedy else None, top_k=0 if not greedy else None,
            pad_token_id=pad, eos_token_id=pad, suppress_tokens=self.suppressed,
            logits_processor=LogitsProcessorList([forcing]),
        )
        segments = [forcing.parse(row) for row in out[:, width:].tolist()]  # [row][segment] token lists
        row, segment = self._rows(images.shape[0], num)
        texts = [segments[i][s] for i, s in zip(row.tolist(), segment.tolist())]
        length = max(1, max(len(t) for t in texts))
        tokens = torch.full((len(texts), length), pad, dtype=torch.long, device=device)
        for i, t in enumerate(texts):
            tokens[i, : len(t)] = torch.tensor(t, dtype=torch.long, device=device)
        return Rollouts(tokens, torch.tensor([len(t) for t in texts], device=device), num)

    def encode_rationales(self, texts: list[str]) -> Rollouts:
        """Rationale texts (e.g. from the training data) -> `Rollouts` of one per row."""
        ids = [self.tokenizer.encode(t, add_special_tokens=False)[: self.max_rationale_tokens] for t in texts]
        width = max(1, max(len(i) for i in ids))
        tokens = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        for row, i in enumerate(ids):
            tokens[row, : len(i)] = torch.tensor(i, dtype=torch.long)
        return Rollouts(tokens, torch.tensor([len(i) for i in ids]), 1)

    def forward_rollouts(self, images: torch.Tensor, prompts: list[str], rollouts: Rollouts) -> TeacherForward:
        """Teacher-forced pass over prompt + rationale + marker for every rollout row (in the joint layout, every
        dimension of an image in one sequence). Differentiable in the model's weights (this is what GDSO, SFT
        and the marginal targets use)."""
        rm, repeats = self.reward_model, rollouts.repeats
        vision, pixels = self._model_inputs(images, prompts, repeats)
        prefixes = self._prefixes(prompts, vision.image_text, repeats)
        device = images.device
        row, segment = self._rows(images.shape[0], repeats)
        headers = rm.segment_headers()
        rationales = [[[] for _ in headers] for _ in prefixes]
        for n, (i, s) in enumerate(zip(row.tolist(), segment.tolist())):
            rationales[i][s] = rollouts.tokens[n, : int(rollouts.lengths[n])].tolist()
        seq = assemble(prefixes, headers, self.marker_ids, rationales, self.tokenizer.pad_token_id, device)
        extra = rm.family.extra_text_inputs(seq.input_ids, rm.image_token_id)
        hidden = self.model.model(input_ids=seq.input_ids, attention_mask=seq.attention_mask, **pixels,
                                  **extra).last_hidden_state  # (rows, W, H)
        row, segment = row.to(device), segment.to(device)
        head = self.model.get_output_embeddings()
        slot_logits = rm.bin_logits(hidden[row, seq.slots[row, segment]])  # (N, K)
        # rationale token j of rollout n sits at start + j and is predicted at start + j - 1
        starts, lengths = seq.starts[row, segment], seq.lengths[row, segment]
        length = rollouts.tokens.shape[1]
        offsets = (starts[:, None] + torch.arange(length, device=device)[None] - 1).clamp(max=hidden.shape[1] - 1)
        mask = (torch.arange(length, device=device)[None] < lengths[:, None]).float()
        h = hidden[row[:, None], offsets]  # (N, L, H)
        logprobs = F.log_softmax(head(h).float(), dim=-1)
        targets = rollouts.tokens.to(device).clamp(min=0)
        token_logprobs = logprobs.gather(-1, targets[..., None]).squeeze(-1) * mask
        # the first marker token sits right after the rationale and is predicted from the position before it
        marker_logits = head(hidden[row, starts + lengths - 1]).float()
        marker_logprob = F.log_softmax(marker_logits, dim=-1)[:, self.marker_ids[0]]
        return TeacherForward(slot_logits, token_logprobs, mask, marker_logprob)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def marginal_probs(self, images: torch.Tensor, prompts: list[str], num: int = 1, greedy: bool = False,
                       temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(B, D, K)` score distributions read after `num` rationales per (image, dimension), averaged over the
        rationales: the teacher marginalised over its reasoning (Z-Reward's RISD; RISD's target)."""
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
