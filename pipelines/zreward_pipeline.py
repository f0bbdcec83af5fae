"""A diffusers custom pipeline: sampling guided by a Z-Reward model, with no training (zr_align, README:
"Reward-guided sampling").

    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("models/tinyworld/sft", custom_pipeline="pipelines/zreward_pipeline.py",
                                             trust_remote_code=True, dtype=torch.float32)
    pipe.load_lora("RUN/lora")  # optional: a train_t2i.py LoRA (a run of every weight: load "RUN/pipeline" instead)
    out = pipe(["a large red circle on the left"], reward="models/tinyworld/student", mode="guidance", scale=0.02)
    out.images[0].save("circle.png")
    out.rewards  # the reward of each returned image

Modes: "guidance" (per-step reward guidance, `zr_align.guidance.GuidanceOptions`), "noise" (ReNO-style initial-noise
optimisation, `NoiseOptions`), "best_of_n" (`BestOfNOptions`), "plain" (the stock pipeline). Their options are
keyword arguments of the call. The folder may hold a StableDiffusionPipeline, StableDiffusionXLPipeline or
StableDiffusion3Pipeline: this class builds that stock pipeline from the loaded components (`self.base`) and runs
`zr_align.guidance` on it, so the stock code does the sampling. diffusers 0.42.1 asks for `trust_remote_code=True`
even for a local file; the TinyWorld folder stores fp16 weights, hence `dtype=torch.float32` on a CPU.
"""

from dataclasses import dataclass

import numpy as np
from diffusers import (
    DiffusionPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import BaseOutput

from zr_align.guidance import generate, load_lora, load_reward, mode_options


@dataclass
class ZRewardPipelineOutput(BaseOutput):
    """`images`: PIL images, a `(B, H, W, 3)` array in [0, 1] or a `(B, 3, H, W)` tensor, as `output_type` asks;
    `rewards`: the reward of each image (None in plain mode without a reward)."""

    images: object
    rewards: list | None


def _stock_pipeline(components: dict, force_zeros_for_empty_prompt: bool):
    """The stock pipeline the loaded components belong to (SD3: a transformer; SDXL: a UNet and two text
    encoders; SD: a UNet and one)."""
    if components.get("transformer") is not None:
        if type(components["transformer"]).__name__ != "SD3Transformer2DModel":
            raise ValueError(f"ZRewardPipeline does not support a {type(components['transformer']).__name__}; "
                             "supported: StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline")
        names = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                 "text_encoder_3", "tokenizer_3")
        return StableDiffusion3Pipeline(**{n: components.get(n) for n in names})
    common = {n: components.get(n) for n in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    if components.get("text_encoder_2") is not None:
        return StableDiffusionXLPipeline(**common, text_encoder_2=components["text_encoder_2"],
                                         tokenizer_2=components["tokenizer_2"],
                                         force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    return StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


class ZRewardPipeline(DiffusionPipeline):
    """Reward-guided sampling on the components of an SD, SDXL or SD3 folder; `base` is the stock pipeline."""

    _optional_components = ["unet", "transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                            "text_encoder_3", "tokenizer_3"]

    def __init__(self, vae, scheduler, unet=None, transformer=None, text_encoder=None, tokenizer=None,
                 text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
                 force_zeros_for_empty_prompt: bool = True):
        super().__init__()
        components = {"vae": vae, "scheduler": scheduler, "unet": unet, "transformer": transformer,
                      "text_encoder": text_encoder, "tokenizer": tokenizer, "text_encoder_2": text_encoder_2,
                      "tokenizer_2": tokenizer_2, "text_encoder_3": text_encoder_3, "tokenizer_3": tokenizer_3}
        self.register_modules(**components)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.base = _stock_pipeline(components, force_zeros_for_empty_prompt)
        self.base.set_progress_bar_config(disable=True)

    def load_lora(self, lora_dir) -> None:
        """Load a LoRA written by `train_t2i.py` (`OUT/lora`); another model's LoRA is a one-line ValueError."""
        load_lora(self.base, lora_dir)

    def __call__(self, prompt, reward=None, mode: str = "guidance", num_inference_steps: int = 20,
                 guidance_scale: float = 1.0, seeds=None, height: int | None = None, output_type: str = "pil",
                 options=None, **option_fields) -> ZRewardPipelineOutput:
        """Generate one image per prompt.

        Args:
            prompt: a prompt or a list of prompts.
            reward: a reward-model folder or a `ZRewardModel` (any reward callable; differentiable for guidance
                and noise).
            mode: "guidance", "noise", "best_of_n" or "plain".
            seeds: image `i` starts from the noise of seed `seeds[i]` (default 0, 1, ...): equal seeds, equal
                starting noise in every mode.
            height: image side (square); default the pipeline's.
            options / option_fields: the mode's options dataclass, or its fields as keyword arguments
                (e.g. `scale=0.5, window=(0.0, 0.5)`; `iterations=8`; `n=4`).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if options is None:
            options = mode_options(mode, **option_fields)
        elif option_fields:
            raise ValueError(f"give the options of mode {mode} either as options= or as keyword arguments, not both")
        if reward is not None:
            reward = load_reward(reward, device=self.base.vae.device)
        result = generate(self.base, prompts, mode, reward, seeds, num_inference_steps, guidance_scale, height,
                          options)
        rewards = result.reward.tolist() if result.reward is not None else None
        images = result.images
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
            images = self.numpy_to_pil(images) if output_type == "pil" else images.astype(np.float32)
        return ZRewardPipelineOutput(images=images, rewards=rewards)
