"""What one optimizer step of either trainer shares: its seed, its learning rate, the guarded step (gradient
averaging across ranks where no DDP / FSDP module did it, clipping, skipping non-finite steps), and its line in
`metrics.jsonl`.

The diffusion trainer calls its denoiser through the module accelerate's `prepare` made of it (DDP, FSDP,
DeepSpeed), which reduces the gradients; the reward-model trainer calls its model through wrappers, so its
gradients are averaged here: one all-reduce of the flattened trainable gradients per step.
"""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path

import torch


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """All randomness of optimizer step `step` on `rank` comes from here, so a resumed run replays exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + rank)


def lr_factor(step: int, warmup_steps: int, schedule: str = "constant", max_steps: int = 1,
              min_lr_ratio: float = 0.0) -> float:
    """The learning-rate multiplier of `step`: linear warm-up over `warmup_steps`, then constant, or a cosine
    down to `min_lr_ratio` at `max_steps` (Loshchilov & Hutter, SGDR, 2017)."""
    warmup = max(1, warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak RSS on CPU (ru_maxrss is in kB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MetricsLog:
    """`metrics.jsonl`: one JSON object per optimizer step, written by the main process only.

    `restart(start)` keeps the lines of steps `<= start` (a resumed run continues its log; a fresh run, start 0,
    empties it), so the log never holds steps that the weights did not go through."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def restart(self, start: int) -> None:
        if not self.enabled:
            return
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if start and json.loads(line)["step"] <= start]
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def checkpoint_due(done: int, every: int, max_steps: int) -> bool:
    """A periodic checkpoint after `done` steps (the final one is saved separately, after the loop)."""
    return bool(every) and done % every == 0 and done < max_steps


def guarded_step(accelerator, params: list[torch.nn.Parameter], optimizer, max_grad_norm: float,
                 skipped: bool, to_average: list[torch.nn.Parameter] | None = None) -> tuple[float, bool]:
    """Average gradients across ranks, clip, step; skip (and clear) when any rank saw a non-finite loss or the
    gradient is not finite. Returns `(grad_norm, skipped)`; the weights are untouched by a skipped step.

    Args:
        to_average (*optional*): the parameters whose gradients are still per rank (default: all of `params`);
            those of a module that DDP / FSDP wrapped are averaged already.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # a zero gradient still takes AdamW's weight decay and step count
    to_average = params if to_average is None else to_average
    if accelerator.num_processes > 1 and to_average:
        flat = accelerator.reduce(torch.cat([p.grad.flatten() for p in to_average]), reduction="mean")
        offset = 0
        for p in to_average:
            p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
    flag = torch.tensor([float(skipped)], device=accelerator.device)
    skipped_any = accelerator.reduce(flag, reduction="sum") if accelerator.num_processes > 1 else flag
    grad_norm = _grad_norm(params)
    if skipped_any.item() > 0 or not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, True
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, False


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    """The L2 norm of all gradients together; FSDP's gradients are shards (DTensors), whose norm is reduced."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params]
    if any(isinstance(g, DTensor) for g in grads):
        norm = torch.nn.utils.get_total_norm(grads)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    return float(torch.cat([g.flatten() for g in grads]).norm())
