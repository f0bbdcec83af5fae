"""`ZRewardModel`: a frozen VLM that returns a score distribution per rubric dimension (Z-Reward's score distributions; README: "The reward plugin").

For each image and each rubric dimension the VLM reads a prompt that ends at the score slot; the distribution
over bins is the softmax of the slot's logits restricted to the bin tokens. Only those `K` rows of the LM head
are computed. The reward `r = sum_d w_d (E_d - kappa * sigma_d)` keeps its graph to the input pixels: weights
are frozen (`requires_grad_(False)`), the activations are not detached.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..preprocess import VisionInputs
from ..rubrics import Rubric, resolve_bin_token_ids
from ..scores import ScoreDistribution
from .families import MODEL_TYPES, get_family
from .layout import LAYOUTS, assemble
from .output import RewardOutput

CONFIG_NAME = "zreward_config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"


@dataclass
class ZRewardConfig:
    """Everything besides the backbone that a reward-model folder stores (`zreward_config.json`).

    Args:
        family: key of `zr_align.rewards.families.FAMILIES`.
        rubric: criteria, template, bins and bin texts (see `Rubric`).
        bin_token_ids: the resolved token id of each bin (checked against the tokenizer on load).
        weights: per-dimension weights of the reward; default equal weights summing to one.
        temperature: softmax temperature at the score slot.
        kappa: risk aversion; the reward subtracts `kappa * sigma_d` (0 = plain expected score).
        clamp: pixel clamp mode, "hard" | "straight_through" | "none".
        min_image_tokens, max_image_tokens: image-token budget (families with dynamic resolution).
        quantize: round resized pixels to 8-bit levels like the HF processor (straight-through gradient).
        teacher: set for a *reasoning teacher* (`zr_align.reward_training.teacher.ReasoningTeacher`): the model
            writes a rationale after the prompt, then `score_marker`, and the score slot follows the marker.
            Keys: "score_marker" (e.g. "Score:"), "max_rationale_tokens". None for a student (score slot at
            the end of the prompt).
        layout: "per_dimension" (one sequence per image and dimension, the rubric template) or "joint" (one
            sequence per image carrying every dimension's slot; see `zr_align.rewards.layout`).
        joint_marker: the text that ends each dimension's segment of a student in the joint layout (a teacher
            uses its `score_marker`).
    """

    family: str
    rubric: dict = field(default_factory=lambda: Rubric().to_dict())
    bin_token_ids: list[int] | None = None
    weights: dict[str, float] | None = None
    temperature: float = 1.0
    kappa: float = 0.0
    clamp: str = "straight_through"
    min_image_tokens: int | None = None
    max_image_tokens: int | None = None
    quantize: bool = False
    teacher: dict | None = None
    layout: str = "per_dimension"
    joint_marker: str = "Score:"

    def __post_init__(self):
        get_family(self.family)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.kappa < 0:
            raise ValueError(f"kappa must be >= 0 (a risk penalty), got {self.kappa}")


def _read_processor_config(path: Path) -> dict:
    """The image-processor settings of a folder, with the processor-level keys some families need.

    `preprocessor_config.json` holds the image processor; `processor_config.json` may hold it nested and,
    for LLaVA, `patch_size`, `vision_feature_select_strategy` and `num_additional_image_tokens`, and for
    Idefics3 `image_seq_len`, which decide how many image tokens the prompt needs. Missing ones are derived
    from the model's `config.json`.
    """
    config, processor = {}, {}
    if (path / "processor_config.json").is_file():
        processor = json.loads((path / "processor_config.json").read_text())
    if (path / PREPROCESSOR_NAME).is_file():
        config = json.loads((path / PREPROCESSOR_NAME).read_text())
    elif "image_processor" in processor:
        config = dict(processor["image_processor"])
    else:
        raise ValueError(f"{path} has no {PREPROCESSOR_NAME}; save the model's image processor into the folder")
    for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens", "image_seq_len"):
        if key not in config and key in processor:
            config[key] = processor[key]
    if (path / "config.json").is_file():
        model_config = json.loads((path / "config.json").read_text())
        if model_config.get("model_type") in ("idefics3", "smolvlm") and "image_seq_len" not in config:
            vision = model_config.get("vision_config", {})
            if "image_size" in vision and "patch_size" in vision:
                scale = model_config.get("scale_factor", 2)
                config["image_seq_len"] = (vision["image_size"] // vision["patch_size"]) ** 2 // scale**2
        if model_config.get("model_type") == "llava":
            config.setdefault("vision_feature_select_strategy", model_config.get("vision_feature_select_strategy"))
            config.setdefault("patch_size", model_config.get("vision_config", {}).get("patch_size"))
            config = {k: v for k, v in config.items() if v is not None}
    return config


class ZRewardModel(nn.Module):
    """A frozen VLM scoring images on rubric dimensions as score distributions. A differentiable `Reward`.

    Args:
        model: a transformers VLM of a supported family (e.g. `Qwen2VLForConditionalGeneration`).
        tokenizer: its tokenizer; every bin text must be one token.
        config (`ZRewardConfig`): family, rubric, weights, temperature, kappa, clamp, token budget.
        processor_config (`dict`): the model's HF image-processor settings.

    Example:
        ```python
        reward_model = ZRewardModel.from_pretrained("path/to/student")
        out = reward_model(images, ["a large red circle on the left"] * len(images))
        out.reward.sum().backward()  # gradients reach `images`
        ```
    """

    differentiable = True

    def __init__(self, model: nn.Module, tokenizer, config: ZRewardConfig, processor_config: dict):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.processor_config = dict(processor_config)
        self.family = get_family(config.family)
        self.rubric = Rubric(**config.rubric)
        ids = resolve_bin_token_ids(tokenizer, self.rubric.bin_texts)
        if config.bin_token_ids is not None and list(config.bin_token_ids) != ids:
            raise ValueError(
                f"stored bin_token_ids {config.bin_token_ids} differ from the tokenizer's {ids}; "
                "the tokenizer does not belong to this reward model"
            )
        config.bin_token_ids = ids
        self.register_buffer("bin_token_ids", torch.tensor(ids), persistent=False)
        self.register_buffer("bin_values", torch.tensor(self.rubric.bins), persistent=False)
        dims = self.rubric.dimensions
        weights = config.weights or {d: 1.0 / len(dims) for d in dims}
        missing = set(dims) - set(weights)
        if missing or set(weights) - set(dims):
            raise ValueError(f"weights must name exactly the rubric dimensions {dims}, got {sorted(weights)}")
        self.register_buffer("dimension_weights", torch.tensor([float(weights[d]) for d in dims]), persistent=False)
        self.preprocessor = self.family.build_preprocessor(
            processor_config,
            clamp=config.clamp,
            min_image_tokens=config.min_image_tokens,
            max_image_tokens=config.max_image_tokens,
            quantize=config.quantize,
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.family.image_token)
        self.tokenizer.padding_side = "right"  # the score slot is then found from the attention mask
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.family.prepare_model(model)
        model.requires_grad_(False)
        model.eval()

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None, **overrides):
        """Load a reward-model folder written by `save_pretrained` (local folders only; nothing is downloaded).

        `overrides` replace fields of the stored `ZRewardConfig` (e.g. `kappa=0.5`, `clamp="hard"`).
        """
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"reward model folder {path} does not exist; pass a folder written by save_pretrained")
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(
                f"{path} has no {CONFIG_NAME}; wrap a plain VLM folder with ZRewardModel.from_vlm(path) "
                "and save it with save_pretrained"
            )
        stored = json.loads((path / CONFIG_NAME).read_text())
        stored.update(overrides)
        config = ZRewardConfig(**stored)
        return cls._load(path, config, torch_dtype)

    @classmethod
    def from_vlm(
        cls,
        path: str | os.PathLike,
        family: str | None = None,
        rubric: Rubric | None = None,
        bins=None,
        bin_texts="auto",
        torch_dtype: torch.dtype | None = None,
        **config_fields,
    ) -> "ZRewardModel":
        """A zero-shot reward from a plain HF VLM folder (no zr_align files): Q-Align-style rating prompts, the
        distribution read from one token per bin (`zr_align.rewards.zero_shot`).

        Args:
            path: a local VLM folder (`config.json`, weights, tokenizer, `preprocessor_config.json`).
            family: key of `FAMILIES`; read from `config.json`'s `model_type` when not given.
            rubric: criteria and template; default the family's zero-shot template and the default criteria.
            bins: the bin values (default the rubric's: 1.0, 1.5, ..., 5.0).
            bin_texts: how the bins are spelled at the score slot: "auto" (the rubric's texts if each is one
                token there, else a 1-9 digit scale, else letters), a scheme of `BIN_SCHEMES`, or the texts.
            torch_dtype: dtype of the backbone (default float32).
            config_fields: further `ZRewardConfig` fields (weights, kappa, clamp, image-token budget...).

        `save_pretrained` then writes a folder that `from_pretrained` loads like a trained student.
        """
        from .zero_shot import zero_shot_rubric

        path = Path(path)
        if family is None:
            if not (path / "config.json").is_file():
                raise ValueError(f"{path} has no config.json; pass a Hugging Face VLM folder")
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
            if model_type not in MODEL_TYPES:
                raise ValueError(f"model_type {model_type!r} of {path} is not a supported family; pass family=")
            family = MODEL_TYPES[model_type]
        from .loading import load_tokenizer

        vlm_family = get_family(family)
        image_text = vlm_family.image_prompt.format(vlm_family.image_token)  # one image token stands for all
        rubric = zero_shot_rubric(family, load_tokenizer(path), image_text, rubric, bins, bin_texts)
        config = ZRewardConfig(family=family, rubric=rubric.to_dict(), **config_fields)
        return cls._load(path, config, torch_dtype)

    @classmethod
    def _load(cls, path: Path, config: ZRewardConfig, torch_dtype):
        from ..preprocess.pixels import MinimumSize
        from .loading import check_finite_weights, check_weight_files, load_tokenizer

        family = get_family(config.family)
        check_weight_files(path)
        try:
            model = family.model_class().from_pretrained(path, dtype=torch_dtype or torch.float32)
        except (OSError, RuntimeError) as error:  # damage the header check cannot see, a config that does not fit
            raise ValueError(f"cannot load the backbone in {path}: {str(error).splitlines()[0]}") from None
        check_finite_weights(model, path)
        tokenizer = load_tokenizer(path)
        reward = cls(model, tokenizer, config, _read_processor_config(path))
        reward.preprocessor = MinimumSize(reward.preprocessor)  # refuse images smaller than a vision patch
        return reward

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write backbone, tokenizer, image-processor settings and `zreward_config.json` into one folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / PREPROCESSOR_NAME).write_text(json.dumps(self.processor_config, indent=2))
        # Written last: a folder without it is recognisably incomplete.
        (path / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2))

    # ------------------------------------------------------------------ gradient checkpointing
    def enable_gradient_checkpointing(self) -> None:
        """Recompute the VLM's layer activations in backward instead of storing them.

        transformers checkpoints a layer only when it is in `train()` mode, and a frozen reward model sits in
        `eval()`, so enabling it the usual way would silently do nothing. We set the `training` flag of the
        checkpointed layers only (not of their children), so dropout and other train-time behaviour stay off.
        """
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.model.activation_checkpointing_enable({"use_reentrant": False})
        for module in self.model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.training = True

    def disable_gradient_checkpointing(self) -> None:
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.model.gradient_checkpointing_disable()
        for module in self.model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.training = False

    def train(self, mode: bool = True):
        # The backbone stays frozen and in eval mode whatever the caller's module tree does.
        super().train(mode)
        self.model.eval()
        return self

    # ------------------------------------------------------------------ scoring
    @property
    def dimensions(self) -> tuple[str, ...]:
        return self.rubric.dimensions

    @property
    def joint(self) -> bool:
        return self.config.layout == "joint"

    def build_texts(self, prompts: list[str], image_text: str) -> list[str]:
        """Prompt texts in (image, dimension) order: row `b * D + d`."""
        image = self.family.image_prompt.format(image_text)
        return [self.rubric.render(p, d, image) for p in prompts for d in self.dimensions]

    def prefix_ids(self, prompts: list[str], image_text: str) -> list[list[int]]:
        """Token ids of the part before the first segment: per dimension one row per (image, dimension) (row
        `b * D + d`, the whole rubric prompt), joint one row per image (image and prompt only)."""
        if not self.joint:
            texts = self.build_texts(prompts, image_text)
        else:
            image = self.family.image_prompt.format(image_text)
            texts = [self.rubric.render_joint(p, image) for p in prompts]
        return [self.tokenizer(t)["input_ids"] for t in texts]

    def segment_headers(self) -> list[list[int]]:
        """Per segment, the tokens that open it: the dimension's name in the joint layout; `[[]]` otherwise."""
        if not self.joint:
            return [[]]
        return [self.tokenizer.encode(f" {d}", add_special_tokens=False) for d in self.dimensions]

    def marker_ids(self, marker: str | None) -> list[int]:
        """Token ids of a segment's closing marker (`[]` for None)."""
        return self.tokenizer.encode(f" {marker}", add_special_tokens=False) if marker else []

    def bin_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Bin logits `(..., K)` of hidden states `(..., H)`: only the K bin rows of the LM head."""
        head = self.model.get_output_embeddings()
        logits = hidden @ head.weight[self.bin_token_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.bin_token_ids]
        return logits.float()

    def pixel_inputs(self, vision: VisionInputs, repeats: int) -> dict[str, torch.Tensor]:
        """The VLM's image inputs with every image repeated `repeats` times (once per row that shows it)."""
        batch = vision.batch_size
        device = next(iter(vision.tensors.values())).device
        index = None if repeats == 1 else torch.arange(batch, device=device).repeat_interleave(repeats)
        dtype = self.model.dtype
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in vision.model_inputs(index).items()}

    def slot_logits(self, **model_inputs) -> torch.Tensor:
        """Bin logits `(N, K)` at the score slot (the last attended token of each right-padded row).

        `model_inputs` are what the VLM forward takes (`input_ids`, `attention_mask`, pixel tensors...), e.g. a
        Hugging Face processor's output. Differentiable w.r.t. the pixel inputs.
        """
        attention_mask = model_inputs["attention_mask"]
        hidden = self.model.model(**model_inputs).last_hidden_state  # (N, L, H)
        slot = attention_mask.sum(dim=1) - 1
        return self.bin_logits(hidden[torch.arange(hidden.shape[0], device=hidden.device), slot])  # (N, K)

    def _check_prompts(self, prompts, batch: int) -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts] * batch
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; pass one prompt per image")
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for {batch} images; pass one prompt per image")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be strings")
        # Refused rather than truncated: the score slot is at the end of the text, so a cut text has no slot.
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError(f"prompt {i} is empty; the reward scores an image against its prompt")
        from .loading import text_context_length

        context = text_context_length(self.model.config)
        if context is not None:
            lengths = [len(ids) for ids in self.tokenizer(self.build_texts(prompts, ""))["input_ids"]]
            longest = max(range(len(lengths)), key=lengths.__getitem__)
            if lengths[longest] > context:
                raise ValueError(
                    f"prompt {longest // len(self.dimensions)} makes a rubric text of {lengths[longest]} tokens "
                    f"(before the image tokens), more than the reward model's {context} positions; shorten it"
                )
        return prompts

    def forward(self, images: torch.Tensor, prompts: list[str] | str) -> RewardOutput:
        """Score `images` `(B, 3, H, W)` in [0, 1] against `prompts`. Differentiable w.r.t. `images`."""
        logits = self.forward_logits(images, prompts)  # (B, D, K)
        dist = ScoreDistribution.from_logits(logits, self.bin_values.float(), self.config.temperature)
        return self.output_from_distribution(dist)

    def forward_logits(self, images: torch.Tensor, prompts: list[str] | str) -> torch.Tensor:
        """Bin logits `(B, D, K)` at the score slot of every (image, dimension). Differentiable w.r.t. `images`
        and, when they require grad, the VLM's weights (reward-model training)."""
        if isinstance(images, torch.Tensor) and images.ndim == 4 and not isinstance(prompts, str) and not prompts:
            raise ValueError("prompts is empty; pass one prompt per image")
        vision: VisionInputs = self.preprocessor(images)
        batch, dims = images.shape[0], len(self.dimensions)
        prompts = self._check_prompts(prompts, batch)
        device = images.device
        marker = self.config.joint_marker if self.joint else None
        rows = assemble(self.prefix_ids(prompts, vision.image_text), self.segment_headers(), self.marker_ids(marker),
                        None, self.tokenizer.pad_token_id, device)
        hidden = self.model.model(
            input_ids=rows.input_ids,
            attention_mask=rows.attention_mask,
            **self.pixel_inputs(vision, 1 if self.joint else dims),  # per dimension: each image once per row
            **self.family.extra_text_inputs(rows.input_ids, self.image_token_id),
        ).last_hidden_state  # (R, W, H)
        row = torch.arange(rows.slots.shape[0], device=device)[:, None]
        return self.bin_logits(hidden[row, rows.slots]).view(batch, dims, -1)  # (R, S, K) -> (B, D, K)

    def output_from_distribution(self, dist: ScoreDistribution) -> RewardOutput:
        """`RewardOutput` of `(B, D, K)` distributions: `r = sum_d w_d (E_d - kappa * sigma_d)`. Differentiable."""
        per_dim = dist.mean - self.config.kappa * dist.std if self.config.kappa else dist.mean  # (B, D)
        reward = per_dim @ self.dimension_weights.to(per_dim.dtype)
        scores = {name: dist[:, d] for d, name in enumerate(self.dimensions)}
        return RewardOutput(reward=reward, scores=scores)

    reward = forward

    @torch.inference_mode()
    def score(self, images, prompts, batch_size: int = 8) -> RewardOutput:
        """Batch scoring without a graph. `images`: a `(B, 3, H, W)` tensor, or a list of PIL images / paths."""
        from .loading import images_to_batches

        outputs = []
        device = self.bin_values.device
        for batch, batch_prompts in images_to_batches(images, prompts, batch_size):
            outputs.append(self.forward(batch.to(device), batch_prompts))
        reward = torch.cat([o.reward for o in outputs])
        scores = {
            d: ScoreDistribution(torch.cat([o.scores[d].probs for o in outputs]), outputs[0].scores[d].values)
            for d in self.dimensions
        }
        return RewardOutput(reward=reward, scores=scores)
