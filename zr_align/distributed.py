"""Gradient averaging across ranks without DDP, and the guarded optimizer step both trainers use.

Our trainers call their models through pipelines and wrappers (not through a `DistributedDataParallel`
module), so gradients are averaged by hand: one all-reduce of the flattened trainable gradients per step.
"""

from __future__ import annotations

import math

import torch


def guarded_step(accelerator, params: list[torch.nn.Parameter], optimizer, max_grad_norm: float,
                 skipped: bool) -> tuple[float, bool]:
    """Average gradients across ranks, clip, step; skip (and clear) when any rank saw a non-finite loss or the
    gradient is not finite. Returns `(grad_norm, skipped)`; the weights are untouched by a skipped step."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    if accelerator.num_processes > 1:
        flat = accelerator.reduce(flat, reduction="mean")
    flag = torch.tensor([float(skipped)], device=flat.device)
    skipped_any = accelerator.reduce(flag, reduction="sum") if accelerator.num_processes > 1 else flag
    grad_norm = float(flat.norm())
    if skipped_any.item() > 0 or not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, True
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, False
