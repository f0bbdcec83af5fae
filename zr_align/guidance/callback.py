"""Per-step reward guidance as a `callback_on_step_end` of stock diffusers pipelines.

After denoising step `i` the pipeline hands its latents `x_j` (j = i + 1, the input of the next step) to the
callback. Diffusers runs `__call__` under `no_grad`, so the callback re-enables gradients and, with the engine's
own pieces (`zr_align.diffusion.sampling`): re-runs the denoiser at `(x_j, t_j)` with the pipeline's prompt
embeddings and classifier-free guidance, predicts x0, decodes it, scores it with the reward and moves

    x_j <- x_j + scale * sigma_j * d_j,   d_j = the reward gradient w.r.t. x_j, unit RMS per image

where sigma_j is the noise level of `x_j` (sqrt(1 - alpha_bar_t), or the flow-matching sigma). Scoring the x0
prediction rather than the noisy latents is "forward universal guidance" (Bansal et al., "Universal Guidance for
Diffusion Models", 2023), whose guidance term is likewise weighted by sqrt(1 - alpha_bar_t). The final latents
(after the last step) are never moved: that would optimise pixels directly, with nothing left to denoise.

Cost per guided step: one more denoiser call (two with CFG), one decode and one reward call, forward and
backward. Memory: the graph of one step lives only inside the callback, so peak memory does not grow with the
number of sampling steps; `gradient_checkpointing` also recomputes the denoiser call and decode + reward in
backward so that only one of their graphs is alive at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.callbacks import PipelineCallback
from torch.utils.checkpoint import checkpoint

from .gradients import step_direction
from .pipelines import frozen, make_sampler, pipeline_family, require_differentiable

# family -> {the pipeline's callback tensor input: the engine's conditioning key}. The pipelines stack
# [negative; positive] embeddings before the loop when they use CFG, the order the engine's `predict` expects.
CONDITIONING = {
    "sd": {"prompt_embeds": "encoder_hidden_states"},
    "sdxl": {"prompt_embeds": "encoder_hidden_states", "add_text_embeds": "text_embeds"},
    "sd3": {"prompt_embeds": "encoder_hidden_states", "pooled_prompt_embeds": "pooled_projections"},
}


@dataclass
class GuidanceOptions:
    """Per-step reward guidance (`RewardGuidance`). Every guided step costs a denoiser call, a decode and a
    reward call with their backward: on TinyWorld about 4-5 plain denoising steps per guided step."""

    # step length: latents move by scale * sigma_t * (unit-RMS gradient); 0 changes nothing. 0.02 was best on
    # TinyWorld's validation prompts (0.01-0.05 all good, 0.2 no better than plain); tune it per model.
    scale: float = 0.02
    window: tuple[float, float] = (0.0, 1.0)  # guide denoising steps j with start <= j / T < end
    steps: tuple[int, ...] | None = None  # or exactly these denoising steps j (1 .. T-1); overrides `window`
    normalize: bool = True  # unit-RMS gradient per image; False: the raw gradient (clipped by max_grad_norm)
    max_grad_norm: float | None = None  # with normalize=False: clip each image's gradient to this L2 norm
    gradient_checkpointing: bool = False  # recompute denoiser and decode + reward in backward: less memory, ~+1 fwd

    def __post_init__(self):
        if not self.scale >= 0:
            raise ValueError(f"guidance scale must be >= 0; got {self.scale!r}")
        start, end = self.window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"guidance window must satisfy 0 <= start < end <= 1; got {self.window!r}")
        if self.steps is not None and any(int(s) != s or s < 1 for s in self.steps):
            raise ValueError(f"guidance steps must be denoising step indices >= 1; got {self.steps!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0; got {self.max_grad_norm!r}")

    def guided(self, j: int, num_steps: int) -> bool:
        """Whether the latents entering denoising step `j` of `num_steps` are moved."""
        if not 1 <= j < num_steps:
            return False
        if self.steps is not None:
            return j in self.steps
        return self.window[0] <= j / num_steps < self.window[1]


class RewardGuidance(PipelineCallback):
    """`pipe(prompts, callback_on_step_end=RewardGuidance(pipe, reward, prompts))`: reward guidance inside a stock
    `StableDiffusionPipeline`, `StableDiffusionXLPipeline` or `StableDiffusion3Pipeline` call.

    Args:
        pipe: the pipeline it will be passed to (its family picks the tensor inputs the callback asks for).
        reward: a differentiable reward, `reward(images in [0, 1], prompts) -> RewardOutput` (a `ZRewardModel`).
        prompts: the prompts of the call, one per prompt (repeated for `num_images_per_prompt`).
        options (`GuidanceOptions`): scale, guided steps, gradient normalisation, checkpointing.

    After a call, `trace` holds `(j, (B,) reward of the x0 prediction before the move)` for each guided step.
    """

    def __init__(self, pipe, reward, prompts: list[str], options: GuidanceOptions | None = None):
        super().__init__()  # PipelineCallback's CFG cut-off settings are not used
        self.family = pipeline_family(pipe)
        require_differentiable(reward, "guidance")
        if isinstance(prompts, str) or not prompts:
            raise ValueError("RewardGuidance needs the call's prompts as a non-empty list of strings")
        self.reward, self.prompts = reward, list(prompts)
        self.options = options if options is not None else GuidanceOptions()
        self.trace: list[tuple[int, torch.Tensor]] = []

    @property
    def tensor_inputs(self) -> list[str]:
        extra = ["add_time_ids"] if self.family == "sdxl" else []
        return ["latents", *CONDITIONING[self.family], *extra]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        scheduler = pipeline.scheduler
        num_steps, j = len(scheduler.timesteps), step_index + 1
        if not self.options.guided(j, num_steps):
            return callback_kwargs
        latents = callback_kwargs["latents"]
        _check_call(pipeline, self.family, callback_kwargs, latents)
        cfg = pipeline.guidance_scale if pipeline.do_classifier_free_guidance else 1.0
        sampler = make_sampler(pipeline, latents, num_steps, cfg)
        schedule = x0_schedule(sampler, scheduler, num_steps)
        t = scheduler.timesteps[j]
        cond = {key: callback_kwargs[name] for name, key in CONDITIONING[self.family].items()}
        grad, reward = self._reward_gradient(sampler, schedule, latents, t, j, cond)
        self.trace.append((j, reward.cpu()))
        direction = step_direction(grad, self.options.normalize, self.options.max_grad_norm)
        move = (self.options.scale * noise_level(sampler, schedule, t, j)) * direction
        callback_kwargs["latents"] = latents + move.to(latents.dtype)
        return callback_kwargs

    def _reward_gradient(self, sampler, schedule, latents, t, j, cond):
        """Gradient of the summed reward of the x0 prediction w.r.t. the latents, and that `(B,)` reward."""
        prompts = _per_image(self.prompts, latents.shape[0])
        use_checkpoint = self.options.gradient_checkpointing

        def score(x0):
            return self.reward(sampler.decode(x0), prompts).reward

        x = latents.detach().requires_grad_(True)
        with torch.enable_grad(), frozen(sampler.denoiser, sampler.pipe.vae):
            out = sampler.predict(x, t, cond, use_checkpoint=use_checkpoint)
            x0 = sampler.step(schedule, out, t, j, x)[1]
            reward = checkpoint(score, x0, use_reentrant=False) if use_checkpoint else score(x0)
            (grad,) = torch.autograd.grad(reward.sum(), x)
        return grad, reward.detach()


def x0_schedule(sampler, scheduler, num_steps: int):
    """The schedule the engine's x0 prediction (`sampler.step`) reads at the pipeline's step `j`.

    Flow matching: the pipeline's own scheduler (only its `sigmas` are read; it is not stepped). Otherwise a fresh
    DDIM over the same noise schedule: DDIM's step is stateless, whereas e.g. DPM-Solver's keeps a history that a
    second call would corrupt. A scheduler whose latents are not variance preserving (Euler-type, init sigma > 1)
    is refused.
    """
    if sampler.family.objective == "flow":
        if getattr(scheduler, "sigmas", None) is None:
            raise ValueError(f"reward guidance of a flow-matching pipeline needs a scheduler with sigmas; "
                             f"got {type(scheduler).__name__}")
        return scheduler
    ddim = sampler.new_scheduler(num_steps)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if (float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0 or alphas is None
            or not torch.allclose(alphas.float().cpu(), ddim.alphas_cumprod.float().cpu())):
        raise ValueError(f"reward guidance needs a variance-preserving scheduler (DDIM, DDPM, DPM-Solver, ...), not "
                         f"{type(scheduler).__name__}; use pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler"
                         ".config)")
    return ddim


def noise_level(sampler, schedule, t, j: int) -> float:
    """The noise standard deviation of the latents at step `j`: sigma_j (flow) or sqrt(1 - alpha_bar_t)."""
    if sampler.family.objective == "flow":
        return float(schedule.sigmas[j])
    return float((1 - schedule.alphas_cumprod[int(t)]).sqrt())


def _per_image(prompts: list[str], batch: int) -> list[str]:
    """The prompt of each latent: pipelines repeat each prompt `num_images_per_prompt` times in a row."""
    if batch % len(prompts):
        raise ValueError(f"the pipeline generates {batch} images but RewardGuidance has {len(prompts)} prompts; "
                         "pass the call's prompts")
    return [p for p in prompts for _ in range(batch // len(prompts))]


def _check_call(pipeline, family: str, callback_kwargs: dict, latents: torch.Tensor) -> None:
    """Pipeline settings the engine's denoiser call does not reproduce are refused, not silently ignored."""
    if getattr(pipeline, "guidance_rescale", 0.0) > 0:
        raise ValueError("reward guidance does not support guidance_rescale > 0")
    if family == "sdxl":
        h, w = (side * pipeline.vae_scale_factor for side in latents.shape[-2:])
        expected = torch.tensor([h, w, 0, 0, h, w], dtype=callback_kwargs["add_time_ids"].dtype)
        if not (callback_kwargs["add_time_ids"].cpu() == expected).all():
            raise ValueError("reward guidance of SDXL conditions on the generated size; leave original_size, "
                             "crops_coords_top_left and target_size at their defaults")
