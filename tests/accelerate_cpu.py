"""Run `train_t2i.py` as `accelerate launch --config_file configs/accelerate/<kind>.yaml` would, on CPU ranks (gloo).

`launch_env(config_file)` reads a shipped accelerate config with accelerate's own launcher code and returns the
environment it gives each process (ACCELERATE_USE_FSDP, FSDP_*, ...): the configs are checked by accelerate itself.

As a script (`python -m torch.distributed.run --nproc_per_node 2 tests/accelerate_cpu.py --config ...`) it trains
under that environment. accelerate 1.15 never selects FSDP or DeepSpeed for CPU processes (`AcceleratorState`
only turns GPU-like multi-process runs into them), so with ACCELERATE_USE_FSDP=true (or ACCELERATE_USE_DEEPSPEED=true)
this script creates the state first and marks it FSDP (or DeepSpeed), with the plugin read from the same environment;
everything after that (`prepare`, `fully_shard` or `deepspeed.initialize`, sharded `save_state` / `load_state`) is
accelerate's, torch's and DeepSpeed's own code, on gloo instead of NCCL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch_env(config_file: str | Path, num_processes: int = 2) -> dict[str, str]:
    """The environment `accelerate launch --config_file config_file` sets for its processes (accelerate's code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(config_file), "--num_processes", str(num_processes), "train_t2i.py"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:
        # what `accelerate launch` adds before calling its DeepSpeed launcher
        fields = list(defaults.deepspeed_config.keys()) if defaults else []
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def _fsdp_state_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    state = AcceleratorState(cpu=True, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* from the environment
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _deepspeed_state_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, TorchDynamoPlugin

    state = AcceleratorState(cpu=True, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
    plugin = DeepSpeedPlugin()  # reads ACCELERATE_DEEPSPEED_* from the environment
    plugin.set_mixed_precision("no")
    plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = plugin
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        os.environ["ACCELERATE_USE_CPU"] = "1"
        _fsdp_state_on_cpu()
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        os.environ["ACCELERATE_USE_CPU"] = "1"
        _deepspeed_state_on_cpu()
    import train_t2i

    sys.exit(train_t2i.main(sys.argv[1:]))
