"""Every peft call of the project: LoRA adapters on the denoiser, saved in the diffusers format that stock
pipelines load, and the LoRA of reward-model training on a VLM's language model.

The diffusion trainer calls `add_lora` on the pipeline's UNet or transformer, optimises `lora_parameters(...)` and
writes the result with `save_lora`; a stock pipeline then restores it with `pipe.load_lora_weights(out_dir)`.
`export_kohya` additionally writes the UNet families in the kohya/AUTOMATIC1111/ComfyUI key format.

Two traps this module exists to avoid (see PITFALLS):
- `save_lora_weights` without the adapter metadata argument silently drops `lora_alpha`: a rank-4, alpha-8 adapter
  comes back with alpha 4, i.e. half the trained effect. `save_lora` always passes it.
- Trainable LoRA weights in bf16/fp16 lose small updates; `add_lora` keeps them in float32 whatever the base dtype
  (peft runs the LoRA branch in the adapter's dtype and casts the sum back).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ADAPTER_NAME = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

# Attention projections (self- and cross-attention) of the diffusers attention blocks. These are the defaults of the
# diffusers LoRA training examples (train_text_to_image_lora*.py, train_dreambooth_lora_{sd3,flux}.py, minus the
# optional feed-forward layers). Names are matched like peft does: a module matches when its name equals the target
# or ends with "." + target.
_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# The MM-DiT joint-attention blocks (SD3, Flux) also project the text stream: add_{q,k,v}_proj and its output
# projection to_add_out.
_JOINT_ATTENTION = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "sd": _ATTENTION,  # UNet: attn1 (self) and attn2 (cross) of every transformer block
    "sdxl": _ATTENTION,  # same UNet blocks as sd
    "sd3": _ATTENTION + _JOINT_ATTENTION,  # SD3Transformer2DModel joint blocks (image and context streams)
    "pixart": _ATTENTION,  # PixArtTransformer2DModel: attn1 (self) and attn2 (cross to T5)
    "flux": _ATTENTION + _JOINT_ATTENTION,  # double-stream blocks; single-stream blocks get to_q/k/v
}
KOHYA_FAMILIES = ("sd", "sdxl")


def _denoiser_name(denoiser: nn.Module) -> str:
    """The pipeline component (and LoRA key prefix) of `denoiser`: "unet" for UNets, else "transformer"."""
    from diffusers import UNet2DConditionModel

    return "unet" if isinstance(denoiser, UNet2DConditionModel) else "transformer"


def _linear_suffixes(denoiser: nn.Module) -> list[str]:
    """Short names of the linear layers of `denoiser` ("to_q", "to_out.0", ...): what a target can name."""
    suffixes = set()
    for name, module in denoiser.named_modules():
        if isinstance(module, nn.Linear):
            parts = name.split(".")
            suffixes.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return sorted(suffixes)


def add_lora(
    denoiser: nn.Module,
    family: str,
    rank: int = 4,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    init_lora_weights: bool | str = True,
):
    """Add a trainable LoRA adapter named "default" to `denoiser` and freeze everything else.

    Args:
        denoiser: the pipeline's `unet` or `transformer` (changed in place).
        family: one of `LORA_TARGETS` ("sd", "sdxl", "sd3", "pixart", "flux"); picks the default targets.
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is scaled by alpha / rank. Defaults to `rank` (scale 1).
        dropout: dropout on the LoRA branch input.
        target_modules: module-name suffixes to adapt (default `LORA_TARGETS[family]`); each must match a module.
        init_lora_weights: peft's initialisation; `True` draws `lora_A` (Kaiming) and zeroes `lora_B`, so the
            adapter starts as the identity and `lora_A` gets no gradient on the first step.

    Returns:
        The `peft.LoraConfig` of the adapter (pass it to `save_lora`).

    The LoRA weights are float32 and the only parameters with `requires_grad`, whatever the base dtype; call this
    after moving the denoiser to its final dtype (a later `.to(torch.bfloat16)` would cast the adapter too).
    Denoisers without diffusers' `add_adapter` (PixArtTransformer2DModel) get the adapter through
    `peft.inject_adapter_in_model`.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if family not in LORA_TARGETS:
        raise ValueError(f"unknown LoRA family {family!r}; allowed: {', '.join(LORA_TARGETS)}")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    targets = tuple(target_modules) if target_modules is not None else LORA_TARGETS[family]
    names = [name for name, _ in denoiser.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ValueError(
                f"LoRA target {target!r} matches no module of {type(denoiser).__name__}; "
                f"its linear layers: {', '.join(_linear_suffixes(denoiser))}"
            )

    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        init_lora_weights=init_lora_weights,
    )
    denoiser.requires_grad_(False)
    if hasattr(denoiser, "add_adapter"):
        denoiser.add_adapter(config, adapter_name=ADAPTER_NAME)
    else:
        inject_adapter_in_model(config, denoiser, adapter_name=ADAPTER_NAME)
    for name, param in denoiser.named_parameters():
        is_lora = ".lora_" in name
        param.requires_grad_(is_lora)
        if is_lora and param.dtype != torch.float32:
            param.data = param.data.float()
    return config


@contextlib.contextmanager
def adapters_disabled(module: nn.Module):
    """Run the base model inside the block: every peft layer of `module` is switched off, and back on after
    (works for models with and without diffusers' PeftAdapterMixin)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield module
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@contextlib.contextmanager
def lora_merged(module: nn.Module):
    """Inside the block, every active LoRA of `module` is folded into its base weight (peft's `merge`), so calls
    without a graph skip the per-layer adapter branch; on exit the base weights are restored bit for bit (peft's
    `unmerge` subtracts, which would leave rounding drift in the frozen base after many steps, so the weights are
    copied back). Not on the gradient path: the LoRA gets no gradient through merged weights. Costs a copy of the
    adapted base weights while inside; not for sharded weights (FSDP, ZeRO-3)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [layer for layer in module.modules()
              if isinstance(layer, BaseTunerLayer) and not layer.merged and not layer.disable_adapters]
    saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
    try:
        with torch.no_grad():
            for layer in layers:
                layer.merge()
        yield module
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved, strict=True):
                if layer.merged:
                    layer.unmerge()
                layer.get_base_layer().weight.copy_(weight)


def add_language_lora(model: nn.Module, rank: int) -> list[nn.Parameter]:
    """A LoRA (alpha = rank) on the attention projections of a VLM's language model, the only trained weights;
    returns them. Reward-model training uses it; `merge_lora` folds it back before saving."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")
    inject_adapter_in_model(lora, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return [param for param in model.parameters() if param.requires_grad]


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA of `model` into its base layers and remove the peft wrappers: a plain model again."""
    from peft.tuners.lora import LoraLayer

    for module in list(model.modules()):
        if isinstance(module, LoraLayer):
            module.merge()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                setattr(parent, name, child.get_base_layer())


def lora_parameters(denoiser: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of `denoiser` after `add_lora`: the LoRA weights, float32."""
    return [param for param in denoiser.parameters() if param.requires_grad]


def _replace_atomically(write, path: Path) -> None:
    """Call `write(tmp_path)`, then rename to `path`: an interrupted save leaves no half-written file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite `path`'s header with its `__metadata__` entries in sorted order (tensor data untouched).

    safetensors keeps the metadata in a Rust HashMap, whose order is random per call: two saves of the same
    adapter differed in the order of "format" and "lora_adapter_metadata" and so in their bytes."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size:])


def save_lora(out_dir, pipeline_class, denoiser: nn.Module, lora_config, state_dict: dict | None = None) -> Path:
    """Write the "default" LoRA of `denoiser` to `out_dir/pytorch_lora_weights.safetensors` in diffusers format.

    Uses `pipeline_class.save_lora_weights` with the adapter metadata (`unet_lora_adapter_metadata=` or
    `transformer_lora_adapter_metadata=`), so that `pipeline_class.from_pretrained(base).load_lora_weights(out_dir)`
    restores exactly this model, alpha included. Pipeline classes without LoRA support (PixArtSigmaPipeline in
    diffusers 0.42) get the same file through the same writer; restore it with `load_lora`.

    Args:
        out_dir: folder to write to (created if missing).
        pipeline_class: the stock pipeline class, e.g. `StableDiffusionPipeline` or `type(pipe)`.
        denoiser: the UNet or transformer that `add_lora` adapted.
        lora_config: the config `add_lora` returned.
        state_dict (*optional*): full tensors of the denoiser's LoRA weights, named as in its `state_dict()`, where
            its own are shards (FSDP, ZeRO-3: the trainer gathers them first); default: the denoiser's own.

    Returns:
        The path of the written file.
    """
    from diffusers.loaders.lora_base import LoraBaseMixin
    from peft import get_peft_model_state_dict

    component = _denoiser_name(denoiser)
    state_dict = get_peft_model_state_dict(denoiser, state_dict=state_dict, adapter_name=ADAPTER_NAME)
    # peft keeps target_modules as a set, whose order changes from process to process (string hashing): sorted,
    # the same adapter always gives the same bytes.
    metadata = {key: sorted(value) if isinstance(value, (set, frozenset)) else value
                for key, value in lora_config.to_dict().items()}
    path = Path(out_dir) / LORA_WEIGHT_NAME

    def write(tmp_path: Path) -> None:
        if hasattr(pipeline_class, "save_lora_weights"):
            pipeline_class.save_lora_weights(
                tmp_path.parent,
                weight_name=tmp_path.name,
                safe_serialization=True,
                **{f"{component}_lora_layers": state_dict, f"{component}_lora_adapter_metadata": metadata},
            )
        else:
            # The writer behind every `save_lora_weights`: keys and metadata entries prefixed with the component.
            LoraBaseMixin.write_lora_layers(
                state_dict={f"{component}.{key}": value for key, value in state_dict.items()},
                save_directory=tmp_path.parent,
                is_main_process=True,
                weight_name=tmp_path.name,
                save_function=None,
                safe_serialization=True,
                lora_adapter_metadata={f"{component}.{key}": value for key, value in metadata.items()},
            )
        _sort_safetensors_metadata(tmp_path)

    _replace_atomically(write, path)
    return path


def load_lora(denoiser: nn.Module, lora_dir) -> None:
    """Load a `save_lora` folder into `denoiser` (without an adapter yet) as the adapter "default".

    Stock pipelines do this with `load_lora_weights`; this is for denoisers whose pipeline has no LoRA loader
    (PixArtTransformer2DModel). The weights load as they were saved; no parameter is frozen or unfrozen.
    """
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors import safe_open

    check_lora_fits(denoiser, lora_dir)  # refuse another model's LoRA before peft adds anything
    component = _denoiser_name(denoiser)
    path = Path(lora_dir) / LORA_WEIGHT_NAME
    prefix = f"{component}."
    with safe_open(path, framework="pt") as file:
        state_dict = {key[len(prefix):]: file.get_tensor(key) for key in file.keys() if key.startswith(prefix)}
        metadata = json.loads((file.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY, "{}"))
    config = {key[len(prefix):]: value for key, value in metadata.items() if key.startswith(prefix)}
    if not state_dict or not config:
        raise ValueError(f"{path} holds no {component} LoRA with adapter metadata")
    inject_adapter_in_model(LoraConfig(**config), denoiser, adapter_name=ADAPTER_NAME)
    result = set_peft_model_state_dict(denoiser, state_dict, adapter_name=ADAPTER_NAME)
    if result.unexpected_keys:
        raise ValueError(f"{path} has LoRA weights for modules {denoiser.__class__.__name__} lacks: "
                         f"{result.unexpected_keys[:3]}")


def check_lora_fits(denoiser: nn.Module, lora_dir) -> None:
    """Raise a one-line `ValueError` unless the diffusers-format LoRA in `lora_dir` fits `denoiser`: every adapted
    module exists there with the input and output sizes of the LoRA's A and B matrices. Reads only the file, so a
    refused LoRA leaves the pipeline untouched (peft's own error comes after it has half-added the adapter)."""
    from safetensors import safe_open

    path = Path(lora_dir) / LORA_WEIGHT_NAME
    if not path.is_file():
        raise ValueError(f"{lora_dir} has no {LORA_WEIGHT_NAME}")
    component = _denoiser_name(denoiser)
    modules = dict(denoiser.named_modules())
    try:
        with safe_open(path, framework="pt") as file:
            shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except Exception as error:  # safetensors.SafetensorError, OSError: a damaged file
        raise ValueError(f"{path} is damaged ({error})") from None
    ours = {key[len(component) + 1:]: shape for key, shape in shapes.items() if key.startswith(component + ".")}
    if not ours:
        raise ValueError(f"{path} holds no {component} LoRA (keys start with "
                         f"{', '.join(sorted({k.split('.')[0] for k in shapes})) or 'nothing'})")
    for key, shape in sorted(ours.items()):
        for matrix, dim in (("lora_A", 1), ("lora_B", 0)):
            marker = f".{matrix}."
            if marker not in key:
                continue
            name = key.split(marker)[0]
            module = modules.get(name)
            weight = getattr(module, "base_layer", module)
            weight = getattr(weight, "weight", None)
            if weight is None:
                raise ValueError(f"{path} adapts {name}, which {type(denoiser).__name__} does not have: "
                                 "the LoRA was trained on another model")
            if shape[dim] != weight.shape[dim]:
                raise ValueError(f"{path} does not fit this model: {name} has {tuple(weight.shape)} weights, the LoRA's "
                                 f"{matrix} is {shape}; the LoRA was trained on another model")


def export_kohya(out_path, denoiser: nn.Module) -> Path:
    """Write the "default" LoRA of a UNet (sd, sdxl) as a kohya-format safetensors file.

    Keys look like `lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`, with
    `.lora_up.weight` and `.alpha` beside it (AUTOMATIC1111, ComfyUI, InvokeAI). They keep diffusers' module
    names: that is sd-scripts' own naming for SD 1.x/2.x; for SDXL sd-scripts names blocks `input_blocks_...`,
    which ComfyUI maps too.

    diffusers' `convert_state_dict_to_kohya` writes every `.alpha` as the rank, which would drop an alpha != rank;
    here each `.alpha` is the module's actual alpha (scaling x rank).
    """
    import safetensors.torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    if _denoiser_name(denoiser) != "unet":
        raise ValueError(
            f"kohya export supports the UNet families {', '.join(KOHYA_FAMILIES)}, not {type(denoiser).__name__}"
        )
    state_dict = get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME)
    kohya = convert_state_dict_to_kohya({f"unet.{key}": value for key, value in state_dict.items()})
    for name, module in denoiser.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.r:
            alpha_key = "lora_unet_" + name.replace(".", "_") + ".alpha"
            if alpha_key not in kohya:
                raise ValueError(f"kohya conversion lost module {name!r} (no {alpha_key})")
            alpha = module.scaling[ADAPTER_NAME] * module.r[ADAPTER_NAME]
            kohya[alpha_key] = torch.tensor(alpha, dtype=torch.float32)
    kohya = {key: value.detach().contiguous() for key, value in kohya.items()}
    out_path = Path(out_path)
    _replace_atomically(lambda tmp: safetensors.torch.save_file(kohya, tmp, metadata={"format": "pt"}), out_path)
    return out_path


__all__ = ["LORA_TARGETS", "add_lora", "check_lora_fits", "export_kohya", "load_lora", "lora_parameters", "save_lora"]
