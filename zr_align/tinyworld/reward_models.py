"""TinyWorld's reward models: a tiny Qwen2-VL-class teacher and a student about a third of its size.

Both use the real `Qwen2VLForConditionalGeneration` at tiny size, patch 8 / merge 2 (a 64x64 image is 16 image
tokens, no resize), and one word-level tokenizer that knows the grammar, the rubric text, the rationale words
and every score bin as a single token.

Both use the *joint* layout (`zr_align.rewards.layout`): one short sequence per image, the image and the prompt
followed by every rubric dimension in turn. The teacher writes each dimension's rationale, then "Score:", and
the score slot follows (Z-Reward's reasoning teacher); the student has no rationale and reads all four
distributions in one forward pass (the RISD student). The student's vision tower has the teacher's size, so it
can see as well (and may be initialised from it, `RewardTrainConfig.vision_init`). Where an image token sits
reaches the language model only through its rotary position; `mrope_layout` chooses how that rotary is split
between time, rows and columns.
"""

from __future__ import annotations

import torch

from ..rewards.families import CHATML_TEMPLATE
from ..rewards.zreward import ZRewardConfig, ZRewardModel
from ..rubrics import Rubric
from ..tiny.qwen import QWEN_SPECIAL_TOKENS, qwen_processor_config
from ..tiny.tokenizer import word_level_tokenizer
from .rationale import RATIONALE_WORDS

# name -> (text hidden, text layers, heads, vision width, vision depth)
SIZES = {
    "teacher": (128, 4, 4, 64, 3),
    "student": (64, 3, 4, 64, 3),
}
ROPE_LAYOUTS = ("spatial", "qwen2_vl")  # see mrope_layout
SCORE_MARKER = "Score:"
# The joint layout's prefix: the image and the prompt only (the rubric's long per-dimension sentences would cost
# ~80 tokens per dimension for nothing the model can use).
JOINT_TEMPLATE = "<|im_start|>{image}{prompt}<|im_end|>"
MAX_RATIONALE_TOKENS = 14
# Words of the rationales (zr_align.tinyworld.reward_data) and the RewardDance answer, besides the grammar.
EXTRA_WORDS = (
    "Score : color shape size position blur noise shift fragments crop contrast clutter object yes no none "
    "Answer Does the image satisfy rubric"
)


def reward_tokenizer():
    extra = EXTRA_WORDS + " " + " ".join(RATIONALE_WORDS)
    return word_level_tokenizer(QWEN_SPECIAL_TOKENS, extra_text=extra, pad_token="<|endoftext|>")


def mrope_layout(head_dim: int, layout: str = "spatial") -> tuple[float, list[int]]:
    """`(rope_theta, mrope_section)` of a tiny Qwen2-VL language model with heads of `head_dim`.

    Qwen2-VL turns a query's or key's `head_dim / 2` rotary frequencies (fastest first) in three contiguous
    sections: the first by the token's time index, the next by its image row, the last, slowest, by its column.
    With Qwen2-VL's own theta (10^4) and proportions ("qwen2_vl"), a 32-wide head turns its column frequencies by
    at most 3e-3 rad per column (rows: 0.1 rad): across the 4 x 4 image tokens of a 64 px image the columns are
    indistinguishable, and the model can tell left from centre from right only by counting tokens. The shipped
    teacher read rows well and confused centre with left and right on renders (90 of its 103 position misses).
    "spatial" gives time (constant over an image) one eighth of the frequencies and uses theta 10: one column turns
    the fastest column frequency by ~0.27 rad, one row by ~0.75 rad, and text positions stay distinct over ~55
    tokens (the joint sequence of a TinyWorld image is shorter than 100). The shipped TinyWorld weights use
    "qwen2_vl", and the configs that build them pin it: a full build with "spatial" read position far better but
    ranked pairs no better (`docs/tinyworld_rewards.md`, "Image columns")."""
    quarter = head_dim // 2
    if layout == "qwen2_vl":
        side = quarter * 3 // 8
        return 10000.0, [quarter - 2 * side, side, side]
    if layout == "spatial":
        side = (quarter - max(1, quarter // 8)) // 2
        return 10.0, [quarter - 2 * side, side, side]
    raise ValueError(f"rope layout {layout!r}: use one of {ROPE_LAYOUTS}")


def tiny_qwen2_vl(tokenizer, size: str, seed: int = 0, rope: str = "spatial"):
    import transformers

    hidden, layers, heads, vision_width, vision_depth = SIZES[size]
    head_dim = hidden // heads
    theta, mrope = mrope_layout(head_dim, rope)
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    config = transformers.Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "head_dim": head_dim, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta, "mrope_section": mrope},
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "depth": vision_depth, "embed_dim": vision_width, "hidden_size": hidden, "num_heads": 2,
            "mlp_ratio": 2, "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2,
            # a wider init than the default 0.02: image features then differ across images by ~25% of their
            # scale (0.02 gives ~1%, and the language model learned to ignore the image in a probe)
            "initializer_range": 0.1,
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    return transformers.Qwen2VLForConditionalGeneration(config).eval()


def build_reward_model(size: str, teacher: bool, seed: int = 0, layout: str = "joint",
                       rope: str = "spatial") -> ZRewardModel:
    """A random TinyWorld reward model: `size` "teacher" or "student"; `teacher=True` adds the rationale slot;
    `layout` "joint" (one sequence per image, the default) or "per_dimension"; `rope` see `mrope_layout`."""
    tokenizer = reward_tokenizer()
    model = tiny_qwen2_vl(tokenizer, size, seed, rope)
    config = ZRewardConfig(
        family="qwen2_vl",
        rubric=Rubric(template=CHATML_TEMPLATE, joint_template=JOINT_TEMPLATE).to_dict(),
        teacher={"score_marker": SCORE_MARKER, "max_rationale_tokens": MAX_RATIONALE_TOKENS} if teacher else None,
        layout=layout,
        joint_marker=SCORE_MARKER,
    )
    return ZRewardModel(model, tokenizer, config, qwen_processor_config("qwen2_vl"))


def initial_model(config) -> ZRewardModel | None:
    """The random model that a reward-training config with `init: tinyworld:SIZE[:ROPE]` starts from (SIZE teacher
    or student; ROPE a layout of `mrope_layout`, "spatial" by default; RewardDance's teacher without the rationale
    slot); None for any other `init` (a reward folder)."""
    if not config.init.startswith("tinyworld:"):
        return None
    size, rope = parse_init(config.init)
    return build_reward_model(size, teacher=config.role == "teacher" and config.method != "reward_dance",
                              seed=config.seed, rope=rope)


def parse_init(init: str) -> tuple[str, str]:
    """(size, rotary layout) of an `init: tinyworld:SIZE[:ROPE]`.

    Raises:
        `ValueError`: one line naming the malformed init and the allowed forms.
    """
    _, size, *rope = init.split(":") if init.startswith("tinyworld:") else ("", "")
    if size not in SIZES or len(rope) > 1 or not set(rope) <= set(ROPE_LAYOUTS):
        raise ValueError(f"init {init!r}: use tinyworld:teacher or tinyworld:student, optionally followed by "
                         f"the rotary layout, one of {', '.join(':' + r for r in ROPE_LAYOUTS)}")
    return size, rope[0] if rope else "spatial"
