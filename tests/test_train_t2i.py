"""train_t2i.py end to end on tiny components: output contract, exact resume, stock loading, errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import train_t2i
from zr_align.diffusion.config import load_train_config as load_config
from zr_align.runs.folders import MARKER, list_checkpoints, resolve_resume

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_debug.yaml")
METRIC_KEYS = {"step", "loss", "reward_mean", "reward_std", "grad_norm", "skipped", "lr", "seconds", "cpu_seconds",
               "peak_mem_mb"}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A shared `.tiny` folder so the random components are built once for the module."""
    return tmp_path_factory.mktemp("cache")


def run(out: Path, cache: Path, *overrides, resume=None) -> int:
    tiny = out / ".tiny"
    if not tiny.exists():
        out.mkdir(parents=True, exist_ok=True)
        tiny.symlink_to(cache, target_is_directory=True)
    argv = ["--config", TINY, f"output_dir={out}", *overrides] + (["--resume", resume] if resume else [])
    return train_t2i.main(argv)


def test_tiny_debug_writes_the_output_contract(tmp_path, tiny_cache):
    out = tmp_path / "run"
    assert run(out, tiny_cache) == 0
    lora = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("unet.") for k in lora)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_2", "step_4"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(set(r) == METRIC_KEYS and not r["skipped"] and r["grad_norm"] > 0 for r in records)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == "draft_k" and resolved["sampling"]["k"] == 1 and resolved["lora"]["alpha"] == 8
    grid = Image.open(out / "validation" / "step_4.png")
    assert grid.size == (128, 64)  # two validation prompts at 64 px


def test_cosine_lr_schedule_decays_to_its_floor_and_is_logged(tmp_path, tiny_cache):
    constant, cosine = tmp_path / "constant", tmp_path / "cosine"
    assert run(constant, tiny_cache, "optim.lr=1e-3") == 0
    assert run(cosine, tiny_cache, "optim.lr=1e-3", "optim.lr_schedule=cosine", "optim.min_lr_ratio=0.1",
               "max_steps=5", "optim.warmup_steps=1") == 0

    def lrs(out):
        return [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert lrs(constant) == pytest.approx([1e-3] * 4)
    # after one warm-up step: 1e-3 * (0.1 + 0.9 * (1 + cos(pi * p)) / 2) for p = 0, 1/4, 2/4, 3/4
    expected = [1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * i / 4))) for i in range(4)]
    assert lrs(cosine) == pytest.approx([1e-3] + expected)
    assert lrs(cosine)[-1] < 0.3 * lrs(cosine)[0]


def test_resume_latest_continues_exactly(tmp_path, tiny_cache):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(straight, tiny_cache, "max_steps=4") == 0
    assert run(split, tiny_cache, "max_steps=2") == 0  # the run stops ("killed") after step 2
    assert run(split, tiny_cache, "max_steps=4", resume="latest") == 0
    a = load_file(straight / "lora" / "pytorch_lora_weights.safetensors")
    b = load_file(split / "lora" / "pytorch_lora_weights.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_saved_lora_reproduces_the_trained_model_in_a_stock_pipeline(tmp_path, tiny_cache):
    from diffusers import StableDiffusionPipeline

    from zr_align.lora import add_lora

    out = tmp_path / "run"
    assert run(out, tiny_cache, "max_steps=2") == 0
    # The trained model: our LoRA module with the weights of the final accelerate checkpoint.
    trained = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd")
    add_lora(trained.unet, "sd", rank=4, alpha=8)
    state = torch.load(out / "checkpoints" / "step_2" / "custom_checkpoint_0.pkl", weights_only=False)
    named = dict(trained.unet.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            named[name.removeprefix("denoiser.")].copy_(value)
    # A stock pipeline that only knows the diffusers-format file.
    stock = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd")
    stock.load_lora_weights(out / "lora")
    torch.manual_seed(0)
    latents, t = torch.randn(2, 4, 16, 16), torch.tensor(500)
    embeds = torch.randn(2, stock.tokenizer.model_max_length, stock.text_encoder.config.hidden_size)
    with torch.no_grad():
        ours = trained.unet(latents, t, encoder_hidden_states=embeds).sample
        theirs = stock.unet(latents, t, encoder_hidden_states=embeds).sample
        base = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd").unet(latents, t, embeds).sample
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - base).abs().max() > 1e-3  # the LoRA did change the model


@pytest.mark.parametrize("method", ["refl", "draft_lv", "full"])
def test_other_methods_run(tmp_path, tiny_cache, method):
    out = tmp_path / method
    assert run(out, tiny_cache, f"method={method}", "max_steps=1", "sampling.num_steps=4", "optim.kl_weight=0.1") == 0
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["grad_norm"] > 0 and not record["skipped"]


@pytest.mark.parametrize("family", ["sdxl", "sd3", "pixart", "flux"])
def test_other_families_train(tmp_path, tiny_cache, family):
    out = tmp_path / family
    assert run(out, tiny_cache, f"model.family={family}", f"model.path=tiny:{family}", "max_steps=1") == 0
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["grad_norm"] > 0 and not record["skipped"]
    prefix = "unet." if family == "sdxl" else "transformer."
    assert all(k.startswith(prefix) for k in load_file(out / "lora" / "pytorch_lora_weights.safetensors"))


def make_sft_data(folder: Path) -> Path:
    folder.mkdir()
    lines = []
    for i, color in enumerate([(220, 40, 40), (40, 80, 220)]):
        image = Image.new("RGB", (64, 64), (230, 230, 230))
        image.paste(color, (8 + 24 * i, 16, 32 + 24 * i, 40))
        image.save(folder / f"{i}.png")
        lines.append(json.dumps({"prompt": f"a square number {i}", "file_name": f"{i}.png"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    return folder


def test_sft_method_and_sft_mixing(tmp_path, tiny_cache):
    data = make_sft_data(tmp_path / "data")
    out = tmp_path / "sft"
    assert run(out, tiny_cache, "method=sft", f"data.sft_data={data}", "max_steps=2") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["reward_mean"] is None and r["loss"] > 0 and r["grad_norm"] > 0 for r in records)
    mixed = tmp_path / "mixed"
    assert run(mixed, tiny_cache, f"data.sft_data={data}", "optim.sft_weight=0.5", "max_steps=1") == 0


def test_sft_batch_size_sets_the_anchor_batch_apart_from_the_prompts(tmp_path, tiny_cache, monkeypatch):
    from zr_align.diffusion import trainer

    seen, real = [], trainer.denoising_loss
    monkeypatch.setattr(trainer, "denoising_loss", lambda sampler, latents, prompts, generator: (
        seen.append((latents.shape[0], len(prompts))) or real(sampler, latents, prompts, generator)))
    data = make_sft_data(tmp_path / "data")
    assert run(tmp_path / "mixed", tiny_cache, f"data.sft_data={data}", "optim.sft_weight=1", "batch_size=2",
               "optim.sft_batch_size=5", "max_steps=2") == 0
    assert seen == [(5, 5), (5, 5)]  # the anchor draws 5 images per step, not batch_size
    seen.clear()
    assert run(tmp_path / "plain", tiny_cache, "method=sft", f"data.sft_data={data}", "batch_size=3",
               "max_steps=1") == 0
    assert seen == [(3, 3)]  # 0 (the default): the anchor's batch is batch_size


def make_latent_data(folder: Path, shape=(3, 4, 16, 16)) -> Path:
    """A folder as `zr-align generate --save-latents` writes it: samples.jsonl naming rows of latents.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({"latents": torch.randn(shape, generator=torch.Generator().manual_seed(0))},
              str(folder / "latents.safetensors"))
    lines = [json.dumps({"image": f"{i:05d}.png", "prompt": f"a square number {i}", "latent": i})
             for i in range(shape[0])]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_sft_on_stored_latents_skips_the_vae_encoder(tmp_path, tiny_cache, monkeypatch):
    """A folder of latents is trained on as it is; the same run on images does go through the encoder."""
    from zr_align.diffusion import trainer
    from zr_align.diffusion.datasets import LatentPromptDataset, load_sft_data

    latents = make_latent_data(tmp_path / "latents")
    data = load_sft_data(str(latents), 64)
    assert isinstance(data, LatentPromptDataset) and data.holds_latents
    prompts, x0 = data.batch(torch.tensor([2, 0]))
    stored = load_file(latents / "latents.safetensors")["latents"]
    assert prompts == ["a square number 2", "a square number 0"] and torch.equal(x0, stored[[2, 0]])

    encoded = []
    real_encode = trainer.encode_images
    monkeypatch.setattr(trainer, "encode_images", lambda sampler, images: encoded.append(1) or real_encode(sampler,
                                                                                                          images))
    out = tmp_path / "sft_latents"
    assert run(out, tiny_cache, "method=sft", f"data.sft_data={latents}", "max_steps=2") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert encoded == [] and all(r["loss"] > 0 and r["grad_norm"] > 0 for r in records)
    assert run(tmp_path / "sft_images", tiny_cache, "method=sft", f"data.sft_data={make_sft_data(tmp_path / 'img')}",
               "max_steps=1") == 0
    assert encoded == [1]


def test_stored_latents_of_another_shape_are_refused_in_one_line(tmp_path, tiny_cache, capsys):
    latents = make_latent_data(tmp_path / "latents", shape=(2, 4, 8, 8))
    out = tmp_path / "bad"
    assert run(out, tiny_cache, "method=sft", f"data.sft_data={latents}") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "stored latents have shape (4, 8, 8) but model.resolution 64 needs (4, 16, 16)" \
        in errors[0]
    assert not (out / "checkpoints").exists() and not (out / "lora").exists()
    from zr_align.diffusion.datasets import load_sft_data

    (latents / "samples.jsonl").write_text(json.dumps({"prompt": "x", "latent": 5}) + "\n")
    with pytest.raises(ValueError, match="needs a 'prompt' and a 'latent' row in 0..1"):
        load_sft_data(str(latents), 64)


def make_pair_data(folder: Path) -> Path:
    """Preference pairs as `zr-align generate --mode best_of_n --save-pairs` writes them: chosen rows 0..1 (a bright
    square in the latents), rejected rows 2..3 (noise)."""
    from safetensors.torch import save_file

    folder.mkdir()
    chosen = torch.zeros(2, 4, 16, 16)
    chosen[:, :, 4:12, 4:12] = 1.5
    rejected = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(1))
    save_file({"latents": torch.cat([chosen, rejected])}, str(folder / "latents.safetensors"))
    lines = [json.dumps({"prompt": f"a square number {i}", "chosen": i, "rejected": 2 + i}) for i in range(2)]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def denoising_errors(pipe, latents: torch.Tensor, prompt: str) -> torch.Tensor:
    """Per-sample squared error of `pipe`'s denoiser on `latents` at five fixed noise levels with fixed noise."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    embeds = pipe.encode_prompt(prompt, "cpu", 1, False)[0].expand(len(latents), -1, -1)
    errors = []
    for t in (100, 300, 500, 700, 900):
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(t))
        steps = torch.full((len(latents),), t)
        x_t = scheduler.add_noise(latents, noise, steps)
        target = scheduler.get_velocity(latents, noise, steps) \
            if scheduler.config.prediction_type == "v_prediction" else noise
        with torch.no_grad():
            pred = pipe.unet(x_t, steps, encoder_hidden_states=embeds).sample
        errors.append(((pred - target) ** 2).flatten(1).mean(1))
    return torch.stack(errors).mean(0)


def test_dpo_moves_the_model_towards_the_chosen_latents(tmp_path, tiny_cache):
    """Diffusion-DPO: the first loss is log 2 (the LoRA starts as the reference), the gradient reaches the LoRA, and
    after training the tuned model denoises the chosen latents better, relative to the base, than the rejected."""
    from diffusers import StableDiffusionPipeline

    pairs = make_pair_data(tmp_path / "pairs")
    out = tmp_path / "dpo"
    assert run(out, tiny_cache, "method=dpo", f"data.pairs={pairs}", "max_steps=6", "optim.lr=1e-2",
               "optim.dpo_beta=50") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert abs(records[0]["loss"] - math.log(2)) < 1e-5 and records[0]["reward_mean"] is None
    assert all(r["grad_norm"] > 0 for r in records)
    base = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd")
    tuned = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd")
    tuned.load_lora_weights(out / "lora")
    latents = load_file(pairs / "latents.safetensors")["latents"]
    margin = 0.0
    for i in range(2):
        pair, prompt = latents[[i, 2 + i]], f"a square number {i}"
        tuned_err, base_err = denoising_errors(tuned, pair, prompt), denoising_errors(base, pair, prompt)
        margin += float((tuned_err[0] - base_err[0]) - (tuned_err[1] - base_err[1]))
    assert margin < -1e-3, margin  # chosen: error down relative to the base; rejected: up
    mixed = tmp_path / "mixed"  # DRaFT-1 with the DPO loss mixed in
    assert run(mixed, tiny_cache, f"data.pairs={pairs}", "optim.dpo_weight=0.5", "max_steps=1") == 0
    record = json.loads((mixed / "metrics.jsonl").read_text())
    assert run(tmp_path / "pure", tiny_cache, "max_steps=1") == 0
    pure = json.loads((tmp_path / "pure" / "metrics.jsonl").read_text())
    assert record["reward_mean"] == pure["reward_mean"] and record["grad_norm"] > 0
    assert abs(record["loss"] - pure["loss"] - 0.5 * math.log(2)) < 1e-5  # + weight x DPO, log 2 at the start


def test_full_sft_with_text_encoder_writes_a_stock_pipeline(tmp_path, tiny_cache):
    from diffusers import StableDiffusionPipeline

    data = make_sft_data(tmp_path / "data")
    out = tmp_path / "full"
    assert run(out, tiny_cache, "method=sft", f"data.sft_data={data}", "max_steps=2", "model.trainable=full",
               "model.train_text_encoder=true", "optim.lr=1e-3") == 0
    assert not (out / "lora").exists()
    trained = StableDiffusionPipeline.from_pretrained(out / "pipeline")
    base = StableDiffusionPipeline.from_pretrained(out / ".tiny" / "sd")
    for name in ("unet", "text_encoder"):
        a, b = getattr(trained, name).state_dict(), getattr(base, name).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), name
    assert all(torch.equal(a, b) for a, b in zip(trained.vae.state_dict().values(), base.vae.state_dict().values()))


def test_non_finite_reward_skips_the_step_and_keeps_the_weights(tmp_path, tiny_cache, monkeypatch):
    from zr_align.rewards import ZRewardModel

    real_forward = ZRewardModel.forward
    calls = {"n": 0}

    def forward_with_nan_on_step_2(self, images, prompts):
        calls["n"] += 1
        out = real_forward(self, images, prompts)
        if calls["n"] == 2:  # step 2's reward (validation does not call the reward)
            out.reward = out.reward * float("nan")
        return out

    monkeypatch.setattr(ZRewardModel, "forward", forward_with_nan_on_step_2)
    out = tmp_path / "nan"
    assert run(out, tiny_cache, "max_steps=3", "checkpoint_every=1") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [False, True, False]
    after_1 = torch.load(out / "checkpoints" / "step_1" / "custom_checkpoint_0.pkl", weights_only=False)
    after_2 = torch.load(out / "checkpoints" / "step_2" / "custom_checkpoint_0.pkl", weights_only=False)
    assert all(torch.equal(after_1[k], after_2[k]) for k in after_1)
    assert all(torch.isfinite(v).all() for v in after_2.values())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=ppo"], "method must be one of draft_k, refl, draft_lv, full, sft, dpo; got 'ppo'"),
        (["model.family=kandinsky"], "model.family must be one of sd, sdxl, sd3, pixart, flux; got 'kandinsky'"),
        (["reward.kind=jpeg_compressibility"], "reward jpeg_compressibility is not differentiable"),
        (["model.resolution=66"], "image size 66 is not divisible by 4"),
        (["model.path=/nonexistent/sd15"], "model.path '/nonexistent/sd15' is not a diffusers pipeline folder"),
        (["model.family=sdxl"], "model.path holds a StableDiffusionPipeline, but model.family sdxl needs"),
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["optim.lr_schedule=linear"], "optim.lr_schedule must be one of constant, cosine; got 'linear'"),
        (["model.train_text_encoder=true"], "model.train_text_encoder needs model.trainable: full"),
        (["method=dpo"], "method dpo and optim.dpo_weight > 0 need data.pairs (a folder written by `zr-align"),
        (["method=dpo", "data.pairs=/tmp", "model.trainable=full"], "the DPO loss needs model.trainable: lora"),
        (["model.trainable=full", "optim.kl_weight=0.3"], "optim.kl_weight needs model.trainable: lora"),
        (["method=sft", "data.sft_data=tinyworld:train", "data.pairs=/tmp", "optim.dpo_weight=1"],
         "optim.dpo_weight mixes DPO into a reward method; method sft has no reward"),
        (["method=dpo", "data.pairs=/nonexistent"], "data.pairs /nonexistent has no latents.safetensors"),
    ],
)
def test_bad_input_is_one_line(tmp_path, tiny_cache, capsys, overrides, message):
    assert run(tmp_path / "bad", tiny_cache, *overrides) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("train_t2i.py: error: ") and message in errors[0]


def test_interrupted_save_is_never_resumed(tmp_path, tiny_cache, monkeypatch):
    out = tmp_path / "run"
    assert run(out, tiny_cache, "max_steps=2") == 0
    ckpts = out / "checkpoints"
    # Debris of saves that died: a tmp folder, and a step folder without its marker.
    (ckpts / "step_3.tmp").mkdir()
    (ckpts / "step_3.tmp" / "optimizer.bin").write_bytes(b"partial")
    (ckpts / "step_4").mkdir()
    assert resolve_resume("latest", ckpts) == ckpts / "step_2"
    # A save that raises half-way (disk full, kill) leaves no complete checkpoint behind.
    import accelerate

    def broken_save_state(self, output_dir=None, **kwargs):
        Path(output_dir, "optimizer.bin").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", broken_save_state)
    with pytest.raises(OSError):
        run(out, tiny_cache, "max_steps=3", resume="latest")
    assert resolve_resume("latest", ckpts) == ckpts / "step_2"
    assert not (ckpts / "step_3" / MARKER).exists()
    with pytest.raises(ValueError, match="not a complete checkpoint folder"):
        resolve_resume(str(ckpts / "step_4"), ckpts)


def test_every_config_parses():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.method in ("draft_k", "refl", "draft_lv", "full", "sft"), path


def launch(cmd, out: Path, tiny_cache: Path, **env_extra):
    out.mkdir()
    (out / ".tiny").symlink_to(tiny_cache, target_is_directory=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_extra}
    args = [str(ROOT / "train_t2i.py"), "--config", TINY, f"output_dir={out}"]
    result = subprocess.run([sys.executable, "-m", *cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    return out / "checkpoints" / "step_4", result


def test_accelerate_launch_cpu_command_completes(tmp_path, tiny_cache):
    # The documented command. Note: accelerate 1.15 runs `--cpu` jobs as ONE process unless an MPI hostfile
    # is given (`--mpirun_hostfile`); the next test runs two real gloo ranks.
    launch(["accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"], tmp_path / "acc", tiny_cache)


def test_two_gloo_ranks_on_cpu(tmp_path, tiny_cache):
    state, result = launch(["torch.distributed.run", "--nproc_per_node", "2"], tmp_path / "ddp", tiny_cache,
                           ACCELERATE_USE_CPU="1")
    # every rank saved its RNG state into the same checkpoint, as accelerate requires
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    record = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["grad_norm"] > 0
