"""Real-scale cost of a DRaFT-K step on a GPU (docs/ and benchmarks/results/): random-init full-size architectures, nothing downloaded.

    python benchmarks/gpu_bench.py                 # SD1.5-size UNet + Qwen2-VL-2B-size student, 512 px, bf16
    python benchmarks/gpu_bench.py --scale tiny    # the same measurements on the tiny test stack (CPU check)

The stack: an SD1.5-size `UNet2DConditionModel` (860M), the SD VAE, a CLIP ViT-L/14-size text encoder and a
Qwen2-VL-2B-size reward (2.2B; 512 px -> 324 image tokens), all random-init in bf16, a rank-8 LoRA (fp32) on the
UNet, DDIM, CFG 7.5, DRaFT-K with per-step checkpointing, VAE and reward checkpointing. Prompts go through a
word-level stand-in tokenizer (sequence lengths match: CLIP pads to 77).

Printed, one JSON line per measurement:
  step        s/step (median of 5 after 1 warm-up), peak GB (torch.cuda.max_memory_allocated) at T, K, and the
              peak above what is resident between steps (weights, LoRA, optimizer state): activations and workspace
  parts       the bare compute of a step's parts, each timed alone: one no-grad denoiser call (x (T-K)), one grad
              step with its recompute and backward (x K), decode forward + backward, reward forward + backward,
              the optimizer; `overhead` = step time / sum of parts (target <= 1.15)
  ckpt        the step at K=4 with per-step checkpointing on vs off
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["a photo of a red bicycle leaning on a brick wall at sunset",
           "a watercolor painting of a lighthouse on a cliff above a stormy sea"]


def sd15_pipeline(device, dtype):
    """A StableDiffusionPipeline with SD1.5-size components, random init (built directly on `device`)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from zr_align.tiny.diffusion import clip_tokenizer

    tokenizer = clip_tokenizer()
    tokenizer.model_max_length = 77
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, sample_size=512, scaling_factor=0.18215,
        )
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for module in (unet, vae, text):
        module.to(dtype).eval().requires_grad_(False)
    return pipe


def qwen2_vl_2b_reward(device, dtype):
    """A `ZRewardModel` on a Qwen2-VL-2B-size backbone (random init) with Qwen2-VL's real image settings."""
    import transformers

    from zr_align.rewards.families import FAMILIES
    from zr_align.rewards.zreward import ZRewardConfig, ZRewardModel
    from zr_align.rubrics import Rubric
    from zr_align.tiny.qwen import qwen_processor_config, qwen_tokenizer, special_token_ids

    tokenizer = qwen_tokenizer()
    config = transformers.Qwen2VLConfig(
        text_config={
            "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
            "num_attention_heads": 12, "num_key_value_heads": 2, "head_dim": 128,
            "max_position_embeddings": 32768, "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        tie_word_embeddings=True, **special_token_ids(tokenizer),
    )
    with torch.device(device):
        model = transformers.Qwen2VLForConditionalGeneration(config)
    model.to(dtype)
    processor = qwen_processor_config("qwen2_vl", patch=14, min_tokens=4, max_tokens=1280)  # Qwen2-VL-2B's
    reward_config = ZRewardConfig(family="qwen2_vl", rubric=Rubric(template=FAMILIES["qwen2_vl"].template).to_dict())
    return ZRewardModel(model, tokenizer, reward_config, processor).to(device)


def tiny_stack(device, dtype, cache):
    from zr_align.rewards import ZRewardModel
    from zr_align.testing import tiny_reward_model
    from zr_align.tiny.diffusion import tiny_pipeline

    pipe = tiny_pipeline("sd").to(device, dtype)
    reward = ZRewardModel.from_pretrained(tiny_reward_model("qwen2_vl", os.path.join(cache, "reward")))
    return pipe, reward.to(device, dtype)


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


class Bench:
    def __init__(self, pipe, reward, resolution, device, batch, guidance):
        from zr_align.lora import add_lora, lora_parameters

        self.pipe, self.reward, self.device, self.batch = pipe, reward, device, batch
        self.resolution, self.guidance = resolution, guidance
        self.prompts = (PROMPTS * batch)[:batch]
        add_lora(pipe.unet, "sd", rank=8)
        self.optimizer = torch.optim.AdamW(lora_parameters(pipe.unet), lr=1e-5)
        reward.enable_gradient_checkpointing()

    def sampler(self, steps, k, ckpt=True):
        from zr_align.diffusion.sampling import DifferentiableSampler, SamplingConfig

        config = SamplingConfig(num_steps=steps, k=k, guidance_scale=self.guidance, checkpoint_steps=ckpt,
                                checkpoint_vae=True)
        return DifferentiableSampler(self.pipe, "sd", config, self.resolution)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn, repeats=5, warmup=2):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self, sampler, seed=0):
        with self.autocast():
            trajectory = sampler.sample(self.prompts, "draft_k", torch.Generator().manual_seed(seed))
            loss = -self.reward(trajectory.images, self.prompts).reward.float().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def peak_reset(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self):
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")

    def step(self, steps, k, ckpt=True):
        sampler = self.sampler(steps, k, ckpt)
        self.train_step(sampler)  # warm-up (kernels, allocator)
        self.peak_reset()
        resident = torch.cuda.memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")
        seconds = self.timed(lambda: self.train_step(sampler, 1), warmup=0)
        peak = self.peak_gb()
        return {"what": "step", "T": steps, "K": k, "step_ckpt": ckpt, "s_per_step": round(seconds, 3),
                "peak_gb": round(peak, 2), "above_resident_gb": round(peak - resident, 2)}

    def parts(self, steps, k):
        sampler = self.sampler(steps, k)
        cond = sampler.encode(self.prompts)
        scheduler = sampler.new_scheduler(steps)
        t = scheduler.timesteps[-1]
        x = sampler.initial_latents(self.batch, torch.Generator().manual_seed(0))

        def no_grad_call():
            with torch.no_grad(), self.autocast():
                out = sampler.predict(x, t, cond)
                sampler.step(scheduler, out, t, steps - 1, x)

        def grad_call():
            with self.autocast():
                out = sampler.predict(x, t, cond, use_checkpoint=True)
                prev, _ = sampler.step(scheduler, out, t, steps - 1, x)
            prev.float().square().mean().backward()

        def decode():
            latents = x.detach().clone().requires_grad_(True)
            with self.autocast():
                images = sampler.decode(latents)
            images.square().mean().backward()

        with torch.no_grad(), self.autocast():
            images0 = sampler.decode(x)

        def reward():
            images = images0.detach().clone().requires_grad_(True)
            with self.autocast():
                r = self.reward(images, self.prompts).reward.float().mean()
            r.backward()

        def optimizer():
            for p in self.optimizer.param_groups[0]["params"]:
                p.grad = torch.zeros_like(p)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        p = {name: self.timed(fn) for name, fn in
             [("no_grad_call", no_grad_call), ("grad_call", grad_call), ("decode", decode), ("reward", reward),
              ("optimizer", optimizer)]}
        self.optimizer.zero_grad(set_to_none=True)
        bare = (steps - k) * p["no_grad_call"] + k * p["grad_call"] + p["decode"] + p["reward"] + p["optimizer"]
        full = self.step(steps, k)
        return {"what": "parts", "T": steps, "K": k, **{n: round(v, 4) for n, v in p.items()},
                "bare_sum_s": round(bare, 3), "step_s": full["s_per_step"],
                "overhead": round(full["s_per_step"] / bare, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--guidance", type=float, default=7.5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    if args.scale == "full":
        pipe, reward, resolution = sd15_pipeline(device, dtype), qwen2_vl_2b_reward(device, dtype), 512
    else:
        import tempfile

        pipe, reward = tiny_stack(device, dtype, tempfile.mkdtemp())
        resolution = 64
    info = {"what": "setup", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "scale": args.scale, "resolution": resolution,
            "unet_b": round(count(pipe.unet), 3), "vae_b": round(count(pipe.vae), 3),
            "text_b": round(count(pipe.text_encoder), 3), "reward_b": round(count(reward.model), 3),
            "build_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(info), flush=True)
    bench = Bench(pipe, reward, resolution, device, args.batch[0], args.guidance)
    for batch in args.batch:
        bench.batch, bench.prompts = batch, (PROMPTS * batch)[:batch]
        print(json.dumps({"batch": batch, **bench.parts(20, 1)}), flush=True)
        for steps in (20, 50):
            print(json.dumps({"batch": batch, **bench.step(steps, 1)}), flush=True)
        for ckpt in (True, False):
            print(json.dumps({"batch": batch, **bench.step(20, 4, ckpt)}), flush=True)


if __name__ == "__main__":
    main()
