"""What both trainers (diffusion fine-tuning and reward-model training) share about a run: its config file
(`config_files`), the environment it ran in (`environment`), its folder, checkpoints and resume (`folders`), and
each optimizer step (`steps`)."""

from .config_files import config_value, load_config, plain_dict, save_config
from .environment import environment, save_environment
from .folders import (
                      RunLock,
                      TrainableState,
                      check_run_folder,
                      checkpoint_step,
                      clear_run_outputs,
                      list_checkpoints,
                      remove_stale_temporaries,
                      resolve_resume,
                      save_checkpoint,
)
from .steps import (
                      MetricsLog,
                      checkpoint_due,
                      guarded_step,
                      lr_factor,
                      peak_memory_mb,
                      step_generator,
)

__all__ = [
    "MetricsLog", "RunLock", "TrainableState", "check_run_folder", "checkpoint_due", "checkpoint_step", "config_value",
    "clear_run_outputs", "environment", "guarded_step", "list_checkpoints", "load_config", "lr_factor",
    "peak_memory_mb", "plain_dict", "remove_stale_temporaries", "resolve_resume", "save_checkpoint", "save_config",
    "save_environment", "step_generator",
]
