"""Rubrics: the dimensions a reward model scores, the text that asks for each, and the score-slot tokens.

A reward model reads one score distribution per rubric dimension (Z-Reward's score distributions): the prompt for dimension `d`
is `template` filled with the image placeholder, the user's prompt, `d` and its criterion; the prompt ends
exactly where the score token would be generated (the *score slot*), and the distribution is the softmax of
the logits of the tokens that spell the bins there. Each bin must therefore be exactly one token.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from .scores import DEFAULT_BINS

DEFAULT_CRITERIA: dict[str, str] = {
    "alignment": "Does the image show exactly what the prompt describes: every object, attribute, count and "
    "position, nothing missing and nothing contradicting it?",
    "realism": "Does the image look like a real, clean rendering, free of noise, blur, colour casts and "
    "generation artefacts?",
    "aesthetics": "Is the image pleasing: balanced composition, harmonious colours, clear subject?",
    "plausibility": "Is every object whole and physically plausible, without fragments, duplicated or cut-off "
    "parts?",
}
DEFAULT_DIMENSIONS: tuple[str, ...] = tuple(DEFAULT_CRITERIA)

# Placeholders a template may use. `{image}` is replaced by the family's image prompt, the others by text.
TEMPLATE_FIELDS = ("image", "prompt", "dimension", "criterion", "low", "high")


def bin_text(value: float) -> str:
    """The default spelling of a bin value: one decimal, e.g. `3.5`."""
    return f"{value:.1f}"


@dataclass
class Rubric:
    """Which dimensions are scored, how each is asked, and how the score slot is spelled.

    Args:
        criteria (`dict[str, str]`): dimension name -> the criterion sentence shown to the model. Editable.
        template (`str`): prompt text ending at the score slot, with the fields of `TEMPLATE_FIELDS`
            (`{image}` and `{prompt}` are required). Families supply a chat-formatted default.
        bins (`tuple[float, ...]`): the score values, increasing (default 1.0, 1.5, ..., 5.0).
        bin_texts (`tuple[str, ...]`): how each bin is written at the score slot; default `bin_text(value)`.
        joint_template (`str`): the prefix of the *joint* layout (`zr_align.rewards.layout`): the image and the
            prompt, before the first dimension's segment; fields `{image}` and `{prompt}` (and `{low}`, `{high}`).
    """

    criteria: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CRITERIA))
    template: str = "{image}Prompt: {prompt}\nRate the {dimension} from {low} to {high}. {criterion}\nScore:"
    bins: tuple[float, ...] = DEFAULT_BINS
    bin_texts: tuple[str, ...] | None = None
    joint_template: str = "{image}Prompt: {prompt}\n"

    def __post_init__(self):
        self.bins = tuple(float(b) for b in self.bins)
        if self.bin_texts is None:
            self.bin_texts = tuple(bin_text(b) for b in self.bins)
        self.bin_texts = tuple(self.bin_texts)
        if not self.criteria:
            raise ValueError("rubric has no dimensions; give criteria={'alignment': '...', ...}")
        if len(self.bins) < 2 or any(b >= c for b, c in zip(self.bins, self.bins[1:])):
            raise ValueError(f"bins must be at least two strictly increasing values, got {self.bins}")
        if len(self.bin_texts) != len(self.bins):
            raise ValueError(f"bin_texts has {len(self.bin_texts)} entries for {len(self.bins)} bins; give one per bin")
        if len(set(self.bin_texts)) != len(self.bin_texts):
            raise ValueError(f"bin_texts must be distinct, got {self.bin_texts}")
        for name, template, allowed in (("template", self.template, TEMPLATE_FIELDS),
                                        ("joint_template", self.joint_template, ("image", "prompt", "low", "high"))):
            names = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
            unknown = names - set(allowed)
            if unknown:
                raise ValueError(f"{name} uses unknown field(s) {sorted(unknown)}; allowed: {allowed}")
            for required in ("image", "prompt"):
                if required not in names:
                    raise ValueError(f"{name} must contain {{{required}}}; got {template!r}")

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(self.criteria)

    def render(self, prompt: str, dimension: str, image: str) -> str:
        """The text for one (prompt, dimension), with `image` standing for the picture; ends at the score slot."""
        return self.template.format(
            image=image,
            prompt=prompt,
            dimension=dimension,
            criterion=self.criteria[dimension],
            low=self.bin_texts[0],
            high=self.bin_texts[-1],
        )

    def render_joint(self, prompt: str, image: str) -> str:
        """The prefix of the joint layout for one prompt (every dimension's segment follows it)."""
        return self.joint_template.format(image=image, prompt=prompt, low=self.bin_texts[0], high=self.bin_texts[-1])

    def to_dict(self) -> dict:
        return {
            "criteria": dict(self.criteria),
            "template": self.template,
            "bins": list(self.bins),
            "bin_texts": list(self.bin_texts),
            "joint_template": self.joint_template,
        }


def resolve_bin_token_ids(tokenizer, bin_texts) -> list[int]:
    """One token id per bin text; a `ValueError` naming the bin and the tokenizer if a bin is not one token."""
    ids = []
    for text in bin_texts:
        tokens = tokenizer.encode(text, add_special_tokens=False)
        if len(tokens) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tokens)
            raise ValueError(
                f"bin {text!r} is {len(tokens)} tokens {pieces} for {type(tokenizer).__name__}, not one; add the bins "
                "as tokens (tokenizer.add_tokens + model.resize_token_embeddings) or choose single-token bin_texts"
            )
        if tokens[0] == tokenizer.unk_token_id:
            raise ValueError(
                f"bin {text!r} is the unknown token of {type(tokenizer).__name__}; add it with tokenizer.add_tokens "
                "or choose bin_texts the vocabulary has"
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"bins {list(bin_texts)} map to repeated token ids {ids} in {type(tokenizer).__name__}")
    return ids
