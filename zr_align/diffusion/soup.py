"""A model soup: the uniform average of the weights of several fine-tuning runs from one base.

Runs that differ only in their seed (the order of prompts, the training noise, K) end in different places, and each
exploits the reward in its own: a reward-tuned model is right or wrong on a prompt partly by the luck of its seed.
Averaging their weights (the "uniform soup" of Wortsman et al., 2022, "Model soups"; fine-tuned from one base they
stay in one basin, so the average is a working model) keeps what the runs agree on. On the TinyWorld validation
prompts the soup of three seeds of the demo's reward arm beats each of them
(`docs/tinyworld_demo_validation.md`, "Seeds averaged").

Only whole pipeline folders (`model.trainable: full`, `RUN/pipeline` or `zr-align export` of a checkpoint) are
averaged: the average of two LoRAs' factors is not the average of their updates (B·A), so LoRA folders are refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WEIGHTS = "*.safetensors"


def average_pipelines(folders: list[str | Path], out: str | Path) -> Path:
    """Write the uniform average of whole pipeline folders to `out`.

    Every floating-point tensor of every component (`unet/`, `text_encoder/`, `vae/`, ...) is averaged in float64 and
    stored in its own dtype, so components the runs did not train (identical in every folder) are copied exactly;
    the rest of the first folder (scheduler, tokenizer, configs) is copied as it is.

    Args:
        folders: two or more pipeline folders (`model_index.json`) of one architecture, fine-tuned from one base.
        out: the folder to write (new or empty).

    Returns:
        `out`.
    """
    from safetensors.torch import load_file, save_file

    folders, out = [Path(f) for f in folders], Path(out)
    _check(folders, out)
    # written next to `out` and renamed at the end: a refused or interrupted soup leaves no half-written folder
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(folders[0], tmp, ignore=shutil.ignore_patterns(WEIGHTS))
        for file in sorted(folders[0].glob(f"*/{WEIGHTS}")):
            relative = file.relative_to(folders[0])
            states = [load_file(folder / relative) for folder in folders]
            _check_same_tensors(states, folders, relative)
            save_file(_mean(states), tmp / relative, metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked)
    tmp.rename(out)
    return out


def _mean(states: list[dict]) -> dict:
    """Floating tensors averaged in float64 and stored in their own dtype; the rest (integer buffers) as in the
    first."""
    averaged = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            averaged[name] = (sum(state[name].to(torch.float64) for state in states) / len(states)).to(first.dtype)
        else:
            averaged[name] = first
    return averaged


def _check(folders: list[Path], out: Path) -> None:
    if len(folders) < 2:
        raise ValueError(f"a soup needs two or more pipeline folders, got {len(folders)}")
    for folder in folders:
        if (folder / "pytorch_lora_weights.safetensors").is_file():
            raise ValueError(f"{folder} is a LoRA folder; a soup averages whole pipelines (train with "
                             "model.trainable: full, or fuse each LoRA into its base and save_pretrained first)")
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"{folder} is not a pipeline folder (no model_index.json); pass RUN/pipeline folders")
    classes = {json.loads((folder / "model_index.json").read_text())["_class_name"] for folder in folders}
    if len(classes) > 1:
        raise ValueError(f"the folders hold different pipelines ({', '.join(sorted(classes))}); a soup averages runs "
                         "of one base")
    files = [sorted(str(p.relative_to(folder)) for p in folder.glob(f"*/{WEIGHTS}")) for folder in folders]
    if any(f != files[0] for f in files) or not files[0]:
        raise ValueError(f"the folders do not hold the same weight files ({folders[0]}: {files[0]}); a soup averages "
                         "runs of one base saved alike")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already holds files; choose an empty or new folder for the soup")


def _check_same_tensors(states: list[dict], folders: list[Path], relative: Path) -> None:
    for state, folder in zip(states[1:], folders[1:]):
        mismatched = [n for n in states[0] if n not in state or state[n].shape != states[0][n].shape]
        if mismatched or len(state) != len(states[0]):
            name = mismatched[0] if mismatched else "(extra tensors)"
            raise ValueError(f"{folder / relative} does not match {folders[0] / relative} (e.g. {name}); a soup "
                             "averages runs of one architecture")
