"""Prompts for reward fine-tuning and (prompt, image) pairs for SFT; TinyWorld (`zr_align.tinyworld`) is the
default source of both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..tinyworld.grammar import all_prompts, split_prompts
from ..tinyworld.render import render


def load_prompts(path: str | None) -> list[str]:
    """Prompts from a `.txt` (one per line) or `.jsonl` (a "prompt" field) file, `tinyworld:<split>` (a
    TinyWorld prompt split), or all 180 TinyWorld prompts when `path` is None."""
    if path is None:
        return all_prompts()
    if path.startswith("tinyworld:"):
        splits = split_prompts(0).as_dict()
        split = path.split(":", 1)[1]
        if split not in splits:
            raise ValueError(f"unknown TinyWorld split {split!r}; use one of {', '.join(splits)}")
        return splits[split]
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    if path.suffix == ".jsonl":
        prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    else:
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    return prompts


class ImagePromptDataset:
    """(prompt, image) pairs from a folder with `metadata.jsonl` or from a `.jsonl` file.

    Each line holds `"prompt"` and `"image"` (or `"file_name"`, the Hugging Face imagefolder convention), an
    image path relative to the file. Images are loaded as `(3, R, R)` float tensors in [0, 1].
    """

    def __init__(self, path: str | Path, resolution: int):
        path = Path(path)
        index = path / "metadata.jsonl" if path.is_dir() else path
        if not index.is_file():
            raise ValueError(f"SFT data {path} is neither a .jsonl file nor a folder with metadata.jsonl")
        self.root = index.parent
        self.items = []
        for number, line in enumerate(index.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            image = record.get("image", record.get("file_name"))
            if "prompt" not in record or image is None:
                raise ValueError(f"{index} line {number} needs 'prompt' and 'image' (or 'file_name') fields")
            self.items.append((record["prompt"], self.root / image))
        if not self.items:
            raise ValueError(f"SFT data {index} is empty")
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        from PIL import Image

        prompt, file = self.items[index]
        if not file.is_file():
            raise ValueError(f"SFT image {file} does not exist")
        with Image.open(file) as image:
            image = image.convert("RGB")
            if image.size != (self.resolution, self.resolution):
                image = image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8).copy()
        return prompt, torch.from_numpy(array).permute(2, 0, 1).float() / 255.0

    def batch(self, indices) -> tuple[list[str], torch.Tensor]:
        pairs = [self[int(i)] for i in indices]
        return [p for p, _ in pairs], torch.stack([x for _, x in pairs])


class TinyWorldRenders:
    """Endless (prompt, image) pairs rendered on the fly from a TinyWorld prompt split (`"tinyworld:train"`).

    Item `i` is prompt `split[i % len(split)]` drawn with layout seed `i`: deterministic, so a resumed run sees
    the same data. `len` is nominal (10**9): indices are drawn at random by the trainer.
    """

    def __init__(self, split: str, resolution: int, seed: int = 0):
        splits = split_prompts(seed).as_dict()
        if split not in splits:
            raise ValueError(f"unknown TinyWorld split {split!r}; use one of {', '.join(splits)}")
        if resolution != 64:
            raise ValueError(f"TinyWorld renders are 64x64, got model.resolution {resolution}; set it to 64")
        self.prompts = splits[split]

    def __len__(self) -> int:
        return 10**9

    def batch(self, indices) -> tuple[list[str], torch.Tensor]:
        prompts, images = [], []
        for i in (int(i) for i in indices):
            prompt = self.prompts[i % len(self.prompts)]
            prompts.append(prompt)
            images.append(torch.from_numpy(render(prompt, seed=i).image.copy()).permute(2, 0, 1))
        return prompts, torch.stack(images).float() / 255.0


def load_sft_data(spec: str, resolution: int):
    """`tinyworld:<split>` (renders on the fly) or a folder / .jsonl of (prompt, image) pairs."""
    if spec.startswith("tinyworld:"):
        return TinyWorldRenders(spec.split(":", 1)[1], resolution)
    return ImagePromptDataset(spec, resolution)
