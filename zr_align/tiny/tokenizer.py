"""An offline word-level tokenizer for tiny test and TinyWorld models: no download, bins are single tokens."""

from __future__ import annotations

import re

from ..rubrics import DEFAULT_CRITERIA, bin_text
from ..scores import DEFAULT_BINS

# Pieces: a decimal number ("3.5" is one token, like a score bin), a word, or one punctuation mark.
PIECE_PATTERN = r"\d+\.\d+|\w+|[^\w\s]"

BASE_WORDS = (
    "a an the of on in at to from and or is are be it its this that with by for rate score prompt image "
    "user assistant system you expert judge generated images left right top bottom center small large red "
    "green blue yellow purple orange circle square triangle yes no color colour shape size position "
    "object objects picture photo of"
).split()


def word_level_tokenizer(special_tokens: list[str], extra_text: str = "", pad_token: str = "<pad>"):
    """A `PreTrainedTokenizerFast` over the words of our templates, rubric, grammar and `extra_text`.

    Special tokens (chat markers, image placeholders) are matched before splitting; unknown words map to
    `<unk>`. Every default score bin ("1.0" ... "5.0") is one token.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ..rewards.families import CHATML_TEMPLATE, IDEFICS3_TEMPLATE, LLAVA_TEMPLATE

    text = " ".join([CHATML_TEMPLATE, IDEFICS3_TEMPLATE, LLAVA_TEMPLATE, *DEFAULT_CRITERIA, extra_text])
    text += " " + " ".join(DEFAULT_CRITERIA.values())
    for token in special_tokens:
        text = text.replace(token, " ")
    pieces = re.findall(PIECE_PATTERN, re.sub(r"\{\w+\}", " ", text))
    words = [bin_text(b) for b in DEFAULT_BINS] + [str(i) for i in range(10)] + BASE_WORDS + pieces
    specials = ["<unk>", pad_token, *special_tokens]
    vocab: dict[str, int] = {}
    for token in specials + words:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")]
    )
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token=pad_token, eos_token=special_tokens[0]
    )
