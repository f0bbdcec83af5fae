"""Tiny *random* models of every supported family: the stock transformers / diffusers classes at tiny sizes.

They are what a `tiny:<family>` path in a config builds (`model.path: tiny:sd`, `reward.path: tiny:qwen2_vl`):
smoke runs of the whole pipeline in seconds on a CPU, with nothing downloaded. They learn nothing useful.
The offline tokenizers they use (`tokenizer.py`, `bpe.py`) also stand in for real ones in TinyWorld's models
and in the meta-device architectures.

`tiny_reward_model(family, out_dir)` writes a complete `ZRewardModel` folder for each supported family;
`tiny_pipeline(family, out_dir)` a stock diffusers pipeline folder (`diffusion.py`).
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
    "idefics3": lambda seed: __import__("zr_align.tiny.idefics3", fromlist=["build"]).build(seed),
    "qwen2_vl": lambda seed: _build_qwen("qwen2_vl", seed),
    "qwen2_5_vl": lambda seed: _build_qwen("qwen2_5_vl", seed),
    "qwen3_vl": lambda seed: _build_qwen("qwen3_vl", seed),
    "qwen3_5": lambda seed: _build_qwen("qwen3_5", seed),
    "llava": lambda seed: __import__("zr_align.tiny.llava", fromlist=["build"]).build(seed),
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


def tiny_pipeline_path(path: str, cache_dir, prediction_type: str | None = None) -> str:
    """`model.path`: `tiny:<family>` is built once under `cache_dir/<family>` and that folder returned; any other
    path is returned as it is."""
    if not path.startswith("tiny:"):
        return path
    from .diffusion import tiny_pipeline

    folder = Path(cache_dir) / path[5:]
    if not (folder / "model_index.json").is_file():
        tiny_pipeline(path[5:], out_dir=folder, prediction_type=prediction_type)
    return str(folder)


def tiny_reward_path(path: str, cache_dir) -> str:
    """`reward.path`: `tiny:<family>` is built once under `cache_dir/reward_<family>` and that folder returned;
    any other path is returned as it is."""
    if not path.startswith("tiny:"):
        return path
    folder = Path(cache_dir) / f"reward_{path[5:]}"
    if not (folder / "zreward_config.json").is_file():
        tiny_reward_model(path[5:], folder)
    return str(folder)


__all__ = ["TINY_BUILDERS", "tiny_pipeline_path", "tiny_reward_model", "tiny_reward_path"]
