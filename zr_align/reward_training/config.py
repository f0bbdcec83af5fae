"""Configuration of reward-model training (`zr-align reward train --config configs/reward/<name>.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runs.checks import check_choice

# method -> (role of the trained model, what it needs)
METHODS = {
    "teacher_sft": "teacher",  # rationale + score token cross-entropy on the data's rationales (Z-Reward's teacher initialisation)
    "gdso": "teacher",  # group-wise direct score optimisation, from an SFT teacher (Z-Reward's GDSO)
    "grpo": "teacher",  # baseline: sampled score token with an accuracy reward
    "reward_dance": "teacher",  # baseline: P("yes") that the image satisfies the rubric
    "student_sft": "student",  # baseline: cross-entropy on the human score token, no teacher
    "risd": "student",  # forward KL to the teacher marginalised over N rationales (Z-Reward's RISD)
    "opd": "student",  # baseline: on-policy distillation, reverse KL on the student's own distribution
}


@dataclass
class GdsoConfig:
    """GDSO / GRPO rollouts and loss weights (Z-Reward's GDSO)."""

    rollouts: int = 4  # G rationales sampled per (image, dimension); cost grows linearly
    temperature: float = 1.0  # sampling temperature of the rationales
    clip_eps: float = 0.2  # PPO/GRPO clip range of the token ratio
    # KL to the frozen reference (the initial teacher), k3 estimator per token. 0.02 let TinyWorld's GDSO teacher
    # drift off its rationale format after ~110 steps ("shift" became "clutter"; per-token KL 0.005 -> 0.6);
    # 0.2 kept the format and ranked all validation pairs at 0.853 against 0.845 (docs/tinyworld_rewards.md).
    kl_coef: float = 0.2
    point_weight: float = 1.0  # l1: pointwise KL(q_human || p) at the score slot, through every rollout
    pair_weight: float = 0.5  # l2: Thurstone fidelity on the score gaps of images of the same prompt
    pg_weight: float = 1.0  # weight of the policy-gradient term (0 leaves only direct supervision)


@dataclass
class RisdConfig:
    """The teacher targets of RISD / OPD (Z-Reward's RISD)."""

    teacher: str | None = None  # teacher folder whose marginal distributions the student learns
    num_rationales: int = 4  # N sampled rationales per image; the targets are computed once and cached
    temperature: float = 1.0
    human_weight: float = 0.0  # optional pointwise KL to the human soft label, added to the distillation
    mean_weight: float = 0.0  # optional (E_S - E_T)^2
    unlabelled: str | None = None  # a JSONL of images with a prompt and no labels (e.g. `zr-align tinyworld sample`'s
    #   samples.jsonl of the model that will be fine-tuned): the teacher's targets on them join `data`'s rows, so the
    #   student also learns the domain it will score (Z-Reward's RISD on unlabelled images)


@dataclass
class RewardTrainConfig:
    """Everything `zr-align reward train` needs."""

    method: str = "teacher_sft"  # one of METHODS
    output_dir: str = "outputs/reward"  # model/ (the trained reward folder), checkpoints/, metrics.jsonl
    init: str = "tinyworld:teacher"  # reward folder to start from, or tinyworld:teacher / tinyworld:student (random)
    data: str = ""  # rated-images JSONL (zr_align.reward_training.data) used for training
    seed: int = 0
    max_steps: int = 200
    batch_size: int = 8  # images per step; GDSO groups them by prompt (images_per_prompt each)
    images_per_prompt: int = 4  # M: images of one prompt per group (GDSO pairs, GRPO/GDSO groups)
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    lr_schedule: str = "constant"  # after the linear warm-up: "constant" or "cosine" (down to min_lr_ratio * lr)
    min_lr_ratio: float = 0.05  # the cosine schedule's final lr, as a share of lr
    score_label: str = "soft"  # score-slot target of teacher_sft / student_sft: "soft" (cross-entropy to the
    #   annotators' whole histogram, a distribution loss) or "nearest" (the bin nearest the mean, a hard label)
    score_weight: float = 1.0  # teacher_sft: weight of the score-slot loss against the rationale tokens' NLL
    dimension_weights: dict | None = None  # loss weight per rubric dimension of the score-slot losses (default
    #   equal); e.g. {alignment: 2.0, realism: 1.0, aesthetics: 1.0, plausibility: 1.0}
    check_weights: dict | None = None  # teacher_sft: loss weight of the rationale tokens of named checks (a check
    #   runs from its word to the next "yes" / "no", e.g. {shift: 3.0} weighs "shift yes"; others 1)
    vision_init: str | None = None  # a reward folder whose vision tower initialises this model's (same-shape
    #   weights are copied; e.g. the teacher's, so a RISD student starts seeing what the teacher sees)
    eval_every: int = 0  # call the trainer's `on_eval(step, model)` hook every N steps (0: never); its numbers
    #   go into metrics.jsonl (TinyWorld: the teacher's reading accuracy on validation images)
    max_grad_norm: float = 1.0
    lora_rank: int = 0  # 0 trains every weight; > 0 a LoRA on the language model's attention (merged at save)
    gradient_checkpointing: bool = False  # recompute the VLM's layers in backward (less memory, more time)
    checkpoint_every: int = 0  # accelerate state every N steps (0 = only at the end)
    gdso: GdsoConfig = field(default_factory=GdsoConfig)
    risd: RisdConfig = field(default_factory=RisdConfig)

    def __post_init__(self):
        check_choice("method", self.method, tuple(METHODS))
        if not self.data:
            raise ValueError("data must name a rated-images JSONL file (see zr_align.reward_training.data)")
        if self.method in ("risd", "opd") and not self.risd.teacher:
            raise ValueError(f"method {self.method} needs risd.teacher (a teacher reward folder)")
        if self.risd.unlabelled and self.method not in ("risd", "opd"):
            raise ValueError(f"risd.unlabelled is distilled from a teacher: use it with method risd or opd, not "
                             f"{self.method}")
        if self.risd.unlabelled and self.risd.human_weight:
            raise ValueError("risd.human_weight needs a human label on every row and risd.unlabelled rows have none: "
                             "set risd.human_weight to 0 or drop risd.unlabelled")
        if self.method == "gdso" and self.init.startswith("tinyworld:"):
            raise ValueError("method gdso starts from an SFT teacher: set init to a teacher_sft output folder")
        if self.batch_size % self.images_per_prompt:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of images_per_prompt "
                             f"{self.images_per_prompt}")
        check_choice("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        check_choice("score_label", self.score_label, ("soft", "nearest"))
        for name, weights in (("dimension_weights", self.dimension_weights), ("check_weights", self.check_weights)):
            if weights is not None and (not isinstance(weights, dict) or any(w < 0 for w in weights.values())):
                raise ValueError(f"{name} must map names to weights >= 0, got {weights}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")

    @property
    def role(self) -> str:
        return METHODS[self.method]
