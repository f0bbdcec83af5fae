"""Guidance distillation (`optim.cfg_distill_weight`): at high noise the denoiser's conditional prediction is pulled
toward the frozen base's classifier-free-guided one. Real tiny diffusers pipelines, fixed seeds."""

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from zr_align.diffusion.losses import _noised, guidance_distillation_loss
from zr_align.diffusion.sampling import DifferentiableSampler, SamplingConfig
from zr_align.tiny.diffusion import tiny_pipeline

from test_train_t2i import make_sft_data, run  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def sampler_of(family: str, **kwargs) -> DifferentiableSampler:
    return DifferentiableSampler(tiny_pipeline(family, **kwargs), family, SamplingConfig(), 64)


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_the_window_draws_high_noise_only_and_the_full_range_draws_as_before(family):
    sampler = sampler_of(family)
    latents = torch.randn(256, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    _, t_high, _ = _noised(sampler, latents, torch.Generator().manual_seed(1), window=0.25)
    _, t_full, _ = _noised(sampler, latents, torch.Generator().manual_seed(1), window=1.0)
    generator = torch.Generator().manual_seed(1)
    torch.randn(latents.shape, generator=generator)  # the noise is drawn first
    if family == "sd":
        assert int(t_high.min()) >= 750 and int(t_high.max()) <= 999
        assert torch.equal(t_full, torch.randint(0, 1000, (256,), generator=generator))
    else:  # flow matching: the timestep is 1000 sigma
        assert float(t_high.min()) >= 750.0 and float(t_high.max()) <= 1000.0
        assert torch.allclose(t_full, torch.rand(256, generator=generator) * 1000.0)
    assert float(t_full.min()) < 250  # the full range reaches low noise; the window never does


def by_hand(sampler, teacher, latents, prompts, window):
    """The teacher's conditional and unconditional predictions and the student's, at the noise `_noised` draws with
    seed 3 (as the loss does)."""
    x_t, t, _ = _noised(sampler, latents, torch.Generator().manual_seed(3), window)
    pipe = sampler.pipe
    cond = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    empty = pipe.encode_prompt([""] * len(prompts), "cpu", 1, False)[0]
    with torch.no_grad():
        c = teacher(x_t, t, encoder_hidden_states=cond).sample
        u = teacher(x_t, t, encoder_hidden_states=empty).sample
        student = sampler.denoiser(x_t, t, encoder_hidden_states=cond).sample
    return c, u, student


def test_the_loss_is_the_distance_to_the_guided_prediction_and_trains_only_the_student():
    """At scale 1 a student equal to its teacher is already there (loss 0); at scale 3 the loss is the mean squared
    distance to `u + 3 (c - u)` (with guidance rescale, to its rescaled form), computed here by hand, and its gradient
    reaches the student, not the teacher."""
    torch.manual_seed(0)
    sampler = sampler_of("sd", prediction_type="v_prediction")
    teacher = copy.deepcopy(sampler.denoiser).requires_grad_(False)
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    prompts = ["a red square", "a blue circle", "a green triangle"]
    factory = lambda: contextlib.nullcontext(teacher)  # noqa: E731
    at_one = guidance_distillation_loss(sampler, factory, latents, prompts, torch.Generator().manual_seed(3), 1.0, 0.25)
    assert float(at_one.detach()) < 1e-10
    loss = guidance_distillation_loss(sampler, factory, latents, prompts, torch.Generator().manual_seed(3), 3.0, 0.25)
    c, u, student = by_hand(sampler, teacher, latents, prompts, 0.25)
    guided = u + 3.0 * (c - u)
    expected = ((student - guided) ** 2).mean()
    assert float(loss.detach()) > 1e-4 and torch.allclose(loss.detach(), expected, rtol=1e-4)
    # guidance rescale 0.7: the guided target's per-sample std brought 70% of the way back to the conditional's
    rescaled = guided * c.std(dim=(1, 2, 3), keepdim=True) / guided.std(dim=(1, 2, 3), keepdim=True)
    target = 0.7 * rescaled + 0.3 * guided
    with torch.no_grad():
        at_rescale = guidance_distillation_loss(sampler, factory, latents, prompts, torch.Generator().manual_seed(3),
                                                3.0, 0.25, rescale=0.7)
    assert torch.allclose(at_rescale, ((student - target) ** 2).mean(), rtol=1e-4)
    assert not torch.allclose(at_rescale, expected, rtol=1e-2)
    sampler.denoiser.requires_grad_(True)
    loss.backward()
    grads = [p.grad for p in sampler.denoiser.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_the_centred_target_guides_the_layout_and_keeps_the_conditional_tint():
    """`center=True`: the target is `c + 2 (d - mean d)` at scale 3, `d = c - u` and its mean per sample and channel
    over the image, so the target's channel means are the conditional prediction's (plain guidance moves them)."""
    torch.manual_seed(0)
    sampler = sampler_of("sd")
    teacher = copy.deepcopy(sampler.denoiser).requires_grad_(False)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    prompts = ["a red square", "a blue circle"]
    factory = lambda: contextlib.nullcontext(teacher)  # noqa: E731
    c, u, student = by_hand(sampler, teacher, latents, prompts, 0.5)
    with torch.no_grad():
        d = c - u
        centred = c + 2.0 * (d - d.mean(dim=(2, 3), keepdim=True))
        plain = u + 3.0 * d
        loss = guidance_distillation_loss(sampler, factory, latents, prompts, torch.Generator().manual_seed(3), 3.0,
                                          0.5, center=True)
        uncentred = guidance_distillation_loss(sampler, factory, latents, prompts, torch.Generator().manual_seed(3),
                                               3.0, 0.5)
    assert torch.allclose(loss, ((student - centred) ** 2).mean(), rtol=1e-4)
    assert torch.allclose(uncentred, ((student - plain) ** 2).mean(), rtol=1e-4)
    means = lambda x: x.mean(dim=(2, 3))  # noqa: E731
    assert torch.allclose(means(centred), means(c), atol=1e-5)
    assert float((means(plain) - means(c)).abs().max()) > 1e-3  # plain guidance moves the tint; centring does not
    assert float(((centred - c) ** 2).mean()) > 1e-4  # and the centred target still guides


def guided_gap(pipe: StableDiffusionPipeline, base: StableDiffusionPipeline, prompts, scale=3.0, t=900) -> float:
    """Mean squared distance, at noise level `t` on fixed latents, between `pipe`'s conditional prediction and
    `base`'s classifier-free-guided one."""
    x_t = torch.randn(len(prompts), 4, 16, 16, generator=torch.Generator().manual_seed(7))
    steps = torch.full((len(prompts),), t)
    cond = base.encode_prompt(prompts, "cpu", 1, False)[0]
    empty = base.encode_prompt([""] * len(prompts), "cpu", 1, False)[0]
    with torch.no_grad():
        c = base.unet(x_t, steps, encoder_hidden_states=cond).sample
        u = base.unet(x_t, steps, encoder_hidden_states=empty).sample
        own = pipe.unet(x_t, steps, encoder_hidden_states=pipe.encode_prompt(prompts, "cpu", 1, False)[0]).sample
    return float(((own - (u + scale * (c - u))) ** 2).mean())


@pytest.mark.parametrize("trainable", ["full", "lora"])
def test_training_with_it_moves_plain_predictions_toward_the_guided_base(tmp_path, tiny_cache, trainable):
    """Two SFT runs from the same base, with and without the term (every weight: the teacher is a frozen copy; LoRA:
    the LoRA switched off): the run with it ends far closer to the base's guided prediction at high noise."""
    data = make_sft_data(tmp_path / "data")
    prompts = ["a square number 0", "a square number 1"]
    gaps = {}
    for name, weight in (("plain", 0), ("distilled", 5)):
        out = tmp_path / name
        assert run(out, tiny_cache, "method=sft", f"data.sft_data={data}", f"model.trainable={trainable}",
                   "max_steps=8", "optim.lr=3e-3", f"optim.cfg_distill_weight={weight}") == 0
        base = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd")
        if trainable == "full":
            tuned = StableDiffusionPipeline.from_pretrained(out / "pipeline")
        else:
            tuned = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd")
            tuned.load_lora_weights(out / "lora")
        gaps[name] = guided_gap(tuned, base, prompts)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(r["grad_norm"] > 0 and not r["skipped"] for r in records)
    assert gaps["distilled"] < 0.5 * gaps["plain"], gaps


def test_the_config_refuses_a_bad_window_and_a_term_without_data():
    from zr_align.diffusion.config import load_train_config

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ValueError, match=r"optim.cfg_distill_window must be in \(0, 1\]"):
        load_train_config(root / "configs" / "tiny_debug.yaml", ["optim.cfg_distill_window=0"])
    with pytest.raises(ValueError, match=r"optim.cfg_distill_rescale must be in \[0, 1\]"):
        load_train_config(root / "configs" / "tiny_debug.yaml", ["optim.cfg_distill_rescale=1.5"])
    with pytest.raises(ValueError, match="optim.cfg_distill_weight > 0 needs data.sft_data"):
        load_train_config(root / "configs" / "tiny_debug.yaml", ["optim.cfg_distill_weight=1"])
    centred = load_train_config(root / "configs" / "tiny_debug.yaml", ["optim.cfg_distill_center=true"])
    assert centred.optim.cfg_distill_center is True
    with pytest.raises(ValueError, match="optim.cfg_distill_center must be true or false"):
        load_train_config(root / "configs" / "tiny_debug.yaml", ["optim.cfg_distill_center=maybe"])
