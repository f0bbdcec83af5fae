"""Reading a reward folder's files and user images (paths, PIL images, tensors) for scoring, with one-line errors
for broken inputs: a missing or damaged weights file, non-finite weights, an unreadable image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def pil_to_pixels(image) -> torch.Tensor:
    """A PIL image (any mode) -> `(3, H, W)` uint8 RGB (decodes every pixel)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def pil_to_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) -> `(3, H, W)` float in [0, 1]."""
    return pil_to_pixels(image).float() / 255.0


def load_image(path) -> torch.Tensor:
    """An image file -> `(3, H, W)` float in [0, 1]; a missing, truncated or non-image file is a one-line error."""
    return load_pixels(path).float() / 255.0


def load_pixels(path) -> torch.Tensor:
    """An image file -> `(3, H, W)` uint8, as stored (the checks of `load_image`)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path} is a directory, not an image file")
    if not path.is_file():
        raise ValueError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            return pil_to_pixels(image)  # decodes every pixel: a truncated file fails here
    except UnidentifiedImageError:
        raise ValueError(f"image file {path} is not an image Pillow can read (wrong format or corrupt)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"image file {path} is damaged ({error}); re-save or re-download it") from None


def images_to_batches(images, prompts, batch_size: int):
    """Yield `(images (b, 3, H, W), prompts)`; consecutive images of equal size share a batch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
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


COMPLETE_FOLDER = ("a complete reward folder holds config.json, model.safetensors (or shards with "
                   "model.safetensors.index.json), the tokenizer files, preprocessor_config.json and zreward_config.json")


def check_weight_files(path) -> None:
    """Refuse a reward folder whose backbone weights are missing or whose safetensors files are damaged
    (truncated, overwritten header), naming the file. Reads only the headers."""
    from safetensors import safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{index} is damaged ({error}); {COMPLETE_FOLDER}") from None
    elif (path / "model.safetensors").is_file():
        names = ["model.safetensors"]
    elif (path / "pytorch_model.bin").is_file():
        return  # a pickle checkpoint: transformers reads and checks it
    else:
        raise ValueError(f"{path} has no model.safetensors: the backbone weights are missing; {COMPLETE_FOLDER}")
    for name in names:
        file = path / name
        if not file.is_file():
            raise ValueError(f"{file} is missing (listed in {index.name}); {COMPLETE_FOLDER}")
        try:
            with safe_open(file, framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors.SafetensorError, OSError: whatever the damage is
            raise ValueError(f"{file} is damaged ({error}); replace it with a complete copy") from None


def check_finite_weights(model: torch.nn.Module, path) -> None:
    """Refuse a backbone with NaN or Inf weights (e.g. overwritten bytes): it would return NaN rewards."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"the weights in {path} are not finite (NaN or Inf in {name}); the file is damaged, "
                             "replace it with a complete copy")


def text_context_length(model_config) -> int | None:
    """The language model's number of positions, from a transformers config (top level or `text_config`)."""
    for config in (getattr(model_config, "text_config", None), model_config):
        length = getattr(config, "max_position_embeddings", None) if config is not None else None
        if isinstance(length, int) and length > 0:
            return length
    return None
