"""`VisionInputs`: what a preprocessor hands to a reward model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class VisionInputs:
    """Model-ready image tensors of one batch, plus the text that stands for each image in the prompt.

    Args:
        tensors (`dict[str, torch.Tensor]`): every tensor has the image batch as its leading dim, so a batch
            can be re-indexed (e.g. repeated once per rubric dimension) without knowing the family.
        image_text (`str`): what replaces the family's image placeholder in the prompt text, e.g.
            `"<|image_pad|>" * 16` for Qwen2-VL. Equal-size images share one string.
        flatten (`tuple[str, ...]`): keys whose first two dims are merged before the forward (Qwen-VL packs the
            patches of all images into one `(sum_patches, dim)` tensor).
    """

    tensors: dict[str, torch.Tensor]
    image_text: str
    flatten: tuple[str, ...] = field(default=())

    @property
    def batch_size(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def model_inputs(self, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Keyword arguments for the VLM forward, for the images at `index` (all images when None)."""
        out = {}
        for key, value in self.tensors.items():
            if index is not None:
                value = value[index]
            if key in self.flatten:
                value = value.flatten(0, 1)
            out[key] = value
        return out
