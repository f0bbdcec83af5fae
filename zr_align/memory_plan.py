"""Plan the peak GPU memory of one reward fine-tuning step before owning the GPU (`zr-align plan`).

The models are built on the meta device (`zr_align.architectures`) or, for `tiny:` paths, for real; nothing is
downloaded or allocated at full size. What one DRaFT-K step holds:

- resident: every pipeline component in `model.dtype`, the reward VLM in `reward.dtype`, and the LoRA: fp32
  weight, fp32 gradient and AdamW's two fp32 moments (16 bytes a parameter);
- activations, *counted, not guessed*: each part runs once on meta (or tiny real) tensors inside
  `torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps for backward; we add up the
  distinct storages that are not parameters. Parts: one denoiser call (batch x2 with CFG), the VAE decode, the
  reward (one vision block and one text layer, scaled to the configured number of image tokens, text tokens and
  layers), each with its checkpointing switch off and on;
- the step's peak is the larger of the forward end (K grad steps' inputs or graphs, decode, reward) and the
  denoiser recompute during backward, plus the largest single saved tensor as allocator slack.

Attention runs through memory-efficient kernels on a GPU (they keep q, k, v, the output and a logsumexp), but the
meta device would decompose it into the math path that stores the L x L scores; while counting, SDPA is replaced
by a stand-in that saves what those kernels save.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch

from .diffusion.config import TrainConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAMW_BYTES_PER_LORA_PARAM = 16  # fp32 weight + fp32 grad + exp_avg + exp_avg_sq


def parse_size(text: str) -> float:
    """'24GB', '24 GiB', '80G', '16000MB' -> bytes (GB = 1e9, GiB = 2**30)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"--gpu-memory must look like 24GB or 80GiB; got {text!r}")
    value, unit, binary = float(match[1]), match[2].upper(), bool(match[3])
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit]
    return value * (1024 if binary else 1000) ** power


# ---------------------------------------------------------------------------------------------- counting
def _efficient_sdpa(original):
    """SDPA whose backward keeps what flash / memory-efficient kernels keep: q, k, v, out, fp32 logsumexp."""

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, mask, kwargs):
            out = original(q, k, v, attn_mask=mask, **kwargs)
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # never called: counting only builds the graph
            raise RuntimeError("the counting stand-in of SDPA has no backward")

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        kwargs = {"dropout_p": dropout_p, "is_causal": is_causal, "scale": scale, "enable_gqa": enable_gqa}
        if not torch.is_grad_enabled() or not any(t.requires_grad for t in (query, key, value)):
            return original(query, key, value, attn_mask=attn_mask, **kwargs)
        return Attention.apply(query, key, value, attn_mask, kwargs)

    return sdpa


@dataclass
class SavedBytes:
    """What autograd kept for backward during one counted call."""

    total: int = 0  # distinct storages, parameters excluded
    largest: int = 0  # the largest single one


@contextlib.contextmanager
def count_saved(parameters=()):
    """Count the bytes autograd saves inside the block (distinct storages, `parameters` excluded)."""
    result = SavedBytes()
    skip = {p.untyped_storage()._cdata for p in parameters}
    seen = set()

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in seen and key not in skip:
            seen.add(key)
            size = storage.nbytes()  # a view keeps its whole storage alive
            result.total += size
            result.largest = max(result.largest, size)
        return tensor

    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _efficient_sdpa(original)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield result
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


# ---------------------------------------------------------------------------------------------- parts
def _conditioning(sampler, batch: int) -> dict:
    """Prompt conditioning with the real shapes (the text encoders run on meta tensors where they can)."""
    prompts = ["a photo of a red fox sitting in fresh snow, golden hour"] * batch
    try:
        with torch.no_grad():
            return sampler.encode(prompts)
    except RuntimeError:  # an encoder with a data-dependent step (PixArt's T5 mask): shapes from the configs
        pipe, device, dtype = sampler.pipe, sampler.denoiser.device, sampler.denoiser.dtype
        rows = batch * (2 if sampler.config.guidance_scale > 1.0 else 1)
        length = min(300, pipe.tokenizer.model_max_length)
        width = pipe.text_encoder.config.d_model
        return {"encoder_hidden_states": torch.zeros(rows, length, width, device=device, dtype=dtype),
                "encoder_attention_mask": torch.ones(rows, length, device=device, dtype=torch.long)}


def denoiser_saved(sampler, batch: int, params) -> SavedBytes:
    """Saved tensors of one grad-step denoiser call (CFG included) on `batch` latents."""
    cond = _conditioning(sampler, batch)
    side = sampler.resolution // sampler.pipe.vae_scale_factor
    channels = sampler.pipe.vae.config.latent_channels
    device, dtype = sampler.denoiser.device, sampler.denoiser.dtype
    latents = torch.zeros(batch, channels, side, side, device=device, dtype=dtype)
    t = torch.tensor(500.0, device=device)
    with count_saved(params) as saved:
        sampler.predict(latents, t, cond, use_checkpoint=False)
    return saved


def decoder_saved(sampler, batch: int, params) -> SavedBytes:
    side = sampler.resolution // sampler.pipe.vae_scale_factor
    vae = sampler.pipe.vae
    latents = torch.zeros(batch, vae.config.latent_channels, side, side, device=vae.device, dtype=vae.dtype,
                          requires_grad=True)
    with count_saved(params) as saved:
        sampler.decode(latents)
    return saved


def _module_list(model, names):
    for name in names:
        module = model
        for part in name.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return module
    return None


@dataclass
class RewardActivations:
    saved: int  # without checkpointing
    checkpointed: int  # with checkpointing: layer inputs plus one layer recomputed in backward
    largest: int
    image_tokens: int  # per image, after merging
    text_tokens: int  # per row, before the image tokens


def reward_activations(reward, batch: int, resolution: int) -> RewardActivations:
    """Saved activations of the reward on `batch` images of `resolution` px.

    A tiny (real) reward is counted whole. A meta one is counted per layer: one text decoder layer on meta
    tensors of the real row count and length, and one vision block of the real width built for real on the CPU
    at a small image, scaled to the configured number of patches (vision blocks use data-dependent lengths that
    the meta device cannot run). Per-dimension rows see the image once per rubric dimension.
    """
    dims = 1 if reward.joint else len(reward.dimensions)
    image_tokens = reward.preprocessor.num_image_tokens(resolution, resolution)
    prompt = "a photo of a red fox sitting in fresh snow, golden hour"
    text_tokens = max(len(ids) for ids in reward.prefix_ids([prompt], "")) if not reward.joint else 0
    model = reward.model
    if next(model.parameters()).device.type != "meta":
        images = torch.rand(batch, 3, resolution, resolution, requires_grad=True)
        with count_saved(model.parameters()) as full:
            reward(images, [prompt] * batch)
        reward.enable_gradient_checkpointing()
        try:
            with count_saved(model.parameters()) as ckpt:
                reward(images, [prompt] * batch)
        finally:
            reward.disable_gradient_checkpointing()
        layers = _module_list(model, ["model.language_model.layers"])
        per_layer = full.total / max(1, len(layers)) if layers is not None else 0
        return RewardActivations(full.total, int(ckpt.total + per_layer), full.largest, image_tokens, text_tokens)

    rows, length = batch * dims, text_tokens + image_tokens
    text_layers = _module_list(model, ["model.language_model.layers"])
    text, hidden = _text_layer_saved(model, text_layers[0], rows, length)
    vision_per_patch, vision_width, vision_depth = _vision_block_saved_per_patch(model)
    merge = reward.preprocessor.merge_size ** 2 if hasattr(reward.preprocessor, "merge_size") else 4
    patches = rows * image_tokens * merge
    element = DTYPE_BYTES[str(model.dtype).replace("torch.", "")]
    vision_block = int(vision_per_patch * patches * element / 4)  # counted in fp32, planned in the model's dtype
    saved = len(text_layers) * text.total + vision_depth * vision_block
    inputs = len(text_layers) * rows * length * hidden * element + vision_depth * patches * vision_width * element
    checkpointed = inputs + max(text.total, vision_block)
    return RewardActivations(saved, checkpointed, max(text.largest, vision_block // 8), image_tokens, text_tokens)


def _text_layer_saved(model, layer, rows: int, length: int) -> tuple[SavedBytes, int]:
    lm = model.model.language_model
    hidden = lm.config.hidden_size
    x = torch.zeros(rows, length, hidden, device="meta", dtype=model.dtype, requires_grad=True)
    position_ids = torch.zeros(3, rows, length, device="meta", dtype=torch.long)
    position_embeddings = lm.rotary_emb(x, position_ids)
    with count_saved(model.parameters()) as saved:
        layer(x, attention_mask=None, position_ids=position_ids, position_embeddings=position_embeddings)
    return saved, hidden


def _vision_block_saved_per_patch(model, side_patches: int = 8) -> tuple[float, int, int]:
    """fp32 bytes one vision block saves per patch, measured on one real block of the real width (CPU, random
    init, a (side_patches x side_patches) image); and the block width and the number of blocks."""
    vision_config = model.config.vision_config.to_dict()
    depth = vision_config["depth"]
    width = vision_config.get("embed_dim", vision_config.get("hidden_size"))
    small = dict(vision_config, depth=1)
    for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
        if key in small:
            small[key] = [0] if key == "fullatt_block_indexes" else []
    tower_class = type(model.model.visual)
    config = type(model.config.vision_config)(**{k: v for k, v in small.items() if k != "model_type"})
    torch.manual_seed(0)
    tower = tower_class._from_config(config) if hasattr(tower_class, "_from_config") else tower_class(config)
    tower.requires_grad_(False).eval()
    patch, temporal = config.patch_size, config.temporal_patch_size
    grid = torch.tensor([[1, side_patches, side_patches]])
    pixels = torch.zeros(side_patches * side_patches, 3 * temporal * patch * patch, requires_grad=True)
    with count_saved(tower.parameters()) as saved:
        tower(pixels, grid_thw=grid)
    # the tower also runs the patch embedding and merger; a block dominates and the others are alike
    return saved.total / (side_patches * side_patches), width, depth


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class MemoryPlan:
    """Planned peak memory of one reward fine-tuning step (bytes), its parts, and what would fit."""

    weights: dict[str, int]
    lora_parameters: int
    lora_state: int
    parts: dict[str, int]  # activation parts under the configured switches
    alternatives: dict[str, int] = field(default_factory=dict)  # the same parts with each switch flipped
    image_tokens: int = 0
    peak: int = 0

    @property
    def resident(self) -> int:
        return sum(self.weights.values()) + self.lora_state


def plan_step(config: TrainConfig, pipe, sampler, denoiser, reward, batch_size: int | None = None,
              switches: dict | None = None) -> MemoryPlan:
    """The planned peak of one DRaFT-K / ReFL / DRaFT-LV step of `config` on the set-up models.

    `switches` overrides `sampling.checkpoint_steps`, `sampling.checkpoint_denoiser`, `sampling.checkpoint_vae`,
    `reward.gradient_checkpointing` (e.g. {"checkpoint_vae": True}) without changing `config`.
    """
    s = {"checkpoint_steps": config.sampling.checkpoint_steps,
         "checkpoint_denoiser": config.sampling.checkpoint_denoiser,
         "checkpoint_vae": config.sampling.checkpoint_vae,
         "reward_checkpointing": config.reward.gradient_checkpointing, **(switches or {})}
    batch = batch_size or config.batch_size
    parts_cache = _parts(config, pipe, sampler, denoiser, reward, batch)
    weights = {name: _bytes(module) for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    lora = [p for p in denoiser.parameters() if p.requires_grad]
    lora_count = sum(p.numel() for p in lora)
    weights["unet" if "unet" in weights else "transformer"] -= lora_count * 4  # LoRA counted in lora_state
    if reward is not None:
        weights["reward"] = _bytes(reward.model)
    denoiser_act = parts_cache["denoiser_ckpt" if s["checkpoint_denoiser"] else "denoiser"]
    vae_act = parts_cache["vae_ckpt" if s["checkpoint_vae"] else "vae"]
    reward_act = parts_cache["reward_ckpt" if s["reward_checkpointing"] else "reward"]
    k = config.sampling.k if config.method == "draft_k" else (config.sampling.num_steps if config.method == "full"
                                                               else 1)
    copies = config.sampling.lv_samples if config.method == "draft_lv" else 1
    # The grad steps' graphs: with step checkpointing only each step's input is kept until backward.
    steps = k * (parts_cache["step_input"] if s["checkpoint_steps"] else denoiser_act)
    forward_end = copies * (steps + vae_act + reward_act)
    # In backward the checkpointed step recomputes one denoiser call and holds its graph.
    recompute = denoiser_act if s["checkpoint_steps"] else 0
    slack = parts_cache["largest"]
    parts = {"grad_steps": steps, "decode": vae_act, "reward": reward_act, "denoiser_recompute": recompute,
             "slack": slack}
    plan = MemoryPlan(weights=weights, lora_parameters=lora_count, lora_state=lora_count * ADAMW_BYTES_PER_LORA_PARAM,
                      parts=parts, image_tokens=parts_cache["image_tokens"])
    plan.peak = plan.resident + max(forward_end, recompute + copies * parts_cache["step_input"]) + slack
    plan.alternatives = {name: parts_cache[name] for name in ("denoiser", "denoiser_ckpt", "vae", "vae_ckpt",
                                                              "reward", "reward_ckpt")}
    return plan


def _bytes(module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


_PARTS_CACHE: dict = {}


def _parts(config, pipe, sampler, denoiser, reward, batch: int) -> dict:
    """Every activation part with each switch off and on (counted once per models and batch)."""
    key = (id(pipe), id(reward), batch)
    if key in _PARTS_CACHE:
        return _PARTS_CACHE[key]
    params = list(denoiser.parameters()) + list(pipe.vae.parameters())
    cfg = 2 if config.sampling.guidance_scale > 1.0 else 1
    parts = {}
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if config.mixed_precision == "bf16"
                and next(denoiser.parameters()).device.type == "meta" else contextlib.nullcontext())
    with autocast:
        for ckpt in (False, True):
            _set_checkpointing(denoiser, ckpt)
            saved = denoiser_saved(sampler, batch, params)
            parts["denoiser_ckpt" if ckpt else "denoiser"] = saved.total
            largest_denoiser = saved.largest if not ckpt else 0
            _set_checkpointing(pipe.vae, ckpt)
            saved_vae = decoder_saved(sampler, batch, params)
            parts["vae_ckpt" if ckpt else "vae"] = saved_vae.total
        _set_checkpointing(denoiser, config.sampling.checkpoint_denoiser)
        _set_checkpointing(pipe.vae, config.sampling.checkpoint_vae)
    # With denoiser checkpointing, backward recomputes one block at a time: add the largest block's graph.
    parts["denoiser_ckpt"] += _largest_block(parts["denoiser"], denoiser)
    parts["vae_ckpt"] += _largest_block(parts["vae"], pipe.vae.decoder)
    side = sampler.resolution // pipe.vae_scale_factor
    element = next(denoiser.parameters()).element_size()
    parts["step_input"] = batch * cfg * pipe.vae.config.latent_channels * side * side * max(element, 4)
    if reward is not None:
        r = reward_activations(reward, batch * (config.sampling.lv_samples if config.method == "draft_lv" else 1),
                               config.model.resolution)
        parts.update(reward=r.saved, reward_ckpt=r.checkpointed, image_tokens=r.image_tokens)
        parts["largest"] = max(largest_denoiser, r.largest)
    else:
        parts.update(reward=0, reward_ckpt=0, image_tokens=0, largest=largest_denoiser)
    _PARTS_CACHE[key] = parts
    return parts


def _set_checkpointing(module, on: bool) -> None:
    if on:
        module.enable_gradient_checkpointing()
    elif getattr(module, "is_gradient_checkpointing", False):
        module.disable_gradient_checkpointing()


def _largest_block(total: int, module) -> int:
    """The graph of the largest checkpointed block, estimated as the total over the number of blocks."""
    blocks = [m for m in module.modules() if getattr(m, "gradient_checkpointing", None) is not None]
    children = sum(len(getattr(m, attr, [])) for m in [module] for attr in
                   ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks"))
    return int(total / max(1, children or len(blocks)))


# ---------------------------------------------------------------------------------------------- suggestions
SWITCHES = ("checkpoint_steps", "reward_checkpointing", "checkpoint_vae", "checkpoint_denoiser")


def suggest(config: TrainConfig, setup, budget: float, max_batch: int = 16) -> dict:
    """The cheapest switches (in the order above: least recompute first) and the largest batch that fit `budget`."""
    pipe, sampler, denoiser, reward = setup
    chosen = {name: False for name in SWITCHES}
    for name in ("",) + SWITCHES:
        if name:
            chosen[name] = True
        if plan_step(config, pipe, sampler, denoiser, reward, 1, chosen).peak <= budget:
            break
    else:
        return {"fits": False, "switches": chosen, "batch_size": 0}
    batch = 1
    while batch < max_batch and plan_step(config, pipe, sampler, denoiser, reward, batch + 1, chosen).peak <= budget:
        batch += 1
    return {"fits": True, "switches": chosen, "batch_size": batch}


def gib(value: float) -> float:
    """Bytes -> GiB (2**30), the unit of `torch.cuda.max_memory_allocated` reports and our benchmarks."""
    return round(value / 2**30, 2)


def process_baseline() -> int:
    """Resident memory of this process now (bytes): on a CPU the peak RSS of a run includes the interpreter and
    the libraries, which a GPU's allocated memory does not; the CPU plan adds it."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def plan_report(config: TrainConfig, setup, budget: float | None = None) -> dict:
    """Everything `zr-align plan` prints, as a dict (bytes as GiB)."""
    pipe, sampler, denoiser, reward = setup
    on_cpu = next(denoiser.parameters()).device.type == "cpu"
    baseline = process_baseline() if on_cpu else 0
    plan = plan_step(config, pipe, sampler, denoiser, reward)
    report = {
        "device": "cpu (peak RSS, includes the process)" if on_cpu else "gpu (allocated memory)",
        "batch_size": config.batch_size,
        "weights_gib": {k: gib(v) for k, v in plan.weights.items()},
        "lora_parameters": plan.lora_parameters,
        "lora_state_gib": gib(plan.lora_state),
        "image_tokens_per_image": plan.image_tokens,
        "activations_gib": {k: gib(v) for k, v in plan.parts.items()},
        "activations_by_switch_gib": {k: gib(v) for k, v in plan.alternatives.items()},
        "process_baseline_gib": gib(baseline),
        "peak_gib": gib(plan.peak + baseline),
    }
    if budget is not None:
        fit = suggest(config, setup, budget - baseline)
        report["budget_gib"] = gib(budget)
        report["suggestion"] = fit
    return report


__all__ = ["MemoryPlan", "count_saved", "gib", "parse_size", "plan_report", "plan_step", "suggest"]
