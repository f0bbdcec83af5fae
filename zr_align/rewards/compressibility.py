"""JPEG compressibility: the classic non-differentiable reward of DDPO (Black et al., 2023).

Reward = -(size of the JPEG at quality 95 in kB). It goes through PIL's encoder, so it has no gradient:
`differentiable = False`, and the backprop trainers refuse it (policy-gradient methods could use it).
"""

from __future__ import annotations

import io

import numpy as np
import torch

from .output import RewardOutput


class JpegCompressibility:
    differentiable = False

    def __init__(self, quality: int = 95):
        self.quality = quality

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        from PIL import Image

        arrays = (images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        sizes = []
        for array in arrays:
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000.0)
        return RewardOutput(reward=-torch.tensor(sizes, device=images.device))
