"""Builders of tiny *real* models for tests and examples: real transformers classes, tiny configs, no download.

`tiny_reward_model(family, out_dir)` writes a complete `ZRewardModel` folder for each supported family.
"""

from __future__ import annotations

from pathlib import Path

from ..rewards.families import FAMILIES
from ..rewards.zreward import ZRewardConfig, ZRewardModel
from ..rubrics import Rubric


def _build_qwen(family: str, seed: int):
    from .qwen import qwen_processor_config, qwen_tokenizer, tiny_qwen_model

    tokenizer = qwen_tokenizer()
    return tiny_qwen_model(family, tokenizer, seed), tokenizer, qwen_processor_config(family)


# family -> builder(seed) returning (model, tokenizer, image-processor config)
TINY_BUILDERS = {
    "idefics3": lambda seed: __import__("zr_align.testing.idefics3", fromlist=["build"]).build(seed),
    "qwen2_vl": lambda seed: _build_qwen("qwen2_vl", seed),
    "qwen2_5_vl": lambda seed: _build_qwen("qwen2_5_vl", seed),
    "qwen3_vl": lambda seed: _build_qwen("qwen3_vl", seed),
    "qwen3_5": lambda seed: _build_qwen("qwen3_5", seed),
    "llava": lambda seed: __import__("zr_align.testing.llava", fromlist=["build"]).build(seed),
}


def tiny_reward_model(family: str, out_dir, seed: int = 0, **config_fields) -> Path:
    """Build a tiny random reward model of `family` and save it as a `ZRewardModel` folder at `out_dir`."""
    if family not in TINY_BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r}; available: {', '.join(TINY_BUILDERS)}")
    model, tokenizer, processor_config = TINY_BUILDERS[family](seed)
    config = ZRewardConfig(family=family, rubric=Rubric(template=FAMILIES[family].template).to_dict(), **config_fields)
    reward_model = ZRewardModel(model, tokenizer, config, processor_config)
    out_dir = Path(out_dir)
    reward_model.save_pretrained(out_dir)
    return out_dir


__all__ = ["TINY_BUILDERS", "tiny_reward_model"]
