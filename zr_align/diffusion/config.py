"""Configuration of `train_t2i.py`: one dataclass per component, nested in `TrainConfig` (README: "Reward fine-tuning: train_t2i.py").

YAML files hold overrides only; `key.sub=value` command-line overrides go on top. Every field says what it
does and, where it matters, what it costs. Validation happens in `__post_init__` with one-line errors that
name the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..runs.checks import check_choice, check_positive
from ..runs.config_files import load_config
from .sampling import SamplingConfig

METHODS = ("draft_k", "refl", "draft_lv", "full", "sft", "dpo")
BACKPROP_METHODS = ("draft_k", "refl", "draft_lv", "full")
DIFFUSION_FAMILIES = ("sd", "sdxl", "sd3", "pixart", "flux")
DTYPES = ("float32", "bfloat16", "float16")
REWARD_KINDS = ("zreward", "jpeg_compressibility", "tinyworld_soft_judge")


@dataclass
class ModelConfig:
    """The diffusion model to fine-tune."""

    family: str = "sd"  # sd | sdxl | sd3 | pixart | flux: picks pipeline class, denoiser call and LoRA targets
    path: str = ""  # local diffusers pipeline folder, or "tiny:<family>" for random tiny components (tests)
    dtype: str = "float32"  # base weights; bfloat16 halves their memory (GPU); LoRA weights stay float32
    resolution: int = 64  # image side in pixels; a multiple of the VAE factor x the latent patch size (16 for DiTs)
    prediction_type: str | None = None  # override epsilon / v_prediction (DDIM families: sd, sdxl, pixart)
    trainable: str = "lora"  # lora | full: "full" trains every denoiser weight (e.g. pre-training TinyWorld's
    # small model); its memory is that of full fine-tuning, and the output is OUT/pipeline instead of OUT/lora
    train_text_encoder: bool = False  # with trainable: full and method: sft, also train the (first) text encoder

    def __post_init__(self):
        check_choice("model.family", self.family, DIFFUSION_FAMILIES)
        check_choice("model.trainable", self.trainable, ("lora", "full"))
        if self.train_text_encoder and self.trainable != "full":
            raise ValueError("model.train_text_encoder needs model.trainable: full")
        check_choice("model.dtype", self.dtype, DTYPES)
        check_positive("model.resolution", self.resolution)
        if self.prediction_type is not None:
            check_choice("model.prediction_type", self.prediction_type, ("epsilon", "v_prediction"))


@dataclass
class LoraConfig:
    """The LoRA trained on the denoiser (peft). Only these weights train; the base stays frozen."""

    rank: int = 4  # adapter rank r: parameters and optimizer state grow linearly with it
    alpha: float | None = None  # scale is alpha / rank; None means alpha = rank (scale 1)
    dropout: float = 0.0  # LoRA dropout on the adapter input
    targets: list[str] | None = None  # module names to adapt; None uses the family preset (attention projections)

    def __post_init__(self):
        check_positive("lora.rank", self.rank)
        if self.alpha is not None:
            check_positive("lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1); got {self.dropout!r}")


@dataclass
class RewardConfig:
    """The differentiable reward. Unused by `method: sft`."""

    # zreward | jpeg_compressibility (not differentiable: refused by backprop methods) | tinyworld_soft_judge (a
    # differentiable copy of TinyWorld's ground-truth judge: the ceiling of fine-tuning there, never a result)
    kind: str = "zreward"
    path: str | None = None  # ZRewardModel folder, or "tiny:<vlm family>" for a random tiny one (tests)
    # more ZRewardModel folders scored with `path` as one reward (zr_align.rewards.ensemble): harder to exploit
    # than any one of them, at the cost of one reward forward and backward per member
    ensemble: list[str] | None = None
    ensemble_reduce: str = "mean"  # mean | min (the worst member per image)
    weights: dict[str, float] | None = None  # one per rubric dimension (all of them); None keeps the folder's
    kappa: float | None = None  # risk penalty on the score std; None keeps the folder's value
    clamp: str = "straight_through"  # hard | straight_through | none; hard zeroes gradients of clipped pixels
    dtype: str = "float32"  # float32 | bfloat16 | float16: the frozen VLM's weights (bf16 halves their memory)
    gradient_checkpointing: bool = False  # recompute the VLM in backward: less memory, ~30% more reward time
    # keyword arguments of a built-in reward of another kind (jpeg_compressibility: quality; tinyworld_soft_judge:
    # temperature, which widens every sigmoid of its checks)
    options: dict | None = None

    def __post_init__(self):
        check_choice("reward.kind", self.kind, REWARD_KINDS)
        if self.options and self.kind == "zreward":
            raise ValueError("reward.options are for reward.kind jpeg_compressibility or tinyworld_soft_judge; a "
                             "zreward model takes reward.weights, reward.kappa and reward.clamp")
        check_choice("reward.dtype", self.dtype, DTYPES)
        check_choice("reward.ensemble_reduce", self.ensemble_reduce, ("mean", "min"))
        if self.ensemble is not None and (self.kind != "zreward" or not self.path):
            raise ValueError("reward.ensemble adds ZRewardModel folders to reward.path; set reward.kind: zreward and "
                             "reward.path")
        if self.ensemble is not None and not self.ensemble:
            raise ValueError(f"reward.ensemble must be a non-empty list of folders; got {self.ensemble!r}")
        check_choice("reward.clamp", self.clamp, ("hard", "straight_through", "none"))


@dataclass
class OptimConfig:
    """Optimiser and the guards against reward hacking (README: "Reward fine-tuning: train_t2i.py")."""

    lr: float = 1e-4  # AdamW learning rate of the LoRA weights
    weight_decay: float = 1e-2  # AdamW decoupled weight decay (also moves lora_A on the first step, when B = 0)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    warmup_steps: int = 0  # linear warm-up of the learning rate
    lr_schedule: str = "constant"  # after the warm-up: "constant" or "cosine" (down to min_lr_ratio * lr at max_steps)
    min_lr_ratio: float = 0.0  # the cosine schedule's final lr, as a share of lr
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    loss_scale: float = 1.0  # multiplies the reward loss: keeps LoRA updates in a sane range
    reward_normalization: str = "none"  # none | batch (z-score in the batch) | running (running mean/std)
    kl_weight: float = 0.0  # weight of ||eps_lora - eps_base||^2 at grad steps (LoRA only); costs a base forward
    sft_weight: float = 0.0  # mix in the SFT denoising loss on data.sft_data (0 = pure reward)
    sft_batch_size: int = 0  # (prompt, image) pairs per step of that SFT loss; 0: batch_size (method sft too)
    # method dpo: the Diffusion-DPO temperature on the per-sample mean squared error. TinyWorld validation, LoRA r8,
    # lr 1e-3, 150 steps, GSB net: 20 collapses colour (-18.0%), 100 +7.5%, 300 +20.5%, 500 +16.0%, 1000 +4.0%,
    # 5000 barely moves the model (+1.0%); Wallace et al. used 2500-5000 for SD1.5 / SDXL (also an element mean).
    dpo_beta: float = 300.0
    # mix the DPO loss on data.pairs into a reward method's loss (0 = pure reward). TinyWorld validation, with the
    # demo's DRaFT-1 configuration (+24.5% alone): weight 1 +19.5%, weight 3 +14.5% GSB net (position rose most)
    dpo_weight: float = 0.0
    max_skipped_steps: int = 10  # stop after this many steps in a row are skipped (non-finite); 0 never stops
    # Guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models"), added with this weight to
    # any method's loss: at a noise level in the top `cfg_distill_window` of the range, the denoiser's conditional
    # prediction on noised data.sft_data is pulled toward the frozen base's classifier-free-guided prediction at
    # `cfg_distill_scale`, so that plain sampling (no guidance) lays the scene out as guided sampling does. The early
    # steps decide the layout; guidance on the late ones costs colour (`docs/tinyworld_demo_validation.md`).
    # `cfg_distill_rescale`: guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    # are Flawed"): the guided target's std per sample brought back to the conditional one's by this share; it keeps
    # guidance from over-saturating colours. `cfg_distill_center`: guide the layout only, with the guidance
    # direction `c - u` less its mean over the image per channel, so that the guided target keeps the conditional
    # prediction's global tint. As a sampler on TinyWorld it keeps guidance on the first half of the steps from
    # casting colour (`benchmarks/early_guidance.py`, settings `cW:N:R`); distilled over that window into the demo's
    # reward runs it did not (docs/tinyworld_demo_validation.md, "Choosing among the soups").
    cfg_distill_weight: float = 0.0
    cfg_distill_scale: float = 3.0
    cfg_distill_window: float = 0.25
    cfg_distill_rescale: float = 0.0
    cfg_distill_center: bool = False

    def __post_init__(self):
        check_positive("optim.lr", self.lr)
        check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        check_choice("optim.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio!r}")
        check_positive("optim.loss_scale", self.loss_scale)
        check_positive("optim.max_skipped_steps", self.max_skipped_steps, allow_zero=True)
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1); got {list(self.betas)!r}")
        check_positive("optim.max_grad_norm", self.max_grad_norm, allow_zero=True)
        check_choice("optim.reward_normalization", self.reward_normalization, ("none", "batch", "running"))
        check_positive("optim.kl_weight", self.kl_weight, allow_zero=True)
        check_positive("optim.sft_weight", self.sft_weight, allow_zero=True)
        check_positive("optim.sft_batch_size", self.sft_batch_size, allow_zero=True)
        check_positive("optim.dpo_beta", self.dpo_beta)
        check_positive("optim.dpo_weight", self.dpo_weight, allow_zero=True)
        check_positive("optim.cfg_distill_weight", self.cfg_distill_weight, allow_zero=True)
        check_positive("optim.cfg_distill_scale", self.cfg_distill_scale)
        if not 0.0 <= self.cfg_distill_rescale <= 1.0:
            raise ValueError(f"optim.cfg_distill_rescale must be in [0, 1]; got {self.cfg_distill_rescale!r}")
        if not 0.0 < self.cfg_distill_window <= 1.0:
            raise ValueError(f"optim.cfg_distill_window must be in (0, 1] (a share of the noise range); got "
                             f"{self.cfg_distill_window!r}")
        self.betas = tuple(self.betas)


@dataclass
class DataConfig:
    """Prompts for reward training, (prompt, image) pairs for SFT, fixed prompts for validation grids."""

    prompts: str | None = None  # .txt (one per line), .jsonl with "prompt", or tinyworld:<split>; None: all TinyWorld
    sft_data: str | None = None  # folder with metadata.jsonl, a .jsonl of {"prompt", "image"}, a folder with
    # latents.safetensors (`zr-align generate --save-latents`: trained on as they are), or "tinyworld:train"
    pairs: str | None = None  # method dpo: a folder of preference pairs (`zr-align generate --save-pairs`)
    # fixed prompts rendered into OUT/validation/step_N.png with the same seed every time
    validation_prompts: list[str] = field(
        default_factory=lambda: ["a large red circle on the left", "a small blue square at the top"]
    )


@dataclass
class TrainConfig:
    """Everything `train_t2i.py` needs."""

    method: str = "draft_k"  # draft_k | refl | draft_lv | full | sft | dpo
    output_dir: str = "outputs/run"  # everything the run writes (see train_t2i.py's docstring)
    seed: int = 0  # every random draw of step s on rank r is seeded from (seed, s, r): resume is exact
    max_steps: int = 100  # optimizer steps in total (a resumed run continues up to this number)
    batch_size: int = 2  # prompts per rank per step
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step: batch_size x this x ranks per step
    checkpoint_every: int = 50  # accelerate state under output_dir/checkpoints/step_N (0 = only at the end)
    validate_every: int = 0  # validation grid every N steps (0 = only at the end)
    log_with: str = "none"  # none | tensorboard (needs the `tensorboard` extra)
    mixed_precision: str = "no"  # no | bf16 (accelerate autocast; GPU). fp16 needs a loss scaler: not supported
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("log_with", self.log_with, ("none", "tensorboard"))
        check_choice("mixed_precision", self.mixed_precision, ("no", "bf16"))
        check_positive("max_steps", self.max_steps)
        check_positive("batch_size", self.batch_size)
        check_positive("gradient_accumulation_steps", self.gradient_accumulation_steps)
        check_positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        check_positive("validate_every", self.validate_every, allow_zero=True)
        if not self.output_dir:
            raise ValueError("output_dir must be a folder path; got an empty string")
        if self.method in BACKPROP_METHODS and self.reward.kind == "zreward" and not self.reward.path:
            raise ValueError(f"method {self.method} needs reward.path (a ZRewardModel folder); or use method: sft")
        if self.optim.reward_normalization == "batch" and self.batch_size < 2:
            raise ValueError("optim.reward_normalization: batch needs batch_size >= 2 (a std of one value is 0)")
        if self.model.prediction_type is not None and self.model.family in ("sd3", "flux"):
            raise ValueError(f"model.prediction_type does not apply to the flow-matching family {self.model.family}")
        if self.model.train_text_encoder and self.method != "sft":
            raise ValueError("model.train_text_encoder is only supported with method: sft")
        if (self.method == "sft" or self.optim.sft_weight > 0) and not self.data.sft_data:
            raise ValueError("method sft and optim.sft_weight > 0 need data.sft_data (a folder or .jsonl)")
        if self.optim.cfg_distill_weight > 0 and not self.data.sft_data:
            raise ValueError("optim.cfg_distill_weight > 0 needs data.sft_data (its noised latents are where the "
                             "guided prediction is distilled)")
        uses_dpo = self.method == "dpo" or self.optim.dpo_weight > 0
        if uses_dpo and not self.data.pairs:
            raise ValueError("method dpo and optim.dpo_weight > 0 need data.pairs (a folder written by `zr-align "
                             "generate --mode best_of_n --save-pairs`)")
        if self.optim.kl_weight > 0 and self.method in BACKPROP_METHODS and self.model.trainable != "lora":
            raise ValueError("optim.kl_weight needs model.trainable: lora (the KL's reference is the LoRA switched "
                             "off; with every weight trained there is none): set optim.kl_weight=0")
        if uses_dpo and self.model.trainable != "lora":
            raise ValueError("the DPO loss needs model.trainable: lora (its reference model is the LoRA switched off)")
        if self.optim.dpo_weight > 0 and self.method not in BACKPROP_METHODS:
            raise ValueError(f"optim.dpo_weight mixes DPO into a reward method; method {self.method} has no reward")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_train_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """`train_t2i.py`'s config: a YAML file of overrides of the defaults, then `key.sub=value` overrides."""
    return load_config(path, overrides, TrainConfig)
