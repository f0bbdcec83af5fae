"""An offline byte-level BPE tokenizer with the Qwen2 pre-tokenisation rules, for zero-shot reward tests.

Real Qwen tokenizer files cannot be downloaded here, but what decides whether a score bin is one token is the
pre-tokeniser, not the vocabulary: Qwen's splits every digit on its own (`\\p{N}` matches one character), so
"3.5" is three tokens and "10" two, and a space before a digit is a token of its own. We train a small BPE on
our templates with exactly those rules (the regular expression Qwen2's `tokenizer.json` declares, then the
GPT-2 byte-to-unicode mapping) and load it through transformers' `Qwen2Tokenizer`, as a real checkpoint is.
"""

from __future__ import annotations

import json

from ..rubrics import DEFAULT_CRITERIA

# Qwen2 / Qwen2.5 / Qwen3 (and their VL models) pre-tokenisation, as written in their tokenizer.json.
QWEN2_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
QWEN_VL_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                          "<|image_pad|>", "<|video_pad|>"]

_EXTRA_TEXT = (
    "You are an expert judge of generated images. This image was generated from the prompt. How would you rate "
    "its alignment realism aesthetics plausibility? Answer with a single score from 1 (worst) to 9 (best), "
    "from A (worst) to I (best). The score is 7. Scores: 1.0 1.5 2.0 2.5 3.0 3.5 4.0 4.5 5.0 10 100. "
    "a photo of a red fox sitting in fresh snow, golden hour; a watercolor painting of a lighthouse on a cliff "
    "at dusk; two cats sleeping on a blue sofa; a large red circle on the left; a small blue square at the top. "
    "bad poor fair good excellent"
)


def qwen_bpe_tokenizer(vocab_size: int = 600, extra_text: str = ""):
    """A `Qwen2Tokenizer` over a byte-level BPE trained (deterministically) on our templates and rubric.

    Args:
        vocab_size: size of the learned vocabulary before the special tokens (all 256 bytes are always in it).
        extra_text: more training text.

    Every string is encodable (byte level, no unknown token); digits are always single tokens and never merge.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from ..rewards.families import CHATML_TEMPLATE
    from ..rewards.zero_shot import ZERO_SHOT_TEMPLATES

    corpus = [CHATML_TEMPLATE, *ZERO_SHOT_TEMPLATES.values(), *DEFAULT_CRITERIA, *DEFAULT_CRITERIA.values(),
              _EXTRA_TEXT, extra_text]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    backend.train_from_iterator(corpus * 4, trainer=trainer)
    model = json.loads(backend.to_str())["model"]  # the trained vocabulary and merges, in order
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_VL_SPECIAL_TOKENS[1:]})
    return tokenizer

