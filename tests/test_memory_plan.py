"""`zr-align plan` against measured peaks: the H200 benchmark (benchmarks/results/gpu_bench_h200.txt) and a CPU run
of the tiny config; the counting of saved tensors on a case whose answer is known."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zr_align.architectures import setup_models
from zr_align.diffusion.config import load_train_config as load_config
from zr_align.memory_plan import count_saved, gib, parse_size, plan_step

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def test_parse_size():
    assert parse_size("24GB") == 24e9
    assert parse_size("80GiB") == 80 * 2**30
    assert parse_size("16000 MB") == 16e9
    with pytest.raises(ValueError, match="--gpu-memory must look like 24GB"):
        parse_size("lots")


def test_count_saved_sees_what_autograd_keeps():
    weight = torch.nn.Parameter(torch.ones(64, 32))
    x = torch.zeros(8, 32, requires_grad=True)
    with count_saved([weight]) as saved:
        y = torch.nn.functional.linear(x, weight)  # keeps x (for the weight's gradient); the weight is excluded
        y.sin()  # keeps y
    assert saved.total == (8 * 32 + 8 * 64) * 4
    assert saved.largest == 8 * 64 * 4
    with torch.device("meta"):
        q = torch.zeros(2, 4, 1024, 16, requires_grad=True)
    with count_saved() as attention:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    # as a memory-efficient kernel: q (= k = v), the output and an fp32 logsumexp, never the 1024 x 1024 scores
    assert attention.total == 2 * (2 * 4 * 1024 * 16 * 4) + 2 * 4 * 1024 * 4


def test_plan_matches_the_h200_benchmark():
    """benchmarks/gpu_bench.py: SD1.5-size UNet + Qwen2-VL-2B-size reward, 512 px, CFG 7.5, bf16, DRaFT-1, rank 8,
    step / VAE / reward checkpointing: 8.89 GiB at batch 1 and 11.55 GiB at batch 2 (torch.cuda.max_memory_allocated)."""
    config = load_config(ROOT / "configs" / "sd15.yaml", ["lora.rank=8", "sampling.num_steps=20",
                                                          "sampling.checkpoint_vae=true"])
    setup = setup_models(config, reward_architecture="qwen2_vl_2b")
    for batch, measured in ((1, 8.89), (2, 11.55)):
        planned = gib(plan_step(config, *setup, batch_size=batch).peak)
        assert abs(planned - measured) / measured <= 0.25, (batch, planned, measured)


def _run(args):
    # Through a shell that forks: Linux carries a process's peak RSS (ru_maxrss) across exec, so a child exec'd
    # straight from this test process would report pytest's own ~0.8 GiB as its peak.
    out = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, *args], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_plan_matches_measured_cpu_peak(tmp_path):
    _run(["train_t2i.py", "--config", "configs/tiny_debug.yaml", f"output_dir={tmp_path / 'run'}", "max_steps=2",
          "checkpoint_every=0"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    measured = max(r["peak_mem_mb"] for r in records) / 1024  # ru_maxrss: MiB -> GiB
    report = json.loads(_run(["-m", "zr_align.cli", "plan", "--config", "configs/tiny_debug.yaml"]))
    assert report["device"].startswith("cpu")
    assert abs(report["peak_gib"] - measured) / measured <= 0.25, (report["peak_gib"], measured)


def test_plan_suggests_what_fits(capsys):
    from zr_align.cli import main

    assert main(["plan", "--config", str(ROOT / "configs" / "sdxl.yaml"), "--gpu-memory", "24GB"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weights_gib"]["unet"] == pytest.approx(2.567e9 * 2 / 2**30, abs=0.05)  # bf16 UNet less LoRA
    assert report["image_tokens_per_image"] == 1369  # Qwen2.5-VL at 1024 px
    # checkpointing never costs memory, and without the reward's checkpointing the 3B reward alone needs far more
    by_switch = report["activations_by_switch_gib"]
    for part in ("denoiser", "vae", "reward"):
        assert by_switch[f"{part}_ckpt"] <= by_switch[part]
    suggestion = report["suggestion"]
    assert suggestion["fits"] and suggestion["batch_size"] >= 1
    config = load_config(ROOT / "configs" / "sdxl.yaml")
    setup = setup_models(config)
    switches = suggestion["switches"]
    fitted = plan_step(config, *setup, batch_size=suggestion["batch_size"], switches=switches).peak
    assert fitted <= parse_size("24GB")
    assert plan_step(config, *setup, batch_size=suggestion["batch_size"] + 1, switches=switches).peak > 24e9 or \
        suggestion["batch_size"] == 16
