"""The reward-model training loop shared by every method (accelerate; full or LoRA; checkpointing; resume).

    zr-align reward train --config configs/reward/tinyworld_gdso.yaml [key=value ...] [--resume latest]

Output folder: `model/` (the trained reward folder, loadable with `ZRewardModel.from_pretrained` or, for
teachers, `ReasoningTeacher.from_pretrained`), `checkpoints/step_N/`, `metrics.jsonl`, `config.yaml`,
`environment.json` (library versions, CPU, threads: `zr_align.runs.environment`), and for RISD / OPD the
teacher's marginal distributions, computed once and cached beside the data (`teacher_targets/<digest>.pt`,
shared by RISD and OPD runs of the same teacher and data).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ..lora import add_language_lora, merge_lora
from ..rewards.zreward import ZRewardModel
from ..rubrics import Rubric
from ..runs import (
    MetricsLog,
    TrainableState,
    checkpoint_due,
    checkpoint_step,
    guarded_step,
    lr_factor,
    resolve_resume,
    save_checkpoint,
    save_config,
    save_environment,
    step_generator,
)
from . import objectives
from .config import RewardTrainConfig
from .data import RatedImages, collate
from .teacher import ReasoningTeacher


def build_initial_model(config: RewardTrainConfig, model: ZRewardModel | None = None) -> ZRewardModel:
    """The model to train: `model` when the caller built one (e.g. TinyWorld's random models for
    `init: tinyworld:...`, `zr_align.tinyworld.reward_models.initial_model`), else the reward folder `init`."""
    if model is None:
        if not Path(config.init, "zreward_config.json").is_file():
            hint = ("; a tinyworld: init is built by zr_align.tinyworld.reward_models.initial_model (as `zr-align "
                    "reward train` does)") if config.init.startswith("tinyworld:") else ""
            raise ValueError(f"init {config.init!r} is not a reward-model folder (no zreward_config.json){hint}")
        model = ZRewardModel.from_pretrained(config.init)
        if config.role == "student" and model.config.teacher:
            # a student initialised from a teacher keeps its weights and layout but reads its score with no rationale
            model.config.teacher = None
    if config.method == "reward_dance" and model.rubric.bin_texts != ("no", "yes"):
        # RewardDance reads P("yes") at the slot: a two-bin rubric, "no" = 1.0, "yes" = 5.0
        rubric = Rubric(criteria=model.rubric.criteria, template=model.rubric.template, bins=(1.0, 5.0),
                        bin_texts=("no", "yes"))
        model.config.rubric, model.config.bin_token_ids = rubric.to_dict(), None
        model = ZRewardModel(model.model, model.tokenizer, model.config, model.processor_config)
    return model


def copy_vision_tower(model: ZRewardModel, source: str) -> int:
    """Copy the vision-tower weights of the reward folder `source` whose names and shapes match `model`'s (the
    projection into a language model of another width does not); returns how many tensors were copied."""
    donor = ZRewardModel.from_pretrained(source).model.state_dict()
    own = model.model.state_dict()
    copied = {k: v for k, v in donor.items() if ".visual." in f".{k}" and k in own and own[k].shape == v.shape}
    if not copied:
        raise ValueError(f"vision_init {source!r} has no vision weights of this model's shapes")
    model.model.load_state_dict(copied, strict=False)
    return len(copied)


def make_trainable(model: ZRewardModel, config: RewardTrainConfig) -> list[torch.nn.Parameter]:
    """Unfreeze the VLM (or add a LoRA to its language model's attention); return the trained parameters."""
    if config.lora_rank > 0:
        params = add_language_lora(model.model, config.lora_rank)
    else:
        model.model.requires_grad_(True)
        params = [p for p in model.model.parameters() if p.requires_grad]
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return params


@torch.no_grad()
def teacher_targets(config: RewardTrainConfig, data: RatedImages, out: Path, log=print) -> torch.Tensor:
    """`(N, D, K)` teacher distributions marginalised over `num_rationales` sampled rationales, for every data
    row (`risd.unlabelled`'s images included); computed once and cached beside the data, in `teacher_targets/<digest
    of the key>.pt` (keyed by teacher, its files, data, unlabelled images, N, temperature and seed), so RISD and OPD
    runs on the same data share them. The teacher's files (name, size, modification time) are in the key: a teacher
    retrained into the same folder gets new targets, never its predecessor's."""
    teacher_dir = Path(config.risd.teacher).resolve()
    files = sorted((f.name, f.stat()) for f in teacher_dir.iterdir() if f.is_file()) if teacher_dir.is_dir() else []
    key = {"teacher": str(teacher_dir), "data": str(Path(config.data).resolve()),
           "teacher_files": [[name, stat.st_size, stat.st_mtime_ns] for name, stat in files],
           "num_rationales": config.risd.num_rationales, "temperature": config.risd.temperature,
           "seed": config.seed}
    if config.risd.unlabelled:  # only when set, so that runs without it keep their digest; a rewritten file is new
        index = Path(config.risd.unlabelled).resolve()
        key["unlabelled"] = [str(index), index.stat().st_size, index.stat().st_mtime_ns]
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(config.data).parent / "teacher_targets" / f"{digest}.pt"
    if cache.is_file():
        stored = torch.load(cache, weights_only=False)
        if stored["key"] == key:
            return stored["targets"]
    teacher = ReasoningTeacher.from_pretrained(config.risd.teacher)
    generator = torch.Generator().manual_seed(config.seed)
    chunks, start = [], time.perf_counter()
    for first in range(0, len(data), 16):
        batch = collate([data[i] for i in range(first, min(first + 16, len(data)))])
        chunks.append(teacher.marginal_probs(batch["images"], batch["prompts"], num=config.risd.num_rationales,
                                             temperature=config.risd.temperature, generator=generator))
    targets = torch.cat(chunks)
    log(f"teacher targets for {len(data)} images x {config.risd.num_rationales} rationales "
        f"in {time.perf_counter() - start:.0f}s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "targets": targets}, cache)
    return targets


def build_objective(config: RewardTrainConfig, model: ZRewardModel, data: RatedImages, out: Path, log):
    m = config.method
    if m in ("teacher_sft", "gdso", "grpo"):
        teacher = ReasoningTeacher(model)
        if m == "teacher_sft":
            return objectives.TeacherSFT(teacher, config)
        reference = ReasoningTeacher.from_pretrained(config.init)  # frozen copy of the starting teacher
        return (objectives.GDSO if m == "gdso" else objectives.GRPOScoreToken)(teacher, config, reference)
    if m == "reward_dance":
        return objectives.RewardDance(model, config)
    if m == "student_sft":
        return objectives.StudentSFT(model, config)
    targets = teacher_targets(config, data, out, log)
    return (objectives.RISD if m == "risd" else objectives.OPD)(model, config, targets)


def grouped_batch(by_prompt: dict[str, list[int]], config: RewardTrainConfig, generator) -> list[int]:
    """`batch_size / images_per_prompt` prompts, `images_per_prompt` images of each (so pairs share prompts)."""
    prompts = sorted(by_prompt)
    chosen = torch.randperm(len(prompts), generator=generator)[: config.batch_size // config.images_per_prompt]
    indices = []
    for p in chosen.tolist():
        rows = by_prompt[prompts[p]]
        order = torch.randperm(len(rows), generator=generator).tolist()
        indices += [rows[order[i % len(rows)]] for i in range(config.images_per_prompt)]
    return indices


def train_reward_model(config: RewardTrainConfig, resume: str | None = None, log=print, on_eval=None,
                       model: ZRewardModel | None = None) -> Path:
    """Train one reward model (see the module docstring for the output folder); returns the `model/` folder.

    Args:
        resume: "latest" or a `checkpoints/step_N` folder.
        on_eval (*optional*): `on_eval(step, model) -> dict` called every `config.eval_every` steps and at the end,
            with the model being trained (a `ZRewardModel`); its numbers join that step's line of `metrics.jsonl`.
        model (*optional*): the model to start from, built by the caller; default: the folder `config.init`.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(config.output_dir)
    accelerator = Accelerator()
    rank = accelerator.process_index
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        save_environment(out / "environment.json")
    set_seed(config.seed)
    data = RatedImages(config.data)
    if config.risd.unlabelled:
        log(f"{data.add_unlabelled(config.risd.unlabelled)} unlabelled images from {config.risd.unlabelled} join "
            f"the {config.data} rows (the teacher's targets only)")
    model = build_initial_model(config, model).to(accelerator.device)
    if config.vision_init:
        log(f"vision tower: {copy_vision_tower(model, config.vision_init)} tensors from {config.vision_init}")
    params = make_trainable(model, config)
    objective = build_objective(config, model, data, out, log)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, config.warmup_steps, config.lr_schedule, config.max_steps, config.min_lr_ratio))
    optimizer, schedule = accelerator.prepare(optimizer, schedule)
    accelerator.register_for_checkpointing(TrainableState({"model": model.model}))

    start = 0
    resume_from = resolve_resume(resume, out / "checkpoints")
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start = checkpoint_step(resume_from)
        log(f"resumed from {resume_from} at step {start}")
    metrics = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    metrics.restart(start)

    by_prompt: dict[str, list[int]] = {}
    for i, item in enumerate(data.items):
        by_prompt.setdefault(item["prompt"], []).append(i)
    for step in range(start, config.max_steps):
        begin = time.perf_counter()
        generator = step_generator(config.seed, step, rank)
        batch = collate([data[i] for i in grouped_batch(by_prompt, config, generator)])
        batch["images"] = batch["images"].to(accelerator.device)
        loss, values = objective.loss(batch, generator)
        skipped = not torch.isfinite(loss)
        if not skipped:
            accelerator.backward(loss)
        grad_norm, skipped = guarded_step(accelerator, params, optimizer, config.max_grad_norm, skipped)
        schedule.step()
        record = {"step": step + 1, "loss": float(loss.detach()), "grad_norm": grad_norm, "skipped": skipped,
                  "seconds": time.perf_counter() - begin, "lr": schedule.get_last_lr()[0], **values}
        if on_eval is not None and config.eval_every and ((step + 1) % config.eval_every == 0
                                                          or step + 1 == config.max_steps):
            record["eval"] = on_eval(step + 1, model)
            log(f"{config.method} step {step + 1} eval {record['eval']}")
        metrics.append(record)
        if accelerator.is_main_process and (step % 20 == 0 or step + 1 == config.max_steps):
            log(f"{config.method} step {step + 1}/{config.max_steps} loss {record['loss']:.4f} "
                + " ".join(f"{k} {v:.3f}" for k, v in values.items()))
        if checkpoint_due(step + 1, config.checkpoint_every, config.max_steps):
            save_checkpoint(accelerator, out / "checkpoints", step + 1)
    _save(model, config, accelerator)
    return out / "model"


def _save(model: ZRewardModel, config: RewardTrainConfig, accelerator) -> None:
    """The last checkpoint (only it is kept), then `model/`: a plain reward folder (a LoRA merged)."""
    out = Path(config.output_dir)
    save_checkpoint(accelerator, out / "checkpoints", config.max_steps, keep=1)
    if accelerator.is_main_process:
        if config.lora_rank > 0:
            merge_lora(model.model)
        model.model.requires_grad_(False)
        if config.gradient_checkpointing:
            model.disable_gradient_checkpointing()
        model.save_pretrained(out / "model")
    accelerator.wait_for_everyone()
