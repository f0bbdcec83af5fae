"""The models a fine-tuning run loads: the stock diffusers pipeline of `model.family` and the reward.

Both come from local folders (nothing is downloaded); `tiny:<family>` paths build random tiny components under
`output_dir/.tiny/` (`zr_align.tiny`), for smoke runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..lora import add_lora
from ..tiny import tiny_pipeline_path, tiny_reward_path
from .config import BACKPROP_METHODS, TrainConfig
from .families import get_denoiser_family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_pipeline(config: TrainConfig, accelerator):
    """The stock diffusers pipeline of `model.family` from a local folder, every component frozen on the
    accelerator's device; returns `(pipe, pipeline_class)`."""
    family = get_denoiser_family(config.model.family)
    with accelerator.main_process_first():
        path = tiny_pipeline_path(config.model.path, Path(config.output_dir) / ".tiny", config.model.prediction_type)
    if not Path(path, "model_index.json").is_file():
        raise ValueError(f"model.path {path!r} is not a diffusers pipeline folder (no model_index.json)")
    index = json.loads(Path(path, "model_index.json").read_text())
    declared = index["_class_name"]
    pipeline_class = family.pipeline_class()
    if declared != pipeline_class.__name__:
        raise ValueError(f"model.path holds a {declared}, but model.family {family.name} needs a "
                         f"{pipeline_class.__name__}; set model.family to match the folder")
    # Components saved as absent (e.g. SD3 without its T5 encoder) must be passed as None explicitly.
    absent = {name: None for name, spec in index.items() if isinstance(spec, list) and spec == [None, None]}
    pipe = pipeline_class.from_pretrained(path, dtype=DTYPES[config.model.dtype], **absent)
    if config.model.prediction_type is not None:
        pipe.scheduler.register_to_config(prediction_type=config.model.prediction_type)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).to(accelerator.device)
    return pipe, pipeline_class


def make_trainable(pipe, denoiser, config: TrainConfig) -> tuple[dict, object]:
    """The modules a run trains, under the names its checkpoints give them, and the peft `LoraConfig` (None with
    `model.trainable: full`): a LoRA added to the denoiser, or the whole denoiser (and with
    `model.train_text_encoder` the text encoder) in float32 with every weight trainable. The trainer and anything
    that loads a run's checkpoints afterwards (`recipes.curves`) build the same modules here."""
    trained, lora_config = {"denoiser": denoiser}, None
    if config.model.trainable == "lora":
        lora = config.lora
        lora_config = add_lora(denoiser, config.model.family, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                               target_modules=lora.targets)
    else:
        if config.model.train_text_encoder:
            trained["text_encoder"] = pipe.text_encoder
        for module in trained.values():
            module.to(torch.float32).requires_grad_(True)
    return trained, lora_config


def load_reward(config: TrainConfig, accelerator):
    """The reward named by `reward.kind`; a backprop method refuses a reward that is not differentiable."""
    if config.reward.kind in ("jpeg_compressibility", "tinyworld_soft_judge"):
        reward = _built_in_reward(config.reward.kind, config.reward.options or {})
    else:
        paths = [config.reward.path, *(config.reward.ensemble or [])]
        members = [_load_zreward(config, path, accelerator) for path in paths]
        if len(members) == 1:
            reward = members[0]
        else:
            from ..rewards import RewardEnsemble

            reward = RewardEnsemble(members, reduce=config.reward.ensemble_reduce)
    if config.method in BACKPROP_METHODS and not getattr(reward, "differentiable", False):
        raise ValueError(f"reward {config.reward.kind} is not differentiable, so method {config.method} cannot "
                         "back-propagate through it; use a differentiable reward (reward.kind: zreward)")
    return reward


def _load_zreward(config: TrainConfig, path: str, accelerator):
    """One ZRewardModel folder with the `reward.*` overrides, on the accelerator's device."""
    from ..rewards import ZRewardModel

    with accelerator.main_process_first():
        path = tiny_reward_path(path, Path(config.output_dir) / ".tiny")
    overrides = {"clamp": config.reward.clamp}
    if config.reward.kappa is not None:
        overrides["kappa"] = config.reward.kappa
    if config.reward.weights is not None:
        overrides["weights"] = config.reward.weights
    reward = ZRewardModel.from_pretrained(path, torch_dtype=DTYPES[config.reward.dtype], **overrides)
    reward = reward.to(accelerator.device)
    if config.reward.gradient_checkpointing:
        reward.enable_gradient_checkpointing()
    return reward


def _built_in_reward(kind: str, options: dict):
    """A reward of `zr_align` that is not a model folder, built with `reward.options` (checked by name)."""
    import inspect

    if kind == "jpeg_compressibility":
        from ..rewards.compressibility import JpegCompressibility as built_in
    else:
        from ..tinyworld.soft_judge import SoftJudge as built_in
    accepted = [name for name in inspect.signature(built_in).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"reward.options has {unknown[0]!r}, which reward.kind {kind} does not take; it takes: "
                         f"{', '.join(accepted) or 'nothing'}")
    return built_in(**options)


def warn_long_prompts(pipe, prompts: list[str]) -> None:
    """One line when prompts exceed the text encoder's context: diffusers truncates them (and warns per batch)."""
    tokenizer = getattr(pipe, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not isinstance(limit, int) or limit > 100_000:
        return
    long = [p for p in prompts if len(tokenizer(p, verbose=False)["input_ids"]) > limit]
    if long:
        print(f"train_t2i.py: warning: {len(long)} of {len(prompts)} prompts are longer than the text encoder's "
              f"{limit} tokens and are truncated (e.g. {long[0][:60]!r})", file=sys.stderr)
