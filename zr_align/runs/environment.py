"""What a run's numbers depend on besides its config and data: library versions, the CPU and its vector
extensions, the thread count. Two runs of the same config and data on the same environment give the same losses bit
for bit (one thread); across environments the last bits of a matrix product may differ, and thousands of steps
amplify them (docs/tinyworld_rewards.md, session 20). Saved as `environment.json` beside a run's `config.yaml`."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "diffusers", "peft", "accelerate", "safetensors", "numpy", "pillow")
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def _cpu() -> tuple[str, list[str]]:
    """(model name, the vector-extension flags of `_ISA_FLAGS` it has); from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    first_core = info.split("\n\n")[0].splitlines()
    fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first_core if ":" in line)}
    flags = fields.get("flags", "").split()
    return fields.get("model name") or platform.machine(), [f for f in _ISA_FLAGS if f in flags]


def environment() -> dict:
    """Python, the versions of `PACKAGES` (None where one is not installed), CPU model, vector extensions, and
    torch's intra-op thread count."""
    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cpu, isa = _cpu()
    return {"python": sys.version.split()[0], "packages": versions, "cpu": cpu, "isa": isa,
            "threads": torch.get_num_threads(), "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def save_environment(path: str | Path) -> None:
    """Write `environment()` as JSON to `path`, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(environment(), indent=1) + "\n")
    tmp.replace(path)
