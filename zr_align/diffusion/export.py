"""One checkpoint of a `train_t2i.py` run, written as the end of the run writes its model.

A run keeps accelerate states under `RUN/checkpoints/step_N` (to resume exactly) and writes the usable model only at
its end: `RUN/lora` (a diffusers LoRA folder) or, with `model.trainable: full`, `RUN/pipeline` (a whole pipeline
folder). To sample, compare or ship an earlier step, `export_checkpoint` rebuilds the run's base from its
`config.yaml`, loads that step's trained weights into it and saves the same kind of folder:

    zr-align export RUN/checkpoints/step_300 --out RUN/step_300
    zr-align compare --model base=models/tinyworld/sft --model step300=RUN/step_300 ...

Checkpoints of one process or of DDP hold whole weights and export as they are; FSDP / ZeRO-3 checkpoints hold
shards and are refused with the shape error of `TrainableState.load_state_dict`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..lora import save_lora
from ..runs import TrainableState
from ..runs.folders import MARKER
from .components import load_pipeline, make_trainable
from .config import load_train_config
from .families import get_denoiser_family

TRAINED_STATE_FILE = "custom_checkpoint_0.pkl"  # accelerate's file for the first registered object: the weights


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the model of one checkpoint of a fine-tuning run to `out`, in the layout the run's end gives it.

    Args:
        checkpoint: a complete `RUN/checkpoints/step_N` folder of a `train_t2i.py` run (its `config.yaml` is read
            from `RUN`, and the base model from the path the run started from).
        out: the folder to write (created; refused if it already holds files): a LoRA folder
            (`pytorch_lora_weights.safetensors`, load with `pipe.load_lora_weights(out)`) for LoRA runs, a whole
            pipeline folder (`model_index.json` and components) for `model.trainable: full`.

    Returns:
        `out`.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / MARKER).is_file() or not (checkpoint / TRAINED_STATE_FILE).is_file():
        raise ValueError(f"{checkpoint} is not a complete checkpoint folder of a train_t2i.py run (no {MARKER} "
                         f"or {TRAINED_STATE_FILE}); pass RUN/checkpoints/step_N")
    config_file = checkpoint.parent.parent / "config.yaml"
    if not config_file.is_file():
        raise ValueError(f"{config_file} does not exist: a checkpoint is exported from inside its run folder "
                         "(RUN/checkpoints/step_N next to RUN/config.yaml)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already holds files; choose an empty or new folder for the export")
    config = load_train_config(config_file)
    from accelerate import PartialState

    pipe, pipeline_class = load_pipeline(config, PartialState(cpu=True))  # one CPU process outside a run
    denoiser = getattr(pipe, get_denoiser_family(config.model.family).denoiser)
    trained, lora_config = make_trainable(pipe, denoiser, config)
    state = torch.load(checkpoint / TRAINED_STATE_FILE, map_location="cpu", weights_only=True)
    TrainableState(trained).load_state_dict(state)
    for module in trained.values():
        module.eval()
    out.mkdir(parents=True, exist_ok=True)
    if lora_config is not None:
        save_lora(out, pipeline_class, denoiser, lora_config)
    else:
        pipe.save_pretrained(out)
    return out
