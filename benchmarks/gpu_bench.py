"""Real-scale cost of a DRaFT-K step on a GPU (docs/BENCHMARKS.md, benchmarks/results/): random-init full-size
architectures, nothing downloaded.

    python benchmarks/gpu_bench.py                 # SD1.5-size UNet + Qwen2-VL-2B-size student, 512 px, bf16
    python benchmarks/gpu_bench.py --scale sdxl    # SDXL-size UNet + Qwen2.5-VL-3B-size student, 1024 px, batch 1
    python benchmarks/gpu_bench.py --scale tiny --quick        # every measurement on the tiny stack (CPU check)
    bash benchmarks/gpu_session.sh OUT_DIR         # what a GPU session runs: both scales, each under a time limit

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
              each part's TFLOP/s (FLOPs counted by torch.utils.flop_counter, recompute and backward included)
  reference   what a user would call fast: our no-grad trajectory (T steps + decode) against the stock pipeline's
              own inference `pipe(...)` (same UNet with its LoRA, T, CFG, resolution; bf16 weights, SDPA), and the
              reward forward against the VLM's bare forward on the same inputs (no preprocessing or prompt assembly)
  flops       a whole DRaFT-K step's FLOPs and achieved TFLOP/s, next to --peak-tflops (H200 bf16 dense: 989)
  dtypes      weight and output dtypes of each model in a step, and the attention kernels (SDPA or not)
  switch      one checkpointing switch flipped from the default (all on but the UNet's blocks), K=1 and K=4;
              "oom" where it did not fit
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


def sdxl_stack(device, dtype):
    """SDXL-size pipeline (UNet 2.6B, two CLIP text encoders) and a Qwen2.5-VL-3B-size reward, random init on
    `device`, from configs/architectures (the shapes of the released checkpoints)."""
    from zr_align.architectures import meta_pipeline, meta_reward

    pipe = meta_pipeline("sdxl", dtype, device=device)
    reward = meta_reward("qwen2_5_vl_3b", dtype, device=device).to(device)
    return pipe, reward


def tiny_stack(device, dtype, cache, family="sd"):
    from zr_align.rewards import ZRewardModel
    from zr_align.testing import tiny_reward_model
    from zr_align.tiny.diffusion import tiny_pipeline

    pipe = tiny_pipeline(family).to(device, dtype)
    reward = ZRewardModel.from_pretrained(tiny_reward_model("qwen2_vl", os.path.join(cache, "reward")))
    return pipe, reward.to(device, dtype)


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


class Bench:
    def __init__(self, pipe, reward, resolution, device, batch, guidance, family="sd", repeats=5):
        from zr_align.lora import add_lora, lora_parameters

        self.pipe, self.reward, self.device, self.batch = pipe, reward, device, batch
        self.resolution, self.guidance, self.family, self.repeats = resolution, guidance, family, repeats
        self.prompts = (PROMPTS * batch)[:batch]
        self.denoiser = pipe.unet
        add_lora(self.denoiser, family, rank=8)
        self.optimizer = torch.optim.AdamW(lora_parameters(self.denoiser), lr=1e-5)
        reward.enable_gradient_checkpointing()

    def sampler(self, steps, k, ckpt=True, vae=True, denoiser=False, reward=True):
        """A sampler with these checkpointing switches (set both ways: a sampler only ever turns them on)."""
        from zr_align.diffusion.sampling import DifferentiableSampler, SamplingConfig

        config = SamplingConfig(num_steps=steps, k=k, guidance_scale=self.guidance, checkpoint_steps=ckpt,
                                checkpoint_vae=vae, checkpoint_denoiser=denoiser)
        sampler = DifferentiableSampler(self.pipe, self.family, config, self.resolution)
        for module, on in ((self.pipe.vae, vae), (self.denoiser, denoiser)):
            (module.enable_gradient_checkpointing if on else module.disable_gradient_checkpointing)()
        (self.reward.enable_gradient_checkpointing if reward else self.reward.disable_gradient_checkpointing)()
        return sampler

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn, repeats=None, warmup=2):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats or self.repeats):
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

    def step(self, steps, k, ckpt=True, **switches):
        sampler = self.sampler(steps, k, ckpt, **switches)
        try:
            self.train_step(sampler)  # warm-up (kernels, allocator)
            self.peak_reset()
            resident = torch.cuda.memory_allocated() / 2**30 if self.device.type == "cuda" else float("nan")
            seconds = self.timed(lambda: self.train_step(sampler, 1), warmup=0)
        except torch.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            self.peak_reset()
            return {"what": "step", "T": steps, "K": k, "step_ckpt": ckpt, **switches, "oom": True}
        peak = self.peak_gb()
        return {"what": "step", "T": steps, "K": k, "step_ckpt": ckpt, **switches, "s_per_step": round(seconds, 3),
                "peak_gb": round(peak, 2), "above_resident_gb": round(peak - resident, 2)}

    def part_fns(self, sampler, steps):
        """Each part of a step alone: a no-grad denoiser call, a grad step with recompute and backward, decode
        forward + backward, reward forward + backward, the optimizer."""
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
            images.float().square().mean().backward()

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

        return {"no_grad_call": no_grad_call, "grad_call": grad_call, "decode": decode, "reward": reward,
                "optimizer": optimizer}

    def parts(self, steps, k):
        sampler = self.sampler(steps, k)
        fns = self.part_fns(sampler, steps)
        p = {name: self.timed(fn) for name, fn in fns.items()}
        flops = {name: count_flops(fn) for name, fn in fns.items()}
        self.optimizer.zero_grad(set_to_none=True)
        counts = {"no_grad_call": steps - k, "grad_call": k}
        bare = sum(counts.get(name, 1) * seconds for name, seconds in p.items())
        full = self.step(steps, k)
        return {"what": "parts", "T": steps, "K": k, **{n: round(v, 4) for n, v in p.items()},
                "tflops_per_s": {n: round(flops[n] / p[n] / 1e12, 3) for n in p},
                "bare_sum_s": round(bare, 3), "step_s": full["s_per_step"],
                "overhead": round(full["s_per_step"] / bare, 3)}

    def reference(self, steps):
        """Ours against what a user would call fast (see the module docstring); ratio = ours / reference."""
        sampler = self.sampler(steps, 1)

        def ours_sampling():
            with torch.no_grad(), self.autocast():
                sampler.sample(self.prompts, "draft_k", torch.Generator().manual_seed(0))

        def stock_sampling():  # the pipeline's own inference: bf16 weights on a GPU, no autocast
            self.pipe(self.prompts, num_inference_steps=steps, guidance_scale=self.guidance, height=self.resolution,
                      width=self.resolution, output_type="pt")

        with torch.no_grad(), self.autocast():
            images = sampler.decode(sampler.initial_latents(self.batch, torch.Generator().manual_seed(0)))
        backbone, captured = self.reward.model.model, {}
        handle = backbone.register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
        with torch.no_grad(), self.autocast():
            self.reward(images, self.prompts)
        handle.remove()

        def ours_reward():
            with torch.no_grad(), self.autocast():
                self.reward(images, self.prompts)

        def bare_reward():
            with torch.no_grad():
                backbone(**captured)

        t = {name: self.timed(fn, warmup=1) for name, fn in (("ours_sampling", ours_sampling),
                                                              ("stock_sampling", stock_sampling),
                                                              ("ours_reward", ours_reward),
                                                              ("bare_reward", bare_reward))}
        return {"what": "reference", "T": steps, "guidance": self.guidance, **{n: round(v, 4) for n, v in t.items()},
                "sampling_ratio": round(t["ours_sampling"] / t["stock_sampling"], 3),
                "reward_ratio": round(t["ours_reward"] / t["bare_reward"], 3)}

    def flops(self, steps, k, peak_tflops):
        sampler = self.sampler(steps, k)
        self.train_step(sampler)
        total = count_flops(lambda: self.train_step(sampler, 1))
        seconds = self.timed(lambda: self.train_step(sampler, 1), warmup=0)
        achieved = total / seconds / 1e12
        return {"what": "flops", "T": steps, "K": k, "tflop_per_step": round(total / 1e12, 3),
                "s_per_step": round(seconds, 3), "tflops_per_s": round(achieved, 2), "peak_tflops": peak_tflops,
                "fraction_of_peak": round(achieved / peak_tflops, 4)}

    def dtypes(self, steps):
        """Weight and output dtypes of each model as a training step calls it; the attention kernels."""
        seen = {}
        modules = {"unet": self.denoiser, "vae_decoder": self.pipe.vae.decoder, "text_encoder": self.pipe.text_encoder,
                   "reward_vlm": self.reward.model.model}

        def hook(name):
            def record(module, args, output):
                out = output[0] if isinstance(output, (tuple, list)) else output
                out = getattr(out, "sample", getattr(out, "last_hidden_state", out))
                base = sorted({str(p.dtype) for n, p in module.named_parameters() if "lora_" not in n})
                seen.setdefault(name, {"weights": base, "output": str(getattr(out, "dtype", type(out).__name__))})
            return record

        handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
        self.train_step(self.sampler(steps, 1))
        for handle in handles:
            handle.remove()
        processors = sorted({type(p).__name__ for p in self.denoiser.attn_processors.values()})
        return {"what": "dtypes", **seen, "unet_attention": processors,
                "reward_attention": str(self.reward.model.config._attn_implementation)}


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def build(args, device, dtype):
    """(pipe, reward, resolution, family) of --scale."""
    if args.scale == "full":
        return sd15_pipeline(device, dtype), qwen2_vl_2b_reward(device, dtype), 512, "sd"
    if args.scale == "sdxl":
        return (*sdxl_stack(device, dtype), 1024, "sdxl")
    import tempfile

    family = "sdxl" if args.scale == "tiny-sdxl" else "sd"
    return (*tiny_stack(device, dtype, tempfile.mkdtemp(), family), 64, family)


def measure(bench, args, emit):
    """Every measurement of one batch size, the most wanted first (a time limit keeps what was printed);
    --quick: short trajectories (a CPU check of the code paths)."""
    T, long_ts = (4, (2, 6)) if args.quick else (20, (8, 50))
    for steps in sorted((T, *long_ts)):
        emit(bench.step(steps, 1))
    emit(bench.parts(T, 1))
    emit(bench.reference(T))
    emit(bench.flops(T, 1, args.peak_tflops))
    if bench.batch == args.batch[0]:
        emit(bench.dtypes(T))
    for ckpt in (True, False):
        emit(bench.step(T, min(4, T), ckpt))
    if bench.batch == args.batch[0]:
        for k in args.switch_ks:
            for switch in ({"vae": False}, {"reward": False}, {"denoiser": True}):
                emit({**bench.step(T, min(k, T), **switch), "what": "switch"})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("full", "sdxl", "tiny", "tiny-sdxl"), default="full")
    parser.add_argument("--batch", type=int, nargs="*", default=None, help="default: 1 2 (sdxl: 1)")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H200: 989)")
    parser.add_argument("--switch-ks", type=int, nargs="*", default=[1, 4],
                        help="K values at which each checkpointing switch is flipped (none: skip)")
    parser.add_argument("--quick", action="store_true", help="short trajectories, 1 repeat: checks the code paths")
    args = parser.parse_args(argv)
    args.batch = args.batch or ([1] if args.scale == "sdxl" else [1, 2])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    pipe, reward, resolution, family = build(args, device, dtype)
    info = {"what": "setup", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "scale": args.scale, "resolution": resolution,
            "unet_b": round(count(pipe.unet), 3), "vae_b": round(count(pipe.vae), 3),
            "text_b": round(count(pipe.text_encoder), 3), "reward_b": round(count(reward.model), 3),
            "build_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(info), flush=True)
    bench = Bench(pipe, reward, resolution, device, args.batch[0], args.guidance, family,
                  1 if args.quick else args.repeats)
    for batch in args.batch:
        bench.batch, bench.prompts = batch, (PROMPTS * batch)[:batch]
        measure(bench, args, lambda record, b=batch: print(json.dumps({"batch": b, **record}), flush=True))


if __name__ == "__main__":
    main()
