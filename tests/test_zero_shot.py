"""Zero-shot rewards from a plain VLM folder: bins spelled as single tokens of *that* tokenizer, Q-Align prompts.

The tokenizer is a byte-level BPE trained locally with Qwen2's pre-tokenisation rules (digits split one by one),
the model a stock `Qwen2_5_VLForConditionalGeneration` built from `configs/architectures/qwen2_5_vl_3b.json` at
reduced depth and width, random init, with Qwen2.5-VL's real image-processor settings (patch 14, merge 2).
"""

import json

import pytest
import torch

from zr_align.architectures import load_architecture
from zr_align.rewards import ZRewardModel
from zr_align.rewards.zero_shot import (
    ZERO_SHOT_CHATML,
    choose_bin_texts,
    slot_token_ids,
)
from zr_align.rubrics import Rubric
from zr_align.tiny.bpe import qwen_bpe_tokenizer

PROMPTS = ["a photo of a red fox sitting in fresh snow", "a watercolor painting of a lighthouse"]


@pytest.fixture(scope="module")
def tokenizer():
    return qwen_bpe_tokenizer()


def reduced_qwen2_5_vl(tokenizer, seed: int = 0):
    """Qwen2.5-VL-3B's architecture (same class, patch 14, merge 2, window 112, a full-attention block) at
    2 text layers of width 64 and 2 vision blocks of width 32, random init."""
    import transformers

    spec = load_architecture("qwen2_5_vl_3b")
    text = dict(spec["config"]["text_config"], vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    text["rope_parameters"] = dict(text["rope_parameters"], mrope_section=[2, 3, 3])  # head_dim 16 / 2
    vision = dict(spec["config"]["vision_config"], depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                  out_hidden_size=64, fullatt_block_indexes=[1])
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in
           [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    torch.manual_seed(seed)
    config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval(), spec["processor"]


@pytest.fixture(scope="module")
def vlm_folder(tmp_path_factory, tokenizer):
    """A plain Hugging Face VLM folder: weights, tokenizer, preprocessor_config.json; no zr_align file."""
    folder = tmp_path_factory.mktemp("qwen2_5_vl_plain")
    model, processor = reduced_qwen2_5_vl(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def test_local_tokenizer_has_qwen_pre_tokenisation(tokenizer):
    pieces = lambda text: tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
    assert pieces("3.5") == ["3", ".", "5"]  # the default decimal bins are three tokens...
    assert pieces("10") == ["1", "0"]  # ...and digits never merge
    assert all(len(pieces(str(d))) == 1 for d in range(10))
    assert pieces("Score: 7")[-2:] == ["Ġ", "7"]  # a space before a digit is a token of its own
    assert pieces("<|image_pad|>") == ["<|image_pad|>"]


def test_bin_spelling_is_checked_in_context(tokenizer):
    rubric = Rubric(template=ZERO_SHOT_CHATML)
    prefix = rubric.render("a photo", "alignment", "<|vision_start|><|image_pad|><|vision_end|>")
    # decimal bins are not single tokens for this tokenizer: the 1-9 digit scale takes their place
    assert choose_bin_texts(tokenizer, rubric, prefix) == tuple("123456789")
    assert choose_bin_texts(tokenizer, rubric, prefix, "letters") == tuple("ABCDEFGHI")
    # "A" alone is one token, but after "Score: " the space and the letter form one piece ("ĠA"), so the model
    # never reads "A" there; a digit stays apart from the space (Qwen's `\p{N}` rule), so digits work
    assert len(tokenizer.encode("A", add_special_tokens=False)) == 1
    assert slot_token_ids(tokenizer, "Score: ", ["A", "B"]) is None
    assert slot_token_ids(tokenizer, "Score: ", ["1", "2"]) is not None
    with pytest.raises(ValueError, match=r"no bin spelling is one token per bin for Qwen2Tokenizer"):
        choose_bin_texts(tokenizer, rubric, prefix, [f"{b:.1f}" for b in rubric.bins])
    # a word-level tokenizer with decimal bins keeps them (the rubric's own spelling comes first)
    from zr_align.tiny.qwen import qwen_tokenizer

    assert choose_bin_texts(qwen_tokenizer(), rubric, prefix) == rubric.bin_texts


def test_from_vlm_gives_distributions_and_pixel_gradients(vlm_folder, tmp_path):
    reward = ZRewardModel.from_vlm(vlm_folder)
    assert reward.config.family == "qwen2_5_vl"
    assert reward.config.layout == "per_dimension"
    assert reward.rubric.bin_texts == tuple("123456789")
    assert reward.rubric.bins == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    assert reward.preprocessor.num_image_tokens(112, 112) == 16  # 112 / 14 = 8 patches a side, merged 2x2

    torch.manual_seed(0)
    images = torch.rand(2, 3, 112, 112, requires_grad=True)
    out = reward(images, PROMPTS)
    for dim in reward.dimensions:
        probs = out.scores[dim].probs
        assert probs.shape == (2, 9)
        assert torch.isfinite(probs).all() and (probs >= 0).all()
        assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
        assert ((out.scores[dim].mean >= 1.0) & (out.scores[dim].mean <= 5.0)).all()
    out.reward.sum().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad[0].abs().sum() > 0 and images.grad[1].abs().sum() > 0

    # The saved folder is an ordinary reward folder: from_pretrained gives the same distributions.
    reward.save_pretrained(tmp_path / "zero_shot")
    stored = json.loads((tmp_path / "zero_shot" / "zreward_config.json").read_text())
    assert stored["rubric"]["bin_texts"] == list("123456789")
    reloaded = ZRewardModel.from_pretrained(tmp_path / "zero_shot")
    with torch.no_grad():
        again = reloaded(images.detach(), PROMPTS)
    for dim in reward.dimensions:
        assert torch.allclose(again.scores[dim].probs, out.scores[dim].probs.detach(), atol=1e-6)


def test_from_vlm_options(vlm_folder):
    five = ZRewardModel.from_vlm(vlm_folder, bins=(1, 2, 3, 4, 5), kappa=0.5)
    assert five.rubric.bin_texts == tuple("12345") and five.config.kappa == 0.5
    letters = ZRewardModel.from_vlm(vlm_folder, bin_texts="letters")
    assert letters.rubric.bin_texts == tuple("ABCDEFGHI")
    # the scale named in the question is the spelling actually read
    assert "from A (worst) to I (best)" in letters.build_texts(["a cat"], "")[0]
    with pytest.raises(ValueError, match="no bin spelling"):
        ZRewardModel.from_vlm(vlm_folder, bin_texts=["1.0", "2.0", "3.0", "4.0", "5.0", "6.0", "7.0", "8.0", "9.0"])
