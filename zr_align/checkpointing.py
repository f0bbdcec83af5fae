"""Crash-safe training checkpoints: `checkpoints/step_N/` appears complete or not at all.

accelerate's `save_state` must run on every rank (each writes its RNG state; the main rank writes the rest).
All ranks write into `step_N.tmp/`; after a barrier the main rank adds a marker file and renames the folder.
`--resume latest` only considers folders named `step_N` that hold the marker, so a save interrupted at any
point is never picked up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

MARKER = "zr_checkpoint.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def save_checkpoint(accelerator, checkpoints_dir: Path, step: int, keep: int | None = None) -> Path:
    """Save accelerate state for `step` atomically; keep the newest `keep` checkpoints (all if None)."""
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"step_{step}"
    tmp = checkpoints_dir / f"step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / MARKER).write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # atomic on one filesystem
        if keep:
            for old in list_checkpoints(checkpoints_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for child in checkpoints_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resolve_resume(resume: str | None, checkpoints_dir: Path) -> Path | None:
    """`latest` -> newest complete checkpoint (None if there is none); a path -> that checkpoint, checked."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(checkpoints_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise ValueError(f"--resume {resume}: not a complete checkpoint folder (no {MARKER}); use --resume latest")
    return path


def checkpoint_step(path: Path) -> int:
    return json.loads((Path(path) / MARKER).read_text())["step"]


class TrainableState:
    """The trained weights (a LoRA, or whole modules) as one checkpointable object: accelerate saves and restores
    objects with `state_dict` / `load_state_dict` (`accelerator.register_for_checkpointing`)."""

    def __init__(self, modules: dict):
        self.params = {f"{prefix}.{n}": p for prefix, module in modules.items()
                       for n, p in module.named_parameters() if p.requires_grad}

    def state_dict(self):
        return {n: p.detach().clone() for n, p in self.params.items()}

    def load_state_dict(self, state):
        import torch

        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])
