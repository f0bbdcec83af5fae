"""Prompts for reward fine-tuning and (prompt, image) pairs for SFT; TinyWorld (`zr_align.tinyworld`) is the
default source of both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..tinyworld.grammar import all_prompts, split_prompts
from ..tinyworld.render import render

# A folder of SFT data holding latents rather than images: this file beside its `samples.jsonl`
# (`zr_align.guidance.generate_folder(save_latents=True)`, `zr-align generate --save-latents`).
LATENTS_FILE = "latents.safetensors"


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

    holds_latents = False  # `batch` gives images: the SFT loss encodes them with the VAE

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

    holds_latents = False

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


class _StoredLatents:
    """A folder of latents (`latents.safetensors`: `"latents"` `(N, C, h, w)`, scaled as the denoiser sees them) and
    a .jsonl index whose lines name a `"prompt"` and rows of those latents (the keys `ROWS`). `batch` gives the
    prompts and one latent tensor per key: the losses take them as x0, with no VAE encode in between."""

    holds_latents = True
    INDEX, ROWS, CONFIG_KEY, HINT = "", (), "", ""

    def __init__(self, folder: str | Path, resolution: int):
        from safetensors.torch import load_file

        folder, self.resolution = Path(folder), resolution
        index = folder / self.INDEX
        if not (folder / LATENTS_FILE).is_file() or not index.is_file():
            missing = LATENTS_FILE if not (folder / LATENTS_FILE).is_file() else self.INDEX
            raise ValueError(f"{self.CONFIG_KEY} {folder} has no {missing}; write the folder with {self.HINT}")
        self.latents = load_file(str(folder / LATENTS_FILE)).get("latents")
        if self.latents is None or self.latents.ndim != 4:
            raise ValueError(f"{folder / LATENTS_FILE} needs a 'latents' tensor (N, C, h, w); write it with {self.HINT}")
        self.latents = self.latents.float()
        lines = [(n, json.loads(line)) for n, line in enumerate(index.read_text().splitlines(), 1) if line.strip()]
        if not lines:
            raise ValueError(f"{index} is empty")
        self.items = []
        for number, record in lines:
            rows = [record.get(key) for key in self.ROWS]
            if "prompt" not in record or not all(isinstance(row, int) and not isinstance(row, bool)
                                                 and 0 <= row < len(self.latents) for row in rows):
                names = " / ".join(f"'{key}'" for key in self.ROWS)
                raise ValueError(f"{index}:{number} needs a 'prompt' and a {names} row in 0..{len(self.latents) - 1}"
                                 f"; write the folder with {self.HINT}")
            self.items.append((record["prompt"], *rows))

    def __len__(self) -> int:
        return len(self.items)

    def check_shape(self, channels: int, side: int) -> None:
        """Refuse latents the denoiser cannot take, before any step runs."""
        shape = tuple(self.latents.shape[1:])
        if shape != (channels, side, side):
            raise ValueError(f"stored latents have shape {shape} but model.resolution {self.resolution} needs "
                             f"{(channels, side, side)}; generate them with the same model and resolution")

    def batch(self, indices) -> tuple:
        items = [self.items[int(i)] for i in indices]
        return ([item[0] for item in items],
                *(self.latents[[item[1 + k] for item in items]] for k in range(len(self.ROWS))))


class LatentPromptDataset(_StoredLatents):
    """(prompt, latents) pairs from a folder with `samples.jsonl` (a `"prompt"` and its row `"latent"` per line)
    and `latents.safetensors`.

    Written by `zr-align generate --save-latents` (reward-guided, best-of-N or plain samples). The SFT loss
    trains on these latents as they are: no VAE encode and decode between them and the denoiser, whose round
    trip would undo part of what guidance changed (on TinyWorld it puts colour casts back on a quarter of even
    clean renders). This is how a sampler's improvement is distilled into a LoRA, in the spirit of reward-ranked
    fine-tuning (RAFT, Dong et al. 2023) with latents kept instead of images.
    """

    INDEX, ROWS, CONFIG_KEY, HINT = "samples.jsonl", ("latent",), "data.sft_data", "`zr-align generate --save-latents`"


class LatentPairDataset(_StoredLatents):
    """Preference pairs `(prompt, chosen latents, rejected latents)` for Diffusion-DPO (`method: dpo`) from a
    folder with `pairs.jsonl` (`"prompt"`, `"chosen"` and `"rejected"` rows) and `latents.safetensors`.

    Written by `zr-align generate --mode best_of_n --save-pairs`: per prompt, the candidate the reward scores
    highest and the one it scores lowest. Any reward can rank them, differentiable or not.
    """

    INDEX, ROWS, CONFIG_KEY = "pairs.jsonl", ("chosen", "rejected"), "data.pairs"
    HINT = "`zr-align generate --mode best_of_n --save-pairs`"


def load_sft_data(spec: str, resolution: int):
    """`tinyworld:<split>` (renders on the fly), a folder with `latents.safetensors` (latents, no VAE encode), or a
    folder / .jsonl of (prompt, image) pairs."""
    if spec.startswith("tinyworld:"):
        return TinyWorldRenders(spec.split(":", 1)[1], resolution)
    if (Path(spec) / LATENTS_FILE).is_file():
        return LatentPromptDataset(spec, resolution)
    return ImagePromptDataset(spec, resolution)
