"""Zero-shot score distributions from a stock VLM: Q-Align-style prompts whose answer is one token per bin.

Q-Align (Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via Discrete Text-Defined Levels", 2023) reads a
score from a VLM by asking a rating question and taking the softmax over the tokens of the rating levels at the
answer's first position. We do the same per rubric dimension, so a model that was never trained for us gives a
score distribution (Z-Reward's score distributions) at once; RISD training can start from the saved folder.

The bins keep their values (default 1.0 ... 5.0 in half points); only how they are *spelled* at the score slot
is chosen per tokenizer, because each bin must be exactly one token there. Real Qwen tokenizers split digits one
by one ("3.5" is three tokens), so the default decimal spelling fails on them and a 1-9 digit scale, one digit
per half-point bin, is used instead; tokenizers without single-token digits get letters A, B, C, ...
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from ..rubrics import Rubric, bin_text

# How a family's zero-shot prompt reads: the question names the scale ({low} worst, {high} best) and the prompt
# ends where the answer's first token goes. ChatML for the Qwen families.
ZERO_SHOT_CHATML = (
    "<|im_start|>system\nYou are an expert judge of generated images.<|im_end|>\n"
    "<|im_start|>user\n{image}This image was generated from the prompt: \"{prompt}\"\n"
    "How would you rate its {dimension}? {criterion}\n"
    "Answer with a single score from {low} (worst) to {high} (best).<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ZERO_SHOT_IDEFICS3 = (
    "<|im_start|>User:{image}This image was generated from the prompt: \"{prompt}\"\n"
    "How would you rate its {dimension}? {criterion}\n"
    "Answer with a single score from {low} (worst) to {high} (best).<end_of_utterance>\nAssistant:"
)
ZERO_SHOT_LLAVA = (
    "USER: {image}\nThis image was generated from the prompt: \"{prompt}\"\n"
    "How would you rate its {dimension}? {criterion}\n"
    "Answer with a single score from {low} (worst) to {high} (best). ASSISTANT:"
)
ZERO_SHOT_TEMPLATES: dict[str, str] = {
    "qwen2_vl": ZERO_SHOT_CHATML,
    "qwen2_5_vl": ZERO_SHOT_CHATML,
    "qwen3_vl": ZERO_SHOT_CHATML,
    "qwen3_5": ZERO_SHOT_CHATML,
    "idefics3": ZERO_SHOT_IDEFICS3,
    "llava": ZERO_SHOT_LLAVA,
}

# Q-Align's five text-defined levels, worst to best (only for a five-bin rubric).
QALIGN_LEVELS = ("bad", "poor", "fair", "good", "excellent")


def _decimal(bins: Sequence[float]) -> tuple[str, ...] | None:
    return tuple(bin_text(b) for b in bins)


def _digits(bins: Sequence[float]) -> tuple[str, ...] | None:
    # One digit per bin, in order: 1..9 for the default nine half-point bins (1.0 -> "1", 5.0 -> "9").
    return tuple(str(i + 1) for i in range(len(bins))) if len(bins) <= 9 else None


def _letters(bins: Sequence[float]) -> tuple[str, ...] | None:
    return tuple(string.ascii_uppercase[: len(bins)]) if len(bins) <= 26 else None


def _levels(bins: Sequence[float]) -> tuple[str, ...] | None:
    return QALIGN_LEVELS if len(bins) == len(QALIGN_LEVELS) else None


# Spelling schemes, tried in this order by "auto": name -> bins -> bin texts (None: not possible for this count).
BIN_SCHEMES = {"decimal": _decimal, "digits": _digits, "letters": _letters, "levels": _levels}


def slot_token_ids(tokenizer, prefix: str, bin_texts: Sequence[str]) -> list[int] | None:
    """The token id of each bin text *as it follows `prefix`*, or None if some bin is not one token there.

    A bin can be one token alone yet merge with the end of the prompt (a BPE pre-tokeniser may glue ":" and
    "A" into ":A"); what the model reads at the score slot is the tokenisation of the whole text, so we check
    that `prefix + text` encodes to `prefix`'s tokens plus exactly one, the same one as `text` alone.
    """
    head = tokenizer.encode(prefix, add_special_tokens=False)
    ids = []
    for text in bin_texts:
        alone = tokenizer.encode(text, add_special_tokens=False)
        together = tokenizer.encode(prefix + text, add_special_tokens=False)
        if len(alone) != 1 or together != head + alone or alone[0] == tokenizer.unk_token_id:
            return None
        ids.append(alone[0])
    return ids if len(set(ids)) == len(ids) else None


def choose_bin_texts(tokenizer, rubric: Rubric, prefix: str, scheme: str | Sequence[str] = "auto") -> tuple[str, ...]:
    """Bin texts for `rubric.bins` that are single tokens of `tokenizer` at the score slot after `prefix`.

    Args:
        scheme: "auto" keeps the rubric's own bin texts if they work and otherwise tries `BIN_SCHEMES` in order;
            a scheme name forces that scheme; a sequence gives the texts explicitly.

    Raises a `ValueError` naming the tokenizer and what was tried when nothing fits.
    """
    if not isinstance(scheme, str):
        candidates = {"given": tuple(scheme)}
    elif scheme == "auto":
        candidates = {"rubric": rubric.bin_texts}
        candidates.update({name: make(rubric.bins) for name, make in BIN_SCHEMES.items()})
    elif scheme in BIN_SCHEMES:
        candidates = {scheme: BIN_SCHEMES[scheme](rubric.bins)}
    else:
        raise ValueError(f"bin_texts must be 'auto', one of {', '.join(BIN_SCHEMES)} or a list of texts; got {scheme!r}")
    tried = []
    for name, texts in candidates.items():
        if texts is None or len(texts) != len(rubric.bins):
            continue
        if slot_token_ids(tokenizer, prefix, texts) is not None:
            return tuple(texts)
        tried.append(f"{name} {list(texts[:3])}...")
    raise ValueError(
        f"no bin spelling is one token per bin for {type(tokenizer).__name__} at the score slot (tried "
        f"{'; '.join(tried) or 'nothing that fits ' + str(len(rubric.bins)) + ' bins'}); pass bin_texts= explicitly "
        "or add the bins as tokens"
    )


def zero_shot_rubric(family: str, tokenizer, image_text: str, rubric: Rubric | None = None,
                     bins: Sequence[float] | None = None, bin_texts: str | Sequence[str] = "auto") -> Rubric:
    """The rubric of a zero-shot reward: the family's Q-Align-style template (unless `rubric` gives one), the
    `bins` values (default the rubric's), spelled with single tokens of `tokenizer` (see `choose_bin_texts`).

    `image_text` is how an image appears in the prompt (the family's image prompt around its image token); it is
    part of the prefix whose tokenisation is checked.
    """
    base = rubric or Rubric(template=ZERO_SHOT_TEMPLATES[family])
    if bins is not None:
        base = Rubric(criteria=base.criteria, template=base.template, bins=tuple(bins),
                      joint_template=base.joint_template)
    image = image_text
    # The criterion text of the first dimension stands for all: only the slot's left context matters here, and
    # every template ends with the same fixed text after the criterion.
    probe = Rubric(criteria=base.criteria, template=base.template, bins=base.bins, bin_texts=base.bin_texts,
                   joint_template=base.joint_template)
    texts = choose_bin_texts(tokenizer, probe, probe.render("a photo", probe.dimensions[0], image), bin_texts)
    # {low} and {high} in the template name the chosen spelling, so render with the final texts.
    final = Rubric(criteria=base.criteria, template=base.template, bins=base.bins, bin_texts=texts,
                   joint_template=base.joint_template)
    for dimension in final.dimensions:
        prefix = final.render("a photo", dimension, image)
        if slot_token_ids(tokenizer, prefix, texts) is None:
            raise ValueError(f"bin texts {list(texts)} are not single tokens after the {dimension!r} prompt of "
                             f"{type(tokenizer).__name__}; pass bin_texts= explicitly")
    return final
