"""Full-size architectures as small JSON files (`configs/architectures/`), instantiated without weights.

Each file holds the component configs of one released model (a diffusers pipeline: denoiser, VAE, text encoders,
scheduler; or a VLM: its transformers config and image-processor settings), written out from the public
`config.json` files, plus the parameter counts of the released checkpoints where we know them. Built on the
`meta` device, a model has every shape, dtype and module name of the real one and no memory behind it, so the
real-model training configs can be validated end to end up to the first forward, and the memory planner
(`zr_align.memory_plan`) can count parameters and image tokens, on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ARCHITECTURE_DIR = Path(__file__).resolve().parent.parent / "configs" / "architectures"

# name -> file in ARCHITECTURE_DIR (explicit: these are the ones the test suite checks)
ARCHITECTURES: dict[str, str] = {
    "sd15": "sd15.json",
    "sdxl": "sdxl.json",
    "sd35_medium": "sd35_medium.json",
    "flux_dev": "flux_dev.json",
    "pixart_sigma_1024": "pixart_sigma_1024.json",
    "qwen2_5_vl_3b": "qwen2_5_vl_3b.json",
    "qwen3_vl_4b": "qwen3_vl_4b.json",
    "qwen2_vl_2b": "qwen2_vl_2b.json",
}
# `model.family` of train_t2i.py -> the architecture its real-model template (configs/<family>.yaml) is written for
DEFAULT_DIFFUSION: dict[str, str] = {"sd": "sd15", "sdxl": "sdxl", "sd3": "sd35_medium", "flux": "flux_dev",
                                     "pixart": "pixart_sigma_1024"}
DEFAULT_REWARD = "qwen2_5_vl_3b"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_architecture(name: str) -> dict:
    """The JSON spec of architecture `name` (a key of `ARCHITECTURES`, or a path to a JSON file)."""
    path = Path(name)
    if name in ARCHITECTURES:
        path = ARCHITECTURE_DIR / ARCHITECTURES[name]
    elif not path.is_file():
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)} (or a JSON file)")
    return json.loads(path.read_text())


def _component_class(name: str):
    import diffusers
    import transformers

    classes = {
        "UNet2DConditionModel": diffusers.UNet2DConditionModel,
        "SD3Transformer2DModel": diffusers.SD3Transformer2DModel,
        "FluxTransformer2DModel": diffusers.FluxTransformer2DModel,
        "PixArtTransformer2DModel": diffusers.PixArtTransformer2DModel,
        "AutoencoderKL": diffusers.AutoencoderKL,
        "DDIMScheduler": diffusers.DDIMScheduler,
        "FlowMatchEulerDiscreteScheduler": diffusers.FlowMatchEulerDiscreteScheduler,
        "CLIPTextModel": (transformers.CLIPTextModel, transformers.CLIPTextConfig),
        "CLIPTextModelWithProjection": (transformers.CLIPTextModelWithProjection, transformers.CLIPTextConfig),
        "T5EncoderModel": (transformers.T5EncoderModel, transformers.T5Config),
    }
    if name not in classes:
        raise ValueError(f"component class {name!r} is not one we build; known: {', '.join(classes)}")
    return classes[name]


def meta_module(spec: dict, dtype: torch.dtype = torch.float32, device: str | torch.device = "meta") -> torch.nn.Module:
    """One component (`{"class": ..., "config": {...}}`) built on the meta device: shapes, no memory. Another
    `device` builds it there for real, randomly initialised (benchmarks/gpu_bench.py)."""
    cls = _component_class(spec["class"])
    with torch.device(device):
        if isinstance(cls, tuple):
            model_class, config_class = cls
            module = model_class(config_class(**spec["config"]))
        else:
            module = cls.from_config(spec["config"])
    return module.to(dtype).eval().requires_grad_(False)


def _stand_in_tokenizer(spec: dict):
    """An offline word-level tokenizer in place of the real one (only its context length matters here)."""
    from .tiny.diffusion import clip_tokenizer, t5_tokenizer

    tokenizer = clip_tokenizer() if spec["class"] == "CLIPTokenizer" else t5_tokenizer()
    tokenizer.model_max_length = spec["model_max_length"]
    return tokenizer


def meta_pipeline(name: str, dtype: str | torch.dtype = torch.bfloat16, device: str | torch.device = "meta"):
    """The stock diffusers pipeline of architecture `name` with every model on the meta device in `dtype`.

    Tokenizers are offline stand-ins with the real context lengths; the schedulers are real (they hold no
    weights). Nothing can run through it, but everything up to the first forward can be set up on it: the
    sampler, LoRA adapters, gradient-checkpointing switches, parameter counts. Another `device` builds the models
    there, randomly initialised: a full-size stand-in that runs (benchmarks/gpu_bench.py).
    """
    from .diffusion.families import get_denoiser_family

    spec = load_architecture(name)
    dtype = _DTYPES.get(dtype, dtype)
    components = {}
    for key, component in spec["components"].items():
        if component["class"].endswith("Tokenizer"):
            components[key] = _stand_in_tokenizer(component)
        elif component["class"].endswith("Scheduler"):
            components[key] = _component_class(component["class"]).from_config(component["config"])
        else:
            components[key] = meta_module(component, dtype, device)
    pipeline_class = get_denoiser_family(spec["family"]).pipeline_class()
    if spec["family"] == "sd":
        components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipeline_class(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def meta_vlm(name: str, dtype: str | torch.dtype = torch.bfloat16, device: str | torch.device = "meta", **overrides):
    """The transformers VLM of architecture `name` on the meta device (or built for real, randomly initialised, on
    `device`); `overrides` replace top-level config keys."""
    from .rewards.families import get_family

    spec = load_architecture(name)
    dtype = _DTYPES.get(dtype, dtype)
    model_class = get_family(spec["family"]).model_class()
    config = model_class.config_class(**{k: v for k, v in {**spec["config"], **overrides}.items() if k != "model_type"})
    with torch.device(device):
        model = model_class(config)
    return model.to(dtype).eval().requires_grad_(False)


def meta_reward(name: str, dtype: str | torch.dtype = torch.bfloat16, tokenizer=None, device: str | torch.device = "meta",
                **config_fields):
    """A `ZRewardModel` around the meta-device VLM of architecture `name`, with its real image-processor settings.

    `tokenizer` defaults to the offline byte-level BPE with Qwen's pre-tokenisation
    (`zr_align.tiny.bpe.qwen_bpe_tokenizer`); the rubric is the zero-shot one for that tokenizer.
    """
    from .rewards.families import get_family
    from .rewards.zero_shot import zero_shot_rubric
    from .rewards.zreward import ZRewardConfig, ZRewardModel

    spec = load_architecture(name)
    family = get_family(spec["family"])
    if tokenizer is None:
        from .tiny.bpe import qwen_bpe_tokenizer

        tokenizer = qwen_bpe_tokenizer()
    rubric = zero_shot_rubric(family.name, tokenizer, family.image_prompt.format(family.image_token))
    config = ZRewardConfig(family=family.name, rubric=rubric.to_dict(), **config_fields)
    return ZRewardModel(meta_vlm(name, dtype, device), tokenizer, config, spec["processor"])


def setup_models(config, architecture: str | None = None, reward_architecture: str | None = None):
    """`train_t2i.py`'s sections 3-5 for `config` up to the first forward, without weights: the pipeline, the
    sampler (resolution checks, checkpointing switches), the LoRA, the reward (image-token budget, dtype).

    Real-model paths are replaced by meta-device models of `architecture` (default: the one the family's
    template is written for) and `reward_architecture` (default `DEFAULT_REWARD`); `tiny:` paths are built for
    real, as `train_t2i.py` builds them. Returns `(pipe, sampler, denoiser, reward)`; reward is None for SFT.
    """
    from .diffusion.sampling import DifferentiableSampler
    from .lora import add_lora
    from .rewards.zreward import ZRewardModel

    family = config.model.family
    if config.model.path.startswith("tiny:"):
        from .tiny.diffusion import tiny_pipeline

        pipe = tiny_pipeline(config.model.path[5:], prediction_type=config.model.prediction_type)
        pipe.to(_DTYPES[config.model.dtype])
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
    else:
        spec = load_architecture(architecture or DEFAULT_DIFFUSION[family])
        if spec["family"] != family:
            raise ValueError(f"architecture {spec['name']} is a {spec['family']} model, but model.family is {family}")
        pipe = meta_pipeline(spec["name"] if architecture is None or architecture in ARCHITECTURES else architecture,
                             config.model.dtype)
    sampler = DifferentiableSampler(pipe, family, config.sampling, config.model.resolution)
    add_lora(sampler.denoiser, family, rank=config.lora.rank, alpha=config.lora.alpha, dropout=config.lora.dropout,
             target_modules=config.lora.targets)
    reward = None
    if config.method != "sft" and config.reward.kind == "zreward":
        path = config.reward.path or ""
        if path.startswith("tiny:"):
            import tempfile

            from .tiny import tiny_reward_model

            folder = tiny_reward_model(path[5:], tempfile.mkdtemp(prefix="zr_plan_"))
            reward = ZRewardModel.from_pretrained(folder, torch_dtype=_DTYPES[config.reward.dtype],
                                                  clamp=config.reward.clamp)
        else:
            reward = meta_reward(reward_architecture or DEFAULT_REWARD, config.reward.dtype, clamp=config.reward.clamp)
        if config.reward.gradient_checkpointing:
            reward.enable_gradient_checkpointing()
    return pipe, sampler, sampler.denoiser, reward


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (tied weights counted once)."""
    seen, total = set(), 0
    for param in module.parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        total += param.numel()
    return total
