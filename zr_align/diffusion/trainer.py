"""The fine-tuning engine behind `train_t2i.py`: a LoRA (or whole modules) on a text-to-image model, trained by
backpropagating a differentiable reward through the sampler (DRaFT-K, DRaFT-LV, ReFL, full) or by SFT.

    from zr_align.diffusion import fine_tune, load_train_config
    fine_tune(load_train_config("configs/tiny_debug.yaml", ["max_steps=2"]), overwrite=True)

The output folder (`output_dir`: lora/, checkpoints/step_N/, metrics.jsonl, config.yaml, validation/) is laid
out as `python train_t2i.py --help` shows.

A folder that already holds a run is refused unless `resume` (continue it: the model settings must match) or
`overwrite` (clear it first); two runs cannot write into one folder at once (a lock). Bad input raises a one-line
`ValueError`, and nothing is written before the input is validated.

Several processes (`accelerate launch`, README: "Several GPUs and nodes"): the denoiser goes through
`accelerator.prepare` (DDP, FSDP2 or DeepSpeed, as the accelerate config says) and the sampler calls that module
wherever a gradient is built. Micro-batch m of step s on rank r draws from the stream (seed, s, r * A + m) (A =
gradient_accumulation_steps), so 2 ranks x A=1 train on the samples of 1 rank x A=2.

The run reads top to bottom: 1 folder and accelerator (`fine_tune`), 2 models, LoRA, reward, data and optimiser
(`setup`), 3 resume and the first writes (`_start`), 4 the training loop (`_step`, `_record`), 5 save (`_finish`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..lora import adapters_disabled, save_lora
from ..runs import (
    MetricsLog,
    RunLock,
    TrainableState,
    check_run_folder,
    checkpoint_due,
    checkpoint_step,
    clear_run_outputs,
    guarded_step,
    lr_factor,
    peak_memory_mb,
    plain_dict,
    remove_stale_temporaries,
    save_checkpoint,
    save_config,
)
from ..runs.processes import (
    MAX_STREAMS,
    frozen_models_whole,
    full_trained_state,
    keep_model_weights_out_of_checkpoints,
    micro_batch_generator,
    process_kind,
    shape_generator,
    shards_weights,
)
from .components import load_pipeline, load_reward, make_trainable, warn_long_prompts
from .config import TrainConfig
from .datasets import LatentPairDataset, load_prompts, load_sft_data
from .losses import (
    RewardNormalizer,
    denoising_loss,
    dpo_loss,
    encode_images,
    guidance_distillation_loss,
    reward_loss,
)
from .sampling import DifferentiableSampler
from .validation import validate


@dataclass
class Run:
    """Everything `setup` builds for one run."""

    pipe: object
    pipeline_class: type
    sampler: DifferentiableSampler
    trained: dict  # name -> module whose trainable parameters are optimised (checkpointed as one object)
    lora_config: object  # the peft LoraConfig, or None with model.trainable: full
    params: list
    reward_fn: object  # None for SFT
    prompts: list[str]
    sft_data: object
    optimizer: object
    lr_schedule: object
    normalizer: RewardNormalizer
    pairs: object = None  # method dpo: the preference pairs of latents (`LatentPairDataset`)
    kind: str = "single"  # single | ddp | fsdp | deepspeed (`zr_align.runs.processes.process_kind`)
    wrapped: object = None  # the module accelerate's `prepare` made of the denoiser (several processes), else None
    sharded: bool = False  # FSDP / ZeRO-3: every rank holds a shard, so every rank makes every denoiser call
    to_average: list | None = None  # trained parameters outside `wrapped`, whose gradients are averaged by hand
    teacher: object = None  # optim.cfg_distill_weight > 0: a context manager factory yielding the frozen base denoiser


def fine_tune(config: TrainConfig, resume: str | None = None, overwrite: bool = False) -> Path:
    """Train as `config` says; returns the output folder (see the module docstring for what it holds).

    Args:
        resume: "latest" or a `checkpoints/step_N` folder: continue that run exactly.
        overwrite: clear a folder that holds an earlier run (without it, such a folder is refused).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    out = Path(config.output_dir)
    resume_from = check_run_folder(out, resume, overwrite, plain_dict(config), config.max_steps)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=None if config.log_with == "none" else config.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # Ranks may call DDP's module a different number of times per step (K drawn per rank): no buffer broadcast
        # (a collective per call); the denoiser's buffers are frozen constants anyway.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    try:
        lock = _lock(accelerator, out)
        try:
            if overwrite and accelerator.is_main_process:
                clear_run_outputs(out)
            accelerator.wait_for_everyone()
            return _train(config, accelerator, resume_from, resume)
        finally:
            lock.release()
    except BaseException:
        # A refused or failed run leaves no process group behind. Left to interpreter exit, tearing the group's
        # threads down sometimes aborts rank 0 ("terminate called without an active exception", exit -6, not 2).
        accelerator.end_training()
        raise


def _lock(accelerator, out: Path) -> RunLock:
    """The main process locks the folder; a refusal is raised on every rank, so that no rank waits for it."""
    lock, error = RunLock(out), None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except ValueError as refused:
            error = refused
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(torch.tensor([float(error is not None)], device=accelerator.device), "sum")
        if error is None and failed.item() > 0:
            raise ValueError("another process refused the run; see its error")
    if error is not None:
        raise error
    return lock


def setup(config: TrainConfig, accelerator) -> Run:
    """Models, trainable weights, reward, data and optimiser, in this order (the order fixes the RNG draws)."""
    from accelerate.utils import set_seed

    # The stock pipeline, everything frozen; our differentiable sampler over its components.
    with frozen_models_whole(accelerator):
        pipe, pipeline_class = load_pipeline(config, accelerator)
    sampler = DifferentiableSampler(pipe, config.model.family, config.sampling, config.model.resolution)
    denoiser = sampler.denoiser
    # A LoRA on the denoiser (fp32), or whole modules with model.trainable: full. Same seed on every rank: the
    # weights start identical everywhere (gradients are averaged, not weights).
    set_seed(config.seed)
    teacher = _base_teacher(denoiser, config)
    trained, lora_config = make_trainable(pipe, denoiser, config)
    if lora_config is None:
        for module in trained.values():
            module.train()
    params = [p for module in trained.values() for p in module.parameters() if p.requires_grad]
    # The reward (frozen, differentiable for the backprop methods) and the data.
    with frozen_models_whole(accelerator):
        reward_fn = load_reward(config, accelerator) if config.method not in ("sft", "dpo") else None
    prompts = load_prompts(config.data.prompts)
    if accelerator.is_main_process:
        warn_long_prompts(pipe, prompts + list(config.data.validation_prompts))
    sft_data = load_sft_data(config.data.sft_data, config.model.resolution) if config.data.sft_data else None
    uses_dpo = config.method == "dpo" or config.optim.dpo_weight > 0
    pairs = LatentPairDataset(config.data.pairs, config.model.resolution) if uses_dpo else None
    for stored in (d for d in (sft_data, pairs) if d is not None and d.holds_latents):
        stored.check_shape(pipe.vae.config.latent_channels, config.model.resolution // pipe.vae_scale_factor)
    # AdamW with a linear warm-up, then constant or cosine (`lr_factor`); with several processes the denoiser goes
    # through accelerate's `prepare` too.
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    optim = config.optim
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, optim.warmup_steps, optim.lr_schedule, config.max_steps, optim.min_lr_ratio))
    run = Run(pipe, pipeline_class, sampler, trained, lora_config, params, reward_fn, prompts, sft_data, optimizer,
              lr_schedule, RewardNormalizer(config.optim.reward_normalization), pairs=pairs, teacher=teacher)
    _prepare(run, config, accelerator)
    return run


def _base_teacher(denoiser, config: TrainConfig):
    """The frozen base of guidance distillation, as a context manager factory yielding the module to call: a copy of
    the denoiser taken before training (every weight trained), or the denoiser with its LoRA switched off. None when
    `optim.cfg_distill_weight` is 0."""
    if config.optim.cfg_distill_weight == 0:
        return None
    if config.model.trainable == "lora":
        @contextlib.contextmanager
        def switched_off():
            with adapters_disabled(denoiser):
                yield denoiser
        return switched_off
    frozen = copy.deepcopy(denoiser).requires_grad_(False).eval()
    return lambda: contextlib.nullcontext(frozen)


def _prepare(run: Run, config: TrainConfig, accelerator) -> None:
    """Optimizer and schedule through `accelerator.prepare`; with several processes the denoiser too, and the
    sampler calls the module it returns wherever a gradient is built. The trained weights are checkpointed as their
    own object (`TrainableState`), except those accelerate saves itself (sharded: FSDP, DeepSpeed)."""
    kind = run.kind = process_kind(accelerator)
    if accelerator.num_processes * config.gradient_accumulation_steps >= MAX_STREAMS:
        raise ValueError(f"processes x gradient_accumulation_steps must stay below {MAX_STREAMS} (random streams per "
                         "step)")
    checkpointed = dict(run.trained)
    if kind == "single":
        run.optimizer, run.lr_schedule = accelerator.prepare(run.optimizer, run.lr_schedule)
    else:
        if kind != "ddp" and config.model.trainable == "full":
            raise ValueError(f"model.trainable: full is not supported with {kind} (the pipeline is saved from whole "
                             "weights); use LoRA or DDP")
        if config.sampling.merge_lora and shards_weights(accelerator):
            raise ValueError(f"sampling.merge_lora=true folds the LoRA into whole base weights, but {kind} shards them; "
                             "set sampling.merge_lora=false or use DDP")
        if kind == "deepspeed":
            _fill_deepspeed_config(accelerator, config)
        with warnings.catch_warnings():  # torch 2.13 deprecates broadcast_buffers; accelerate 1.15 has no successor
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            run.wrapped, run.optimizer, run.lr_schedule = accelerator.prepare(run.trained["denoiser"], run.optimizer,
                                                                              run.lr_schedule)
        run.sampler.wrapped, run.sharded = run.wrapped, shards_weights(accelerator)
        if kind == "ddp":
            keep_model_weights_out_of_checkpoints(accelerator)
        else:  # accelerate saves and loads the prepared model (its shards) itself
            checkpointed.pop("denoiser")
        # FSDP2 replaced the parameters by sharded ones: collect them again
        run.params = [p for module in run.trained.values() for p in module.parameters() if p.requires_grad]
        run.to_average = [p for name, module in run.trained.items() if name != "denoiser"
                          for p in module.parameters() if p.requires_grad]
    accelerator.register_for_checkpointing(TrainableState(checkpointed), run.normalizer)


def _fill_deepspeed_config(accelerator, config: TrainConfig) -> None:
    """DeepSpeed's "auto" values: the batch size (accelerate reads it from data loaders, which this trainer has none
    of), clipping (accelerate would put 1.0) and the micro-batches per step, from the training config."""
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds_config["train_micro_batch_size_per_gpu"] = config.batch_size
    if ds_config.get("gradient_clipping", "auto") == "auto":
        ds_config["gradient_clipping"] = config.optim.max_grad_norm
    accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps


def _start(config: TrainConfig, accelerator, resume_from: Path | None, resume: str | None) -> tuple[int, MetricsLog]:
    """Restore a checkpoint; then the first writes: debris of killed saves removed, config.yaml, the log trimmed."""
    out = Path(config.output_dir)
    start = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start = checkpoint_step(resume_from)
        accelerator.print(f"resumed from {resume_from} at step {start}")
    elif resume is not None:
        accelerator.print(f"--resume {resume}: no complete checkpoint in {out / 'checkpoints'}; starting at step 0")
    log = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    if accelerator.is_main_process:
        remove_stale_temporaries(out)
        save_config(config, out / "config.yaml")
    log.restart(start)
    if config.log_with != "none":
        accelerator.init_trackers("train_t2i", config={k: str(v) for k, v in config.to_dict().items()})
    return start, log


def _train(config: TrainConfig, accelerator, resume_from: Path | None, resume: str | None) -> Path:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    out, rank = Path(config.output_dir), accelerator.process_index
    run = setup(config, accelerator)
    set_seed(config.seed + rank)  # global RNGs (e.g. LoRA dropout) differ per rank; the step generators too
    start, log = _start(config, accelerator, resume_from, resume)
    progress = tqdm(range(start, config.max_steps), initial=start, total=config.max_steps,
                    disable=not accelerator.is_local_main_process, desc=config.method)
    skipped_in_a_row = 0
    for step in progress:
        begin = (time.perf_counter(), time.process_time())
        loss_total, rewards, skipped = _step(run, config, accelerator, step)
        lr = run.optimizer.param_groups[0]["lr"]  # the rate this step was taken with
        grad_norm, skipped = _optimizer_step(run, config, accelerator, skipped)
        run.lr_schedule.step()
        record = _record(accelerator, step, loss_total, rewards, grad_norm, skipped, begin, lr)
        log.append(record)
        if accelerator.is_main_process:
            progress.set_postfix(loss=f"{loss_total:.4f}", reward=record["reward_mean"])
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step + 1)
        skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
        if config.optim.max_skipped_steps and skipped_in_a_row >= config.optim.max_skipped_steps:
            raise ValueError(f"stopped at step {step + 1}: {skipped_in_a_row} steps in a row were skipped (non-finite "
                             f"decoded pixels, reward, loss or gradient; the weights are those of step "
                             f"{step + 1 - skipped_in_a_row}); lower optim.lr or check the reward "
                             "(optim.max_skipped_steps sets the limit)")
        if checkpoint_due(step + 1, config.checkpoint_every, config.max_steps):
            save_checkpoint(accelerator, out / "checkpoints", step + 1)
        if checkpoint_due(step + 1, config.validate_every, config.max_steps):
            validate(run.sampler, config, accelerator, step + 1, all_ranks=run.sharded)
    _finish(run, config, accelerator)
    return out


def _step(run: Run, config: TrainConfig, accelerator, step: int):
    """Forward and backward of one optimizer step's micro-batches; returns `(loss, rewards, skipped)`."""
    loss_total, rewards, skipped = 0.0, [], False
    micro_batches = config.gradient_accumulation_steps
    for micro in range(micro_batches):
        generator = micro_batch_generator(config.seed, step, accelerator.process_index, micro, micro_batches)
        shapes = shape_generator(config.seed, step, micro) if run.sharded else None
        with accelerator.autocast():
            if config.method == "sft":
                loss = _sft_loss(run, config, generator)
            elif config.method == "dpo":
                loss = _dpo_loss(run, config, generator)
            else:
                batch = [run.prompts[int(i)] for i in torch.randint(len(run.prompts), (config.batch_size,),
                                                                    generator=generator)]
                trajectory = run.sampler.sample(batch, config.method, generator, kl=config.optim.kl_weight > 0,
                                                shape_generator=shapes)
                if not torch.isfinite(trajectory.images.detach()).all():
                    skipped = True  # NaN/Inf decoded pixels: skipped like a non-finite reward
                    _backward_skipped(run, accelerator, trajectory.images)
                    continue
                reward = run.reward_fn(trajectory.images, batch * trajectory.repeats).reward.float()
                rewards.append(reward.detach())
                loss = reward_loss(reward, trajectory.kl, config.optim, run.normalizer)
                if config.optim.sft_weight > 0:
                    loss = loss + config.optim.sft_weight * _sft_loss(run, config, generator)
                if config.optim.dpo_weight > 0:
                    loss = loss + config.optim.dpo_weight * _dpo_loss(run, config, generator)
            if config.optim.cfg_distill_weight > 0:
                loss = loss + config.optim.cfg_distill_weight * _cfg_distill_loss(run, config, generator)
            if run.kind != "deepspeed":  # DeepSpeed divides by its gradient_accumulation_steps itself
                loss = loss / micro_batches
        if not torch.isfinite(loss):
            skipped = True  # a non-finite reward or loss: no backward, the weights stay as they are
            _backward_skipped(run, accelerator, loss)
            continue
        with _accumulating(run, accelerator):
            accelerator.backward(loss)
        loss_total += float(loss.detach()) / (micro_batches if run.kind == "deepspeed" else 1)
    return loss_total, rewards, skipped


def _backward_skipped(run: Run, accelerator, tensor: torch.Tensor) -> None:
    """With several processes, a rank that skips a micro-batch still runs a backward through the prepared module,
    or the others would wait for it in DDP's / FSDP's gradient reduction. Its gradient is NaN, so that the step is
    skipped on every rank (by `guarded_step`, or by DeepSpeed's own non-finite check)."""
    if run.wrapped is not None:
        with _accumulating(run, accelerator):
            accelerator.backward(tensor.float().sum() * float("nan"))


def _accumulating(run: Run, accelerator):
    """DeepSpeed steps inside `accelerator.backward`; `accumulate` tells it which micro-batch ends the step."""
    return accelerator.accumulate(run.wrapped) if run.kind == "deepspeed" else contextlib.nullcontext()


def _optimizer_step(run: Run, config: TrainConfig, accelerator, skipped: bool) -> tuple[float, bool]:
    """Average what is not averaged yet, clip, step; a non-finite loss or gradient on any rank skips the step.
    DeepSpeed has stepped already (clipping and skipping non-finite steps itself): its gradient norm is read."""
    if run.kind == "deepspeed":
        flag = accelerator.reduce(torch.tensor([float(skipped)], device=accelerator.device), reduction="sum")
        norm = run.wrapped.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        return norm, bool(flag.item() > 0 or not math.isfinite(norm))
    return guarded_step(accelerator, run.params, run.optimizer, config.optim.max_grad_norm, skipped, run.to_average)


def _sft_batch(run: Run, config: TrainConfig, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """Prompts and latents of `optim.sft_batch_size` (or `batch_size`) samples of data.sft_data."""
    if run.sft_data is None:
        raise ValueError("the SFT loss needs data.sft_data")
    indices = torch.randint(len(run.sft_data), (config.optim.sft_batch_size or config.batch_size,), generator=generator)
    prompts, data = run.sft_data.batch(indices)
    if run.sft_data.holds_latents:
        return prompts, data.to(run.sampler.denoiser.device, run.sampler.denoiser.dtype)
    return prompts, encode_images(run.sampler, data)


def _sft_loss(run: Run, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    prompts, latents = _sft_batch(run, config, generator)
    return denoising_loss(run.sampler, latents, prompts, generator)


def _cfg_distill_loss(run: Run, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    prompts, latents = _sft_batch(run, config, generator)
    return guidance_distillation_loss(run.sampler, run.teacher, latents, prompts, generator,
                                      config.optim.cfg_distill_scale, config.optim.cfg_distill_window,
                                      config.optim.cfg_distill_rescale, config.optim.cfg_distill_center)


def _dpo_loss(run: Run, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    indices = torch.randint(len(run.pairs), (config.batch_size,), generator=generator)
    prompts, chosen, rejected = run.pairs.batch(indices)
    device, dtype = run.sampler.denoiser.device, run.sampler.denoiser.dtype
    return dpo_loss(run.sampler, chosen.to(device, dtype), rejected.to(device, dtype), prompts, generator,
                    config.optim.dpo_beta)


def _record(accelerator, step: int, loss_total: float, rewards: list, grad_norm: float, skipped: bool,
            begin: tuple[float, float], lr: float) -> dict:
    """The step's line of metrics.jsonl: the loss averaged over ranks, the rewards of all ranks. A skipped step has no
    loss or gradient: null, never 0.0 (which would read as a real step). `begin`: the step's start as
    (`time.perf_counter()`, `time.process_time()`): wall and CPU seconds (all threads of this process)."""
    if accelerator.num_processes > 1:
        loss = torch.tensor([loss_total], dtype=torch.float64, device=accelerator.device)
        loss_total = float(accelerator.reduce(loss, reduction="mean"))
    reward_all = accelerator.gather(torch.cat(rewards)) if rewards else torch.zeros(0)
    return {
        "step": step + 1,
        "loss": None if skipped else loss_total,
        "reward_mean": float(reward_all.mean()) if len(reward_all) else None,
        "reward_std": float(reward_all.std(unbiased=False)) if len(reward_all) else None,
        "grad_norm": None if skipped or not math.isfinite(grad_norm) else grad_norm,
        "skipped": skipped,
        "lr": lr,
        "seconds": time.perf_counter() - begin[0],
        "cpu_seconds": time.process_time() - begin[1],
        "peak_mem_mb": peak_memory_mb(accelerator.device),
    }


def _finish(run: Run, config: TrainConfig, accelerator) -> None:
    """Final checkpoint, the LoRA in diffusers format (or the whole pipeline), the last validation grid."""
    out = Path(config.output_dir)
    save_checkpoint(accelerator, out / "checkpoints", config.max_steps)
    for module in run.trained.values():
        module.eval()
    # sharded LoRA weights are gathered on every rank (a collective); the main process writes them
    state = full_trained_state(run.sampler.denoiser) if run.kind in ("fsdp", "deepspeed") else None
    if accelerator.is_main_process:
        if run.lora_config is not None:
            save_lora(out / "lora", run.pipeline_class, run.sampler.denoiser, run.lora_config, state)
        else:
            run.pipe.save_pretrained(out / "pipeline")
    validate(run.sampler, config, accelerator, config.max_steps, all_ranks=run.sharded)
    accelerator.end_training()
