"""The diffusion fine-tuning engine: config, denoiser families, the differentiable sampler, losses, datasets
and the trainer behind `train_t2i.py` (LoRA adapters live in `zr_align.lora`, shared with reward training)."""

from .config import TrainConfig, load_train_config
from .sampling import DifferentiableSampler, SamplingConfig, Trajectory
from .trainer import fine_tune

__all__ = ["DifferentiableSampler", "SamplingConfig", "TrainConfig", "Trajectory", "fine_tune", "load_train_config"]
