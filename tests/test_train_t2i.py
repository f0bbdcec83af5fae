"""train_t2i.py end to end on tiny components: output contract, exact resume, stock loading, errors."""

import json
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
METRIC_KEYS = {"step", "loss", "reward_mean", "reward_std", "grad_norm", "skipped", "seconds", "cpu_seconds",
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
        (["method=dpo"], "method must be one of draft_k, refl, draft_lv, full, sft; got 'dpo'"),
        (["model.family=kandinsky"], "model.family must be one of sd, sdxl, sd3, pixart, flux; got 'kandinsky'"),
        (["reward.kind=jpeg_compressibility"], "reward jpeg_compressibility is not differentiable"),
        (["model.resolution=66"], "image size 66 is not divisible by 4"),
        (["model.path=/nonexistent/sd15"], "model.path '/nonexistent/sd15' is not a diffusers pipeline folder"),
        (["model.family=sdxl"], "model.path holds a StableDiffusionPipeline, but model.family sdxl needs"),
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["model.train_text_encoder=true"], "model.train_text_encoder needs model.trainable: full"),
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
