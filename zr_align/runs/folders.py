"""Crash-safe training checkpoints: `checkpoints/step_N/` appears complete or not at all.

accelerate's `save_state` must run on every rank (each writes its RNG state; the main rank writes the rest).
All ranks write into `step_N.tmp/`; after a barrier the main rank adds a marker file and renames the folder.
`--resume latest` only considers folders named `step_N` that hold the marker, so a save interrupted at any
point is never picked up.

The run folder itself (`check_run_folder`, `RunLock`): a folder that holds a run is only reused with `--resume`
(continue it, with the same model) or `--overwrite` (clear it first); a second process writing into a folder
that another one holds is refused; debris of interrupted saves is removed before a run writes anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import yaml

from .config_files import config_value

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


# What train_t2i.py writes into its output folder (all of it is cleared by --overwrite) and what it tolerates there.
RUN_OUTPUTS = ("config.yaml", ".config.yaml.tmp", "metrics.jsonl", "checkpoints", "lora", "pipeline", "validation",
               "logs")
LOCK_NAME = ".zr_run.lock"
NOT_A_RUN = (".tiny", LOCK_NAME)  # the tiny-component cache (tests) and the lock do not make a folder "used"
# Config keys that define the trained model: a resumed run must keep them, or the checkpoint does not fit.
MODEL_KEYS = ("model.family", "model.path", "model.trainable", "model.train_text_encoder", "lora.rank",
              "lora.alpha", "lora.targets")


def check_run_folder(out: Path, resume: str | None, overwrite: bool, config: dict, max_steps: int) -> Path | None:
    """Decide, without writing anything, whether a run may use `out`; returns the checkpoint to resume from.

    - `out` must be a folder (or not exist yet);
    - without `--resume`, a folder that already holds run outputs is refused unless `overwrite` (then only our
      own outputs may be in it, since they will be deleted);
    - `--resume latest` without a complete checkpoint returns None (the caller says it starts from scratch),
      except beside a finished run (`lora/` or `pipeline/`), which is refused;
    - the checkpoint's run must have the same `MODEL_KEYS` as `config` (a dict of the resolved config), and its
      step must not exceed `max_steps`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file, not a folder; choose another output_dir")
    if resume is not None and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run or clear it, not both")
    used = sorted(p.name for p in out.iterdir() if p.name not in NOT_A_RUN) if out.is_dir() else []
    if resume is None:
        if used and not overwrite:
            raise ValueError(f"output_dir {out} already holds {', '.join(used[:4])}; continue that run with "
                             "--resume latest, clear it with --overwrite, or choose another output_dir")
        foreign = [name for name in used if name not in RUN_OUTPUTS]
        if foreign:
            raise ValueError(f"--overwrite would delete {', '.join(foreign[:4])} in {out}, which train_t2i.py did not "
                             "write; choose another output_dir")
        return None
    checkpoint = resolve_resume(resume, out / "checkpoints")
    if checkpoint is None:
        finished = [name for name in ("lora", "pipeline") if (out / name).exists()]
        if finished:
            raise ValueError(f"--resume latest: {out} holds a finished run ({finished[0]}/) but no checkpoint to "
                             "continue from; start again with --overwrite")
        return None
    step = checkpoint_step(checkpoint)
    if step > max_steps:
        raise ValueError(f"--resume: checkpoint {checkpoint} is at step {step}, beyond max_steps {max_steps}; "
                         f"set max_steps >= {step}")
    saved_config = checkpoint.parent.parent / "config.yaml"
    if saved_config.is_file():
        saved = yaml.safe_load(saved_config.read_text()) or {}
        changed = [key for key in MODEL_KEYS if config_value(saved, key) != config_value(config, key)]
        if changed:
            diff = "; ".join(f"{key} {config_value(saved, key)!r} -> {config_value(config, key)!r}" for key in changed)
            raise ValueError(f"--resume: the checkpoint's run used a different model ({diff}); keep these values "
                             "or start a new run in another output_dir")
    return checkpoint


def clear_run_outputs(out: Path) -> None:
    """Delete what a previous run wrote into `out` (`--overwrite`); the tiny-component cache stays."""
    for name in RUN_OUTPUTS:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove debris of saves that were killed: `checkpoints/step_N.tmp/` and `lora/.*.tmp-<pid>`. Call only while
    holding the folder's `RunLock` (no other save can be in flight). Returns what was removed."""
    out = Path(out)
    stale = [p for p in (out / "checkpoints").glob("step_*.tmp") if p.is_dir()]
    stale += [p for folder in ("lora", "pipeline") for p in (out / folder).glob(".*.tmp-*")]
    stale += [p for p in [out / ".config.yaml.tmp"] if p.exists()]
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return stale


class RunLock:
    """An exclusive lock on a run folder: a second process that tries to write into the same folder is refused.

    `fcntl.flock` on `out/.zr_run.lock`: the kernel drops it when the process dies, even by SIGKILL, so a killed
    run never leaves the folder locked. The lock file is deleted on release, and so is `out` itself when this lock
    created it and nothing else was written (a refused run leaves no trace).
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd = None
        self.created_folder = False

    def acquire(self) -> "RunLock":
        self.created_folder = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self.path.read_text().strip() if self.path.is_file() else "?"
                raise ValueError(f"output_dir {self.out} is in use by another run (process {holder}); wait for it "
                                 "to finish or choose another output_dir") from None
            try:  # the holder may have released and deleted the file between our open and flock: retry
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding the lock, so no one else holds this inode
        os.close(self.fd)
        self.fd = None
        if self.created_folder:
            try:
                self.out.rmdir()  # only if empty
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


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

        missing = sorted(set(self.params) - set(state))
        shapes = [n for n, p in self.params.items() if n in state and tuple(state[n].shape) != tuple(p.shape)]
        if missing or shapes:
            name = (missing or shapes)[0]
            found = tuple(state[name].shape) if name in state else "absent"
            raise ValueError(f"the checkpoint does not fit this model: {len(missing)} trained weights missing, "
                             f"{len(shapes)} of another shape (e.g. {name}: {found} vs {tuple(self.params[name].shape)}); "
                             "resume with the model and LoRA settings the run started with")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])
