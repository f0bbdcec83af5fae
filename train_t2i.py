#!/usr/bin/env python
"""Fine-tune a LoRA on a text-to-image diffusion model: reward backprop (DRaFT-K, DRaFT-LV, ReFL, full) or SFT.

    python train_t2i.py --config configs/tiny_debug.yaml [key.sub=value ...] [--resume latest | --overwrite]
    accelerate launch --multi_gpu --num_processes 8 train_t2i.py --config configs/sdxl.yaml
    ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2 train_t2i.py --config ...  # 2 CPU ranks

Output folder (`output_dir`):
    lora/pytorch_lora_weights.safetensors   diffusers format, loads with `pipe.load_lora_weights(OUT/lora)`
    pipeline/                               instead of lora/ with model.trainable: full (a stock pipeline folder)
    checkpoints/step_N/                     accelerate state (trained weights, optimizer, LR, RNG), crash-safe
    metrics.jsonl                           one JSON object per optimizer step
    config.yaml                             the resolved config
    validation/step_N.png                   image grids of the fixed validation prompts

A folder that already holds a run is refused unless `--resume` (continue it: the model settings must match) or
`--overwrite` (clear it first); two runs cannot write into one folder at once (a lock); bad input is one line on
stderr and exit code 2 (`--debug` shows the traceback), and nothing is written before the input is validated.

Reads top to bottom: 1 config, 2 accelerator, 3 diffusion model, 4 LoRA, 5 reward, 6 optimiser,
7 resume, 8 training loop, 9 save. See SPEC §6 and `zr_align/train_config.py` for every option.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import torch

from zr_align.checkpointing import (RunLock, TrainableState, check_run_folder, checkpoint_step, clear_run_outputs,
                                    remove_stale_temporaries, save_checkpoint)
from zr_align.data import load_prompts, load_sft_data
from zr_align.denoisers import get_denoiser_family
from zr_align.distributed import guarded_step
from zr_align.lora import add_lora, lora_parameters, save_lora
from zr_align.sampling import DifferentiableSampler
from zr_align.sft import denoising_loss, encode_images
from zr_align.train_config import BACKPROP_METHODS, TrainConfig, load_config, plain_dict, save_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of overrides of the defaults in zr_align/train_config.py")
    parser.add_argument("--resume", help="'latest' or a checkpoints/step_N folder: continue that run exactly")
    parser.add_argument("--overwrite", action="store_true",
                        help="clear a folder that holds an earlier run (without it, such a folder is refused)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an input error")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=3e-4")
    return parser.parse_intermixed_args(argv)  # options and overrides in any order


def step_generator(config: TrainConfig, step: int, rank: int) -> torch.Generator:
    """All randomness of optimizer step `step` on `rank` comes from here, so a resumed run replays exactly."""
    return torch.Generator().manual_seed(config.seed * 1_000_003 + step * 7919 + rank)


def load_pipeline(config: TrainConfig, accelerator):
    """The stock diffusers pipeline of `model.family` from a local folder, or random tiny components."""
    family = get_denoiser_family(config.model.family)
    path = config.model.path
    if path.startswith("tiny:"):
        from zr_align.testing.diffusion import tiny_pipeline

        cache = Path(config.output_dir) / ".tiny" / path[5:]
        with accelerator.main_process_first():
            if not (cache / "model_index.json").is_file():
                tiny_pipeline(path[5:], out_dir=cache, prediction_type=config.model.prediction_type)
        path = str(cache)
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
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).to(accelerator.device)
    return pipe, pipeline_class


def load_reward(config: TrainConfig, accelerator):
    """The reward named by `reward.kind`; a backprop method refuses a reward that is not differentiable."""
    if config.reward.kind == "jpeg_compressibility":
        from zr_align.rewards.compressibility import JpegCompressibility

        reward = JpegCompressibility()
    else:
        from zr_align.rewards import ZRewardModel

        path = config.reward.path
        if path.startswith("tiny:"):
            from zr_align.testing import tiny_reward_model

            cache = Path(config.output_dir) / ".tiny" / f"reward_{path[5:]}"
            with accelerator.main_process_first():
                if not (cache / "zreward_config.json").is_file():
                    tiny_reward_model(path[5:], cache)
            path = str(cache)
        overrides = {"clamp": config.reward.clamp}
        if config.reward.kappa is not None:
            overrides["kappa"] = config.reward.kappa
        if config.reward.weights is not None:
            overrides["weights"] = config.reward.weights
        reward = ZRewardModel.from_pretrained(path, torch_dtype=DTYPES[config.reward.dtype], **overrides)
        reward = reward.to(accelerator.device)
        if config.reward.gradient_checkpointing:
            reward.enable_gradient_checkpointing()
    if config.method in BACKPROP_METHODS and not getattr(reward, "differentiable", False):
        raise ValueError(f"reward {config.reward.kind} is not differentiable, so method {config.method} cannot "
                         "back-propagate through it; use a differentiable reward (reward.kind: zreward)")
    return reward


class RewardNormalizer:
    """Scales the reward before the loss. Only the scale matters for the gradient of a mean; a centred value
    is logged. "running" keeps an exponential mean/variance (saved in checkpoints for exact resume)."""

    def __init__(self, mode: str, momentum: float = 0.9):
        self.mode, self.momentum = mode, momentum
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return reward
        if self.mode == "batch":
            return (reward - reward.mean().detach()) / (reward.std(unbiased=False).detach() + 1e-6)
        batch_mean, batch_var = float(reward.detach().mean()), float(reward.detach().var(unbiased=False))
        m = 0.0 if self.count == 0 else self.momentum
        self.mean = m * self.mean + (1 - m) * batch_mean
        self.var = m * self.var + (1 - m) * batch_var
        self.count += 1
        return (reward - self.mean) / math.sqrt(self.var + 1e-6)

    def state_dict(self):
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state):
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak RSS on CPU (ru_maxrss is in kB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_grid(images: torch.Tensor, path: Path, columns: int = 4) -> None:
    from PIL import Image

    rows = math.ceil(len(images) / columns)
    _, h, w = images.shape[1:]
    grid = torch.ones(3, rows * h, min(columns, len(images)) * w)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image.clamp(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ValueError as error:  # bad input: one line, no traceback, nothing saved is touched
        if args.debug:
            raise
        print(f"train_t2i.py: error: {error}", file=sys.stderr)
        return 2
    return 0


def _agree(accelerator, error: ValueError | None) -> None:
    """Raise `error` on its rank, and a pointer to it on the others, so that no rank waits for a failed one."""
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(torch.tensor([float(error is not None)], device=accelerator.device), "sum")
        if error is None and failed.item() > 0:
            raise ValueError("another process refused the run; see its error")
    if error is not None:
        raise error


def run(args) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    # 1. Config and output folder: everything is validated before anything is written ------------------------
    config = load_config(args.config, args.overrides)
    out = Path(config.output_dir)
    resume_from = check_run_folder(out, args.resume, args.overwrite, plain_dict(config), config.max_steps)

    # 2. Accelerator: processes, mixed precision, trackers; the main process locks the folder ---------------
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=None if config.log_with == "none" else config.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    lock, error = RunLock(out), None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except ValueError as refused:
            error = refused
    _agree(accelerator, error)
    try:
        if args.overwrite and accelerator.is_main_process:
            clear_run_outputs(out)
        accelerator.wait_for_everyone()
        return train(config, accelerator, resume_from, args.resume)
    finally:
        lock.release()


def train(config: TrainConfig, accelerator, resume_from: Path | None, resume: str | None) -> Path:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    out = Path(config.output_dir)
    rank = accelerator.process_index

    # 3. Diffusion model: stock pipeline, everything frozen -------------------------------------------------
    pipe, pipeline_class = load_pipeline(config, accelerator)
    sampler = DifferentiableSampler(pipe, config.model.family, config.sampling, config.model.resolution)
    denoiser = sampler.denoiser

    # 4. Trainable weights: a LoRA on the denoiser (fp32), or whole modules with model.trainable: full ---------
    # Same seed on every rank: the weights start identical everywhere (gradients are averaged, not weights).
    set_seed(config.seed)
    trained = {"denoiser": denoiser}
    if config.model.trainable == "lora":
        lora_config = add_lora(denoiser, config.model.family, rank=config.lora.rank, alpha=config.lora.alpha,
                               dropout=config.lora.dropout, target_modules=config.lora.targets)
    else:
        lora_config = None
        if config.model.train_text_encoder:
            trained["text_encoder"] = pipe.text_encoder
        for module in trained.values():
            module.to(torch.float32).requires_grad_(True).train()
    params = [p for module in trained.values() for p in module.parameters() if p.requires_grad]

    # 5. Reward (frozen, differentiable for the backprop methods) and data ----------------------------------
    reward_fn = load_reward(config, accelerator) if config.method != "sft" else None
    prompts = load_prompts(config.data.prompts)
    if accelerator.is_main_process:
        warn_long_prompts(pipe, prompts + list(config.data.validation_prompts))
    sft_data = load_sft_data(config.data.sft_data, config.model.resolution) if config.data.sft_data else None

    # 6. Optimiser and LR warm-up ---------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr, betas=config.optim.betas,
                                  weight_decay=config.optim.weight_decay)
    warmup = max(1, config.optim.warmup_steps)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    optimizer, lr_schedule = accelerator.prepare(optimizer, lr_schedule)
    normalizer = RewardNormalizer(config.optim.reward_normalization)
    # The denoiser is not wrapped in DDP (the sampler calls it through the pipeline): gradients are averaged
    # across ranks by hand below, and the trained weights are checkpointed as their own object.
    accelerator.register_for_checkpointing(TrainableState(trained), normalizer)

    set_seed(config.seed + rank)  # global RNGs (e.g. LoRA dropout) differ per rank; the step generators too
    # 7. Resume; then the first writes: debris of killed saves removed, config.yaml, metrics.jsonl trimmed ----
    start = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start = checkpoint_step(resume_from)
        accelerator.print(f"resumed from {resume_from} at step {start}")
    elif resume is not None:
        accelerator.print(f"--resume {resume}: no complete checkpoint in {out / 'checkpoints'}; starting at step 0")
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        remove_stale_temporaries(out)
        save_config(config, out / "config.yaml")
        kept = [line for line in (metrics_path.read_text().splitlines() if metrics_path.exists() else [])
                if start and json.loads(line)["step"] <= start]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    if config.log_with != "none":
        accelerator.init_trackers("train_t2i", config={k: str(v) for k, v in config.to_dict().items()})

    # 8. Training loop --------------------------------------------------------------------------------------
    progress = tqdm(range(start, config.max_steps), initial=start, total=config.max_steps,
                    disable=not accelerator.is_local_main_process, desc=config.method)
    skipped_in_a_row = 0
    for step in progress:
        begin = time.perf_counter()
        generator = step_generator(config, step, rank)
        loss_total, rewards, skipped = 0.0, [], False
        for _ in range(config.gradient_accumulation_steps):
            with accelerator.autocast():
                if config.method == "sft":
                    loss = sft_loss(sampler, sft_data, config.batch_size, generator)
                else:
                    batch = [prompts[int(i)] for i in torch.randint(len(prompts), (config.batch_size,),
                                                                    generator=generator)]
                    trajectory = sampler.sample(batch, config.method, generator, kl=config.optim.kl_weight > 0)
                    if not torch.isfinite(trajectory.images.detach()).all():
                        skipped = True  # NaN/Inf decoded pixels: skipped like a non-finite reward
                        continue
                    out_reward = reward_fn(trajectory.images, batch * trajectory.repeats)
                    reward = out_reward.reward.float()
                    rewards.append(reward.detach())
                    loss = -config.optim.loss_scale * normalizer(reward).mean()
                    if trajectory.kl is not None:
                        loss = loss + config.optim.kl_weight * trajectory.kl
                    if config.optim.sft_weight > 0:
                        loss = loss + config.optim.sft_weight * sft_loss(sampler, sft_data, config.batch_size,
                                                                         generator)
                loss = loss / config.gradient_accumulation_steps
            if not torch.isfinite(loss):
                skipped = True  # a non-finite reward or loss: no backward, the weights stay as they are
                continue
            accelerator.backward(loss)
            loss_total += float(loss.detach())

        # Average gradients across ranks, clip, step; a non-finite loss or gradient on any rank skips the step.
        grad_norm, skipped = guarded_step(accelerator, params, optimizer, config.optim.max_grad_norm, skipped)
        lr_schedule.step()

        reward_all = accelerator.gather(torch.cat(rewards)) if rewards else torch.zeros(0)
        record = {  # a skipped step has no loss or gradient: null, never 0.0 (which would read as a real step)
            "step": step + 1,
            "loss": None if skipped else loss_total,
            "reward_mean": float(reward_all.mean()) if len(reward_all) else None,
            "reward_std": float(reward_all.std(unbiased=False)) if len(reward_all) else None,
            "grad_norm": None if skipped or not math.isfinite(grad_norm) else grad_norm,
            "skipped": skipped,
            "seconds": time.perf_counter() - begin,
            "peak_mem_mb": peak_memory_mb(accelerator.device),
        }
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            progress.set_postfix(loss=f"{loss_total:.4f}", reward=record["reward_mean"])
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step + 1)
        skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
        if config.optim.max_skipped_steps and skipped_in_a_row >= config.optim.max_skipped_steps:
            raise ValueError(f"stopped at step {step + 1}: {skipped_in_a_row} steps in a row were skipped (non-finite "
                             f"decoded pixels, reward, loss or gradient; the weights are those of step "
                             f"{step + 1 - skipped_in_a_row}); lower optim.lr or check the reward "
                             "(optim.max_skipped_steps sets the limit)")

        done = step + 1
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.max_steps:
            save_checkpoint(accelerator, out / "checkpoints", done)
        if config.validate_every and done % config.validate_every == 0 and done < config.max_steps:
            validate(sampler, config, accelerator, done)

    # 9. Save: final checkpoint, LoRA in diffusers format (or the whole pipeline), validation grid -----------
    save_checkpoint(accelerator, out / "checkpoints", config.max_steps)
    for module in trained.values():
        module.eval()
    if accelerator.is_main_process:
        if lora_config is not None:
            save_lora(out / "lora", pipeline_class, denoiser, lora_config)
        else:
            pipe.save_pretrained(out / "pipeline")
    validate(sampler, config, accelerator, config.max_steps)
    accelerator.end_training()
    return out


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


def sft_loss(sampler, data, batch_size, generator):
    if data is None:
        raise ValueError("the SFT loss needs data.sft_data")
    indices = torch.randint(len(data), (batch_size,), generator=generator)
    prompts, images = data.batch(indices)
    return denoising_loss(sampler, encode_images(sampler, images), prompts, generator)


@torch.no_grad()
def validate(sampler, config, accelerator, step):
    """A grid of the validation prompts, same seed every time (main process only)."""
    if not accelerator.is_main_process or not config.data.validation_prompts:
        return
    generator = torch.Generator().manual_seed(config.seed)
    images = sampler.sample(config.data.validation_prompts, "draft_k", generator).images.cpu()
    save_grid(images, Path(config.output_dir) / "validation" / f"step_{step}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", images, step)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
