"""The performance scripts stay runnable on a CPU: benchmarks/gpu_bench.py at its reduced size (--scale tiny --quick)
and benchmarks/peer_alignprop.py's zr_align side and table (the trl side needs .venv-peer: `make bench-peer`)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["tiny", "tiny-sdxl"])
def test_gpu_bench_runs_on_cpu_at_reduced_size(scale):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--scale", scale, "--quick",
                          "--batch", "1"] + (["--switch-ks"] if scale == "tiny" else []),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    records = _json_lines(out.stdout)
    kinds = [r["what"] for r in records]
    assert {"setup", "parts", "reference", "flops", "dtypes", "step"} <= set(kinds)
    if scale == "tiny-sdxl":
        assert kinds.count("switch") == 6
    parts = next(r for r in records if r["what"] == "parts")
    assert parts["overhead"] > 0 and all(v >= 0 for v in parts["tflops_per_s"].values())
    reference = next(r for r in records if r["what"] == "reference")
    assert reference["sampling_ratio"] > 0 and reference["reward_ratio"] > 0
    flops = next(r for r in records if r["what"] == "flops")
    assert flops["tflop_per_step"] > 0
    dtypes = next(r for r in records if r["what"] == "dtypes")
    assert dtypes["unet"]["weights"] == ["torch.float32"] and dtypes["unet_attention"] == ["AttnProcessor2_0"]
    steps = [r for r in records if r["what"] == "step" and r["K"] == 1]
    assert [r["T"] for r in steps] == [2, 4, 6]


def test_peer_table_ratios_are_ours_over_peer_medians():
    peer = _script("peer_alignprop")
    ours = peer.summarise([{"wall": 1.0, "cpu": 2.0, "rss": 500.0}, {"wall": 3.0, "cpu": 1.0, "rss": 520.0},
                           {"wall": 2.0, "cpu": 4.0, "rss": 510.0}])
    assert ours == {"wall": (2.0, 1.0), "cpu": (2.0, 1.0), "rss": (510.0, 500.0)}
    other = {"wall": (4.0, 3.0), "cpu": (2.5, 2.0), "rss": (600.0, 590.0)}
    row = peer.row(20, 1.0, ours, other)
    assert row.split("|")[1].split()[-1] == "0.50" and row.split("|")[3].split()[-1] == "0.85"


@pytest.mark.slow
def test_peer_benchmark_zr_align_side(tmp_path):
    """One step of zr_align's side of the comparison (fine_tune on the TinyWorld config with the shared settings)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_alignprop.py"), "--child", "ours", "2", "1",
                          "--warmup", "0", "--steps", "1"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["wall"] > 0 and result["cpu"] > 0 and result["rss"] > 100


def test_oracle_selection_never_loses_to_the_plain_sample():
    """benchmarks/oracle_pairs.py select: best-of-N ranked by the judge itself can only tie or beat candidate 0
    (the plain sample) in the judge's GSB; ranked by the shipped student it may lose."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "oracle_pairs.py"), "select", "--images", "6",
                          "--n", "3", "--batch-size", "6"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["ranker"]: r for r in _json_lines(out.stdout)}
    assert rows["judge"]["images"] == rows["student"]["images"] == 6
    assert rows["judge"]["gsb"]["bad"] == 0
    assert rows["judge"]["gsb"]["good"] >= rows["student"]["gsb"]["good"] - rows["student"]["gsb"]["bad"]


def test_judge_stability_copies_are_unseeable_and_catch_a_call_on_a_threshold():
    """benchmarks/judge_stability.py: the dithers move no channel by more than one level, the shifts move the object
    by a quarter pixel; a clean render is judged the same on every copy, an object whose centre sits on a third of
    the canvas is not (its position call rests on a fraction of a pixel)."""
    from zr_align.tinyworld.grammar import CANVAS, Scene, parse_prompt
    from zr_align.tinyworld.render import draw, render

    stability = _script("judge_stability")
    prompt = "a large red circle on the left"
    image = render(prompt, seed=0).image
    copies = stability.copies(image, seed=3)
    assert len(copies) == 5 and all(c.dtype == np.uint8 and c.shape == image.shape for c in copies)
    for dither in copies[:3]:
        step = np.abs(dither.astype(int) - image.astype(int))
        assert step.max() == 1 and 0.5 < (step > 0).mean() < 0.8  # two thirds of the values move, by one level
    ink = lambda a: np.abs(a.astype(float) - a[0, 0]).sum(-1)  # noqa: E731  (off the background's colour)
    centroid = lambda a: np.array([(ink(a) * np.arange(CANVAS)).sum() / ink(a).sum(),  # noqa: E731
                                   (ink(a) * np.arange(CANVAS)[:, None]).sum() / ink(a).sum()])
    assert np.allclose(centroid(copies[3]) - centroid(image), [0.25, 0.0], atol=0.02)  # right
    assert np.allclose(centroid(copies[4]) - centroid(image), [0.0, 0.25], atol=0.02)  # down
    calls = stability.calls(image, prompt)
    assert [calls[a] for a in ("size", "color", "shape", "position")] == ["large yes", "red yes", "circle yes",
                                                                          "left yes"]
    assert all(stability.calls(c, prompt) == calls for c in copies)
    on_third = Scene(**parse_prompt(prompt).as_dict(), center=(CANVAS / 3 - 0.1, CANVAS / 2), extent=28.0)
    border = draw(on_third)
    assert stability.calls(border, prompt)["position"] == "left yes"
    assert [stability.calls(c, prompt)["position"] for c in stability.copies(border)][3] == "center no"
