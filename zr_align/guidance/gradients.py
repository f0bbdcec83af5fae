"""The per-image step direction shared by reward guidance and noise optimisation."""

from __future__ import annotations

import warnings

import torch


def step_direction(grad: torch.Tensor, normalize: bool = True, max_grad_norm: float | None = None) -> torch.Tensor:
    """Each image's gradient `(B, ...)` made into a step direction.

    `normalize` rescales it to unit root-mean-square, so a step's length is set by the caller's scale alone
    (the reward's scale and the depth of the graph drop out); otherwise `max_grad_norm` clips its L2 norm. An
    image whose gradient is not finite gets a zero step (a warning says so): its latents stay as they were.
    """
    flat = grad.detach().flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        warnings.warn(f"reward gradient not finite for {int((~finite).sum())} of {len(finite)} images; "
                      "their latents are left unchanged at this step", stacklevel=2)
        flat = torch.where(finite[:, None], flat, torch.zeros_like(flat))
    if normalize:
        flat = flat / flat.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    elif max_grad_norm is not None:
        flat = flat * (max_grad_norm / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    return flat.view_as(grad)
