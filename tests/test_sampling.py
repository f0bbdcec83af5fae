"""Differentiable sampling: every method reaches the LoRA, truncation is real, K=1 is not vanishing."""

import pytest
import torch

from zr_align.diffusion.losses import denoising_loss, encode_images
from zr_align.diffusion.sampling import DifferentiableSampler, SamplingConfig
from zr_align.lora import add_lora, lora_parameters
from zr_align.rewards import ZRewardModel
from zr_align.tiny.diffusion import tiny_pipeline

PROMPTS = ["a large red circle on the left", "a small blue square at the top"]
METHODS = ["draft_k", "refl", "draft_lv", "full"]


@pytest.fixture(scope="module")
def reward_model(tiny_reward_dirs):
    return ZRewardModel.from_pretrained(tiny_reward_dirs("qwen2_vl"))


@pytest.fixture(scope="module", params=["sd", "sdxl", "sd3"])
def lora_pipe(request):
    """(family, pipeline with a LoRA on its denoiser); lora_B set non-zero so lora_A gets gradients too."""
    family = request.param
    pipe = tiny_pipeline(family)
    denoiser = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    add_lora(denoiser, family, rank=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return family, pipe, denoiser


def lora_grad_norm(denoiser) -> float:
    grads = [p.grad for p in lora_parameters(denoiser) if p.grad is not None]
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))) if grads else 0.0


@pytest.mark.parametrize("method", METHODS + ["sft"])
def test_one_step_trains_only_the_lora(lora_pipe, reward_model, method):
    family, pipe, denoiser = lora_pipe
    sampler = DifferentiableSampler(pipe, family, SamplingConfig(num_steps=4, k=2), resolution=64)
    params = lora_parameters(denoiser)
    lora_before = [p.detach().clone() for p in params]
    base = {n: p.detach().clone() for n, p in denoiser.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    if method == "sft":
        images = torch.rand(2, 3, 64, 64, generator=generator)
        loss = denoising_loss(sampler, encode_images(sampler, images), PROMPTS, generator)
    else:
        trajectory = sampler.sample(PROMPTS, method, generator)
        loss = -reward_model(trajectory.images, PROMPTS * trajectory.repeats).reward.mean()
    loss.backward()
    norm = lora_grad_norm(denoiser)
    assert torch.isfinite(torch.tensor(norm)) and norm > 0
    assert all(p.grad is None for n, p in denoiser.named_parameters() if not p.requires_grad)
    assert all(p.dtype == torch.float32 for p in params)
    optimizer.step()
    optimizer.zero_grad()
    assert any(not torch.equal(a, p) for a, p in zip(lora_before, params))
    assert all(torch.equal(base[n], p) for n, p in denoiser.named_parameters() if not p.requires_grad)


def test_k1_gradient_is_not_vanishing(lora_pipe, reward_model):
    """Default: trailing timestep spacing, so the last DDIM step sits at t = 1000/T - 1 (124 for T=8); with
    diffusers' "leading" spacing and steps_offset=1 it sits at t=1, where x0 barely depends on the model.
    Flow matching (sd3) has no spacing choice: its last Euler step starts at sigma = 1/T-ish."""
    family, pipe, denoiser = lora_pipe
    configs = {"trailing_k1": SamplingConfig(num_steps=8, k=1), "full": SamplingConfig(num_steps=8, k=8)}
    if family != "sd3":
        configs["leading_k1"] = SamplingConfig(num_steps=8, k=1, timestep_spacing="leading")
    norms = {}
    for name, config in configs.items():
        sampler = DifferentiableSampler(pipe, family, config, resolution=64)
        denoiser.zero_grad()
        trajectory = sampler.sample(PROMPTS, "draft_k", torch.Generator().manual_seed(1))
        reward_model(trajectory.images, PROMPTS).reward.mean().backward()
        norms[name] = lora_grad_norm(denoiser)
    denoiser.zero_grad()
    print(f"{family} LoRA grad norms: {norms}")
    assert norms["trailing_k1"] > 1e-4 * norms["full"]  # not vanishing next to full backprop through T steps
    if family != "sd3":
        assert norms["trailing_k1"] > 4 * norms["leading_k1"]  # and clearly above what leading spacing gives


@pytest.mark.parametrize("k", [1, 3])
def test_truncation_is_real(lora_pipe, k):
    """The graph holds K denoiser calls, not T: with per-step checkpointing backward re-runs exactly K."""
    family, pipe, denoiser = lora_pipe
    sampler = DifferentiableSampler(pipe, family, SamplingConfig(num_steps=6, k=k), resolution=64)
    calls = {"grad": 0, "all": 0}

    def count(*_):
        calls["all"] += 1
        calls["grad"] += torch.is_grad_enabled()

    # a pre-hook: checkpoint recomputation stops early, before forward hooks would run
    hook = denoiser.register_forward_pre_hook(count)
    try:
        trajectory = sampler.sample(PROMPTS[:1], "draft_k", torch.Generator().manual_seed(0))
        assert calls == {"grad": k, "all": 6}  # T calls, K of them with grad
        calls.update(grad=0, all=0)
        trajectory.images.mean().backward()
        assert calls["all"] == k  # recomputed in backward: exactly the K grad steps
    finally:
        hook.remove()
        denoiser.zero_grad()
    assert trajectory.grad_steps == list(range(6 - k, 6))


def saved_bytes(sampler, steps: int, k: int = 1, denoiser_only: bool = False) -> int:
    """Bytes autograd keeps for backward during one trajectory (all of it, or only inside denoiser calls)."""
    total, inside = {"bytes": 0}, {"on": not denoiser_only}

    def pack(t):
        if inside["on"]:
            total["bytes"] += t.numel() * t.element_size()
        return t

    hooks = []
    if denoiser_only:
        hooks = [sampler.denoiser.register_forward_pre_hook(lambda *_: inside.update(on=True)),
                 sampler.denoiser.register_forward_hook(lambda *_: inside.update(on=False))]
    sampler.config.num_steps, sampler.config.k = steps, k
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sampler.sample(PROMPTS[:1], "draft_k", torch.Generator().manual_seed(0))
    finally:
        for hook in hooks:
            hook.remove()
    return total["bytes"]


def test_saved_activations_flat_in_T(lora_pipe):
    family, pipe, _ = lora_pipe
    sampler = DifferentiableSampler(pipe, family, SamplingConfig(num_steps=4, k=1), resolution=64)
    assert saved_bytes(sampler, 4) == saved_bytes(sampler, 16)  # no-grad steps keep nothing
    sampler.config.checkpoint_steps = False
    assert saved_bytes(sampler, 4) == saved_bytes(sampler, 16)


def test_step_checkpointing_holds_no_denoiser_activations(lora_pipe):
    """Without it the K grad steps keep K steps of activations until backward; with it, none (each step is
    recomputed alone in backward, so the peak is one step's activations)."""
    family, pipe, _ = lora_pipe
    sampler = DifferentiableSampler(pipe, family, SamplingConfig(num_steps=4, k=1, checkpoint_steps=False),
                                    resolution=64)
    one, three = saved_bytes(sampler, 4, 1, True), saved_bytes(sampler, 4, 3, True)
    assert one > 0 and 2.9 * one <= three <= 3.3 * one  # linear in K (the first grad step has no input grad)
    sampler.config.checkpoint_steps = True
    assert saved_bytes(sampler, 4, 3, True) == 0
    print(f"{family}: one grad step keeps {one / 2**20:.2f} MiB of denoiser activations without checkpointing")


def test_k_distributions_and_refl_range():
    config = SamplingConfig(num_steps=10, k=3, k_distribution="uniform")
    sampler = DifferentiableSampler.__new__(DifferentiableSampler)
    sampler.config = config
    g = torch.Generator().manual_seed(0)
    draws = [sampler.draw_k(g) for _ in range(200)]
    assert set(draws) == {1, 2, 3}
    config.k_distribution, config.k_std = "gaussian", 2.0
    draws = [sampler.draw_k(g) for _ in range(200)]
    assert min(draws) >= 1 and max(draws) <= 10 and len(set(draws)) > 3
    with pytest.raises(ValueError, match="sampling.k_distribution must be one of"):
        SamplingConfig(k_distribution="poisson")
    with pytest.raises(ValueError, match=r"sampling.k \(30\) cannot exceed"):
        SamplingConfig(k=30)


def test_resolution_not_divisible_by_vae_factor():
    pipe = tiny_pipeline("sd")
    with pytest.raises(ValueError, match="image size 66 is not divisible by 4"):
        DifferentiableSampler(pipe, "sd", SamplingConfig(), resolution=66)
    with pytest.raises(ValueError, match="unknown diffusion family 'kandinsky'"):
        DifferentiableSampler(pipe, "kandinsky", SamplingConfig(), resolution=64)


@pytest.mark.parametrize("method", ["draft_k", "draft_lv"])
def test_merge_lora_same_trajectory_and_gradient_base_restored_exactly(lora_pipe, reward_model, method):
    """`sampling.merge_lora`: the no-grad steps with the LoRA folded into the base weights give the same images and
    LoRA gradient up to float rounding; afterwards the base weights are bit-identical and the adapters active."""
    family, pipe, denoiser = lora_pipe
    base = {n: p.detach().clone() for n, p in denoiser.named_parameters() if not p.requires_grad}
    results = []
    for merge in (False, True):
        config = SamplingConfig(num_steps=6, k=2, merge_lora=merge, guidance_scale=2.0)
        trajectory = DifferentiableSampler(pipe, family, config, 64).sample(
            PROMPTS, method, torch.Generator().manual_seed(3))
        reward_model(trajectory.images, PROMPTS * trajectory.repeats).reward.mean().backward()
        grads = [p.grad.clone() for p in lora_parameters(denoiser)]
        denoiser.zero_grad(set_to_none=True)
        results.append((trajectory.images.detach(), grads))
    (images, grads), (images_merged, grads_merged) = results
    assert (images - images_merged).abs().max() < 1e-4 and (images - images_merged).abs().max() > 0
    for g, gm in zip(grads, grads_merged, strict=True):
        torch.testing.assert_close(gm, g, rtol=1e-3, atol=1e-6)
    assert all(torch.equal(p, base[n]) for n, p in denoiser.named_parameters() if not p.requires_grad)
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.merged or m.disable_adapters for m in layers)
