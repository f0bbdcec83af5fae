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


def _load_latents(folder: Path, index: Path, hint: str) -> torch.Tensor:
    from safetensors.torch import load_file

    if not index.is_file():
        raise ValueError(f"{folder} has no {index.name} beside {LATENTS_FILE}; write the folder with {hint}")
    latents = load_file(str(folder / LATENTS_FILE)).get("latents")
    if latents is None or latents.ndim != 4:
        raise ValueError(f"{folder / LATENTS_FILE} needs a 'latents' tensor (N, C, h, w); write it with {hint}")
    return latents.float()


def _check_latent_shape(latents: torch.Tensor, resolution: int, channels: int, side: int) -> None:
    shape = tuple(latents.shape[1:])
    if shape != (channels, side, side):
        raise ValueError(f"stored latents have shape {shape} but model.resolution {resolution} needs "
                         f"{(channels, side, side)}; generate them with the same model and resolution")


class LatentPromptDataset:
    """(prompt, latents) pairs from a folder with `samples.jsonl` and `latents.safetensors` (`"latents"`:
    `(N, C, h, w)`, scaled as the denoiser sees them), each line a `"prompt"` and its row `"latent"`.

    Written by `zr-align generate --save-latents` (reward-guided, best-of-N or plain samples). The SFT loss
    trains on these latents as they are: no VAE encode and decode between them and the denoiser, whose round
    trip would undo part of what guidance changed (on TinyWorld it puts colour casts back on a quarter of even
    clean renders). This is how a sampler's improvement is distilled into a LoRA, in the spirit of reward-ranked
    fine-tuning (RAFT, Dong et al. 2023) with latents kept instead of images.
    """

    holds_latents = True  # `batch` gives latents: the SFT loss takes them as x0
    HINT = "`zr-align generate --save-latents`"

    def __init__(self, folder: str | Path, resolution: int):
        folder = Path(folder)
        index = folder / "samples.jsonl"
        self.latents = _load_latents(folder, index, self.HINT)
        self.items = []
        for number, record in _records(index):
            row = record.get("latent")
            if "prompt" not in record or not _row(row, self.latents):
                raise ValueError(f"{index}:{number} needs a 'prompt' and a 'latent' row in 0..{len(self.latents) - 1}"
                                 f"; write the folder with {self.HINT}")
            self.items.append((record["prompt"], row))
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def check_shape(self, channels: int, side: int) -> None:
        """Refuse latents the denoiser cannot take, before any step runs."""
        _check_latent_shape(self.latents, self.resolution, channels, side)

    def batch(self, indices) -> tuple[list[str], torch.Tensor]:
        pairs = [self.items[int(i)] for i in indices]
        return [p for p, _ in pairs], self.latents[[row for _, row in pairs]]


class LatentPairDataset:
    """Preference pairs `(prompt, chosen latents, rejected latents)` for Diffusion-DPO (`method: dpo`) from a
    folder with `pairs.jsonl` (`"prompt"`, `"chosen"` and `"rejected"` rows) and `latents.safetensors`.

    Written by `zr-align generate --mode best_of_n --save-pairs`: per prompt, the candidate the reward scores
    highest and the one it scores lowest. Any reward can rank them, differentiable or not.
    """

    holds_latents = True
    HINT = "`zr-align generate --mode best_of_n --save-pairs`"

    def __init__(self, folder: str | Path, resolution: int):
        folder = Path(folder)
        if not (folder / LATENTS_FILE).is_file():
            raise ValueError(f"data.pairs {folder} has no {LATENTS_FILE}; write the folder with {self.HINT}")
        index = folder / "pairs.jsonl"
        self.latents = _load_latents(folder, index, self.HINT)
        self.items = []
        for number, record in _records(index):
            if "prompt" not in record or not (_row(record.get("chosen"), self.latents)
                                              and _row(record.get("rejected"), self.latents)):
                raise ValueError(f"{index}:{number} needs a 'prompt' and 'chosen' / 'rejected' rows in "
                                 f"0..{len(self.latents) - 1}; write the folder with {self.HINT}")
            self.items.append((record["prompt"], record["chosen"], record["rejected"]))
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def check_shape(self, channels: int, side: int) -> None:
        _check_latent_shape(self.latents, self.resolution, channels, side)

    def batch(self, indices) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        items = [self.items[int(i)] for i in indices]
        return ([p for p, _, _ in items], self.latents[[c for _, c, _ in items]],
                self.latents[[r for _, _, r in items]])


def _records(index: Path):
    """`(line number, record)` of a .jsonl file; an empty one is refused."""
    records = [(n, json.loads(line)) for n, line in enumerate(index.read_text().splitlines(), 1) if line.strip()]
    if not records:
        raise ValueError(f"{index} is empty")
    return records


def _row(row, latents: torch.Tensor) -> bool:
    return isinstance(row, int) and not isinstance(row, bool) and 0 <= row < len(latents)


def load_sft_data(spec: str, resolution: int):
    """`tinyworld:<split>` (renders on the fly), a folder with `latents.safetensors` (latents, no VAE encode), or a
    folder / .jsonl of (prompt, image) pairs."""
    if spec.startswith("tinyworld:"):
        return TinyWorldRenders(spec.split(":", 1)[1], resolution)
    if (Path(spec) / LATENTS_FILE).is_file():
        return LatentPromptDataset(spec, resolution)
    return ImagePromptDataset(spec, resolution)
