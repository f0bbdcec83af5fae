"""Several processes (README: "Several GPUs and nodes"): what a trainer needs to know about the way accelerate
launched it, the random streams of each rank and micro-batch, and the trained weights when they are sharded.

`accelerate launch --config_file configs/accelerate/<kind>.yaml` picks the kind; the trainer hands the denoiser to
`accelerator.prepare`, which makes a DDP module of it (gradients averaged in backward), shards it with FSDP2
(`fully_shard`, in place: the frozen base and the LoRA are split across ranks, only the LoRA is trained) or builds
a DeepSpeed engine (ZeRO-2: gradients and optimizer state split; ZeRO-3: the weights too).
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from .steps import step_generator

KINDS = ("single", "ddp", "fsdp", "deepspeed")
# step_generator(seed, step, index) seeds with seed * 1_000_003 + step * 7919 + index: an index of 7919 or more
# would repeat the stream of the next step.
MAX_STREAMS = 7919


def process_kind(accelerator) -> str:
    """"single" (one process), "ddp" (several, each with the whole model), "fsdp" or "deepspeed"."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        if not accelerator.is_fsdp2:
            raise ValueError("FSDP version 1 is not supported (its flat parameters cannot be called outside the "
                             "wrapper); set fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml)")
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp" if accelerator.num_processes > 1 else "single"


def shards_weights(accelerator) -> bool:
    """Whether every rank holds only a shard of the weights (FSDP, ZeRO-3): then every denoiser call is a collective,
    and all ranks must make the same calls (validation included)."""
    kind = process_kind(accelerator)
    if kind == "deepspeed":
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return kind == "fsdp"


def micro_batch_generator(seed: int, step: int, rank: int, micro: int, micro_batches: int) -> torch.Generator:
    """The random stream of micro-batch `micro` of optimizer step `step` on `rank`.

    The global micro-batch index `rank * micro_batches + micro` picks the stream, so an optimizer step draws the same
    samples on 2 ranks x 1 micro-batch as on 1 rank x 2 micro-batches (one process: the stream of `step_generator`).
    """
    index = rank * micro_batches + micro
    if index >= MAX_STREAMS:
        raise ValueError(f"{rank + 1} processes x gradient_accumulation_steps {micro_batches} exceed the {MAX_STREAMS} "
                         "random streams of a step; use fewer micro-batches")
    return step_generator(seed, step, index)


def shape_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """A stream seeded alike on every rank, for the draws that fix how often the denoiser is called (K, ReFL's
    step) when the weights are sharded; independent of `step_generator`'s streams."""
    digest = hashlib.sha256(f"zr_align shape {seed} {step} {micro}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def full_trained_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained (requires_grad) weights of `module` as whole tensors, named as in its `state_dict()`.

    Under FSDP2 each is a DTensor shard and is all-gathered; under ZeRO-3 DeepSpeed gathers them. A collective in
    both cases: call it on every rank."""
    from torch.distributed.tensor import DTensor

    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for _, p in named):  # ZeRO-3 partitioned parameters
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            return {name: p.detach().clone().cpu() for name, p in named}
    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu() for name, p in named}


@contextlib.contextmanager
def frozen_models_whole(accelerator):
    """A context in which models are loaded whole on every rank.

    Under ZeRO-3 accelerate registers its DeepSpeed config with transformers (even with `zero3_init_flag: false`),
    and transformers then builds every model inside `deepspeed.zero.Init`, which partitions it at construction:
    the frozen text encoder and the reward VLM, never prepared, would run on empty placeholders. The config is
    unregistered while models load and registered again after; only the prepared denoiser is sharded (by
    `prepare`)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def keep_model_weights_out_of_checkpoints(accelerator) -> None:
    """accelerate saves every prepared model's whole state (base weights included); with DDP the trained weights
    are checkpointed on their own (`TrainableState`), so the prepared model is dropped from what is saved and
    loaded, and a checkpoint holds what a single process writes."""
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())
