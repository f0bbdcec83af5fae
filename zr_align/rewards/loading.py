"""Turning user images (paths, PIL images, tensors) into batches for non-differentiable scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) -> `(3, H, W)` float in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def load_image(path) -> torch.Tensor:
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file {path} does not exist")
    with Image.open(path) as image:
        return pil_to_tensor(image)


def images_to_batches(images, prompts, batch_size: int):
    """Yield `(images (b, 3, H, W), prompts)`; consecutive images of equal size share a batch."""
    if isinstance(images, torch.Tensor):
        items = list(images) if images.ndim == 4 else [images]
    else:
        items = [load_image(x) if isinstance(x, (str, Path)) else pil_to_tensor(x) for x in images]
    if isinstance(prompts, str):
        prompts = [prompts] * len(items)
    if len(prompts) != len(items):
        raise ValueError(f"got {len(prompts)} prompts for {len(items)} images; pass one prompt per image")
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and end - start < batch_size and items[end].shape == items[start].shape:
            end += 1
        yield torch.stack(items[start:end]), list(prompts[start:end])
        start = end


def load_tokenizer(path):
    """The tokenizer saved in `path`, exactly as saved.

    `AutoTokenizer` ignores the saved tokenizer class for some model types (e.g. `qwen3_5` in transformers 5.x)
    and rebuilds the family's own pre-tokenizer around the vocabulary, which can split our single-token score
    bins. A folder whose tokenizer is a plain `tokenizer.json` is therefore loaded as such.
    """
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    path = Path(path)
    config_file = path / "tokenizer_config.json"
    if config_file.is_file() and (path / "tokenizer.json").is_file():
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
        if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return TokenizersBackend.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)
