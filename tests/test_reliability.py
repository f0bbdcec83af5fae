"""Reliability of train_t2i.py (issue 13): nothing overwritten, nothing silently wrong, bad input in one line.

Each test asserts the exact class of outcome (exit code 2 and one stderr line naming the problem, or a one-line
`ValueError`) and, for a refused run, that the output folder is byte for byte what it was."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import train_t2i
from zr_align.diffusion.components import warn_long_prompts
from zr_align.diffusion.config import load_train_config as load_config
from zr_align.runs.folders import RunLock, list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_debug.yaml")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def run(out: Path, cache: Path, *args) -> int:
    """train_t2i.main on the tiny config; `args` are options and overrides in any order."""
    tiny = out / ".tiny"
    if not tiny.exists():
        out.mkdir(parents=True, exist_ok=True)
        tiny.symlink_to(cache, target_is_directory=True)
    return train_t2i.main(["--config", TINY, f"output_dir={out}", *args])


def folder_hash(folder: Path) -> str:
    """sha256 over every file's relative path and bytes (the .tiny cache aside)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if relative.parts[0] == ".tiny" or path.is_dir():
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("train_t2i.py: error: ") and "Traceback" not in err, err
    return lines[0]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tiny_cache, tmp_path_factory):
    """A finished 4-step run (checkpoints at 2 and 4), copied by the tests that try to misuse it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run(out, tiny_cache) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


# ------------------------------------------------------------------ silent wrong results
def test_used_folder_is_refused_without_resume_or_overwrite(finished, tmp_path, tiny_cache, capsys):
    out = copy_run(finished, tmp_path / "run")
    before = folder_hash(out)
    assert run(out, tiny_cache, "seed=1") == 2
    assert "already holds" in one_error(capsys) and folder_hash(out) == before


def test_overwrite_clears_the_old_run(finished, tmp_path, tiny_cache):
    out = copy_run(finished, tmp_path / "run")
    assert run(out, tiny_cache, "--overwrite", "max_steps=1", "checkpoint_every=0", "seed=1") == 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_1"]  # no step_2/step_4 of the old run
    assert [m["step"] for m in metrics(out)] == [1]
    assert not (out / "validation" / "step_4.png").exists()


def test_overwrite_refuses_files_it_did_not_write(tmp_path, tiny_cache, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(out, tiny_cache, "--overwrite") == 2
    assert "would delete notes.txt" in one_error(capsys) and (out / "notes.txt").read_text() == "mine"


def test_rejected_resume_writes_nothing(finished, tmp_path, tiny_cache, capsys):
    out = copy_run(finished, tmp_path / "run")
    before = folder_hash(out)
    assert run(out, tiny_cache, "--resume", str(tmp_path / "bad"), "optim.lr=0.5") == 2
    assert "not a complete checkpoint folder" in one_error(capsys) and folder_hash(out) == before


def test_resume_latest_without_a_checkpoint_says_so(tmp_path, tiny_cache, capsys):
    out = tmp_path / "fresh"
    assert run(out, tiny_cache, "--resume", "latest", "max_steps=1") == 0
    assert "no complete checkpoint" in capsys.readouterr().out
    assert [m["step"] for m in metrics(out)] == [1]


def test_resume_latest_beside_a_finished_run_without_checkpoints_is_refused(finished, tmp_path, tiny_cache, capsys):
    import shutil

    out = copy_run(finished, tmp_path / "run")
    shutil.rmtree(out / "checkpoints")
    before = folder_hash(out)
    assert run(out, tiny_cache, "--resume", "latest") == 2
    assert "holds a finished run (lora/)" in one_error(capsys) and folder_hash(out) == before


@pytest.mark.parametrize("override, message", [
    ("lora.alpha=4", "lora.alpha 8 -> 4"),
    ("lora.rank=8", "lora.rank 4 -> 8"),
    ("lora.targets=[to_q]", "lora.targets None -> ['to_q']"),
])
def test_resume_with_another_model_is_refused(finished, tmp_path, tiny_cache, capsys, override, message):
    out = copy_run(finished, tmp_path / "run")
    before = folder_hash(out)
    assert run(out, tiny_cache, "--resume", "latest", override, "max_steps=6") == 2
    line = one_error(capsys)
    assert "different model" in line and message in line and folder_hash(out) == before


def test_resume_beyond_max_steps_is_refused(finished, tmp_path, tiny_cache, capsys):
    out = copy_run(finished, tmp_path / "run")
    before = folder_hash(out)
    assert run(out, tiny_cache, "--resume", "latest", "max_steps=3") == 2
    assert "beyond max_steps 3" in one_error(capsys) and folder_hash(out) == before


@pytest.mark.parametrize("override, message", [
    ("checkpoint_every=-1", "checkpoint_every must be >= 0; got -1"),
    ("validate_every=-2", "validate_every must be >= 0; got -2"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps must be > 0; got 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
    ("optim.betas=[0.9, 1.5]", "optim.betas must be two numbers in [0, 1)"),
    ("lora.alpha=-8", "lora.alpha must be > 0"),
    ("optim.lr=abc", "optim.lr must be a number; got 'abc'"),
    ("max_steps=ten", "max_steps must be an integer; got 'ten'"),
    ("max_steps=2.5", "max_steps must be an integer; got 2.5"),
    ("optim.betas=0.9", "optim.betas must be a list of 2 numbers; got 0.9"),
    ("lora.targets=to_q", "lora.targets must be a list of strings or null; got 'to_q'"),
    ("sampling.checkpoint_steps=maybe", "sampling.checkpoint_steps must be true or false; got 'maybe'"),
])
def test_config_types_and_ranges_are_checked_when_parsed(tmp_path, capsys, override, message):
    out = tmp_path / "never"
    assert train_t2i.main(["--config", TINY, f"output_dir={out}", override]) == 2
    assert message in one_error(capsys) and not out.exists()  # refused before anything was created


def test_skipped_steps_log_null_and_stop_after_a_limit(tmp_path, tiny_cache, capsys, monkeypatch):
    from zr_align.rewards import ZRewardModel

    real_forward = ZRewardModel.forward

    def nan_reward(self, images, prompts):
        out = real_forward(self, images, prompts)
        out.reward = out.reward * float("nan")
        return out

    monkeypatch.setattr(ZRewardModel, "forward", nan_reward)
    out = tmp_path / "nan"
    assert run(out, tiny_cache, "optim.max_skipped_steps=2", "max_steps=4") == 2
    assert "stopped at step 2: 2 steps in a row were skipped" in one_error(capsys)
    records = metrics(out)
    assert [(r["step"], r["loss"], r["grad_norm"], r["skipped"]) for r in records] == [(1, None, None, True),
                                                                                     (2, None, None, True)]
    assert not (out / "lora").exists()


def test_nan_decoded_pixels_skip_the_step(tmp_path, tiny_cache, monkeypatch):
    from zr_align.diffusion.sampling import DifferentiableSampler

    real_decode = DifferentiableSampler.decode
    calls = {"n": 0}

    def decode_nan_on_step_2(self, latents):
        calls["n"] += 1
        images = real_decode(self, latents)
        return images * float("nan") if calls["n"] == 2 else images

    monkeypatch.setattr(DifferentiableSampler, "decode", decode_nan_on_step_2)
    out = tmp_path / "nan_pixels"
    assert run(out, tiny_cache, "max_steps=3", "checkpoint_every=1") == 0
    assert [(r["skipped"], r["loss"] is None) for r in metrics(out)] == [(False, False), (True, True), (False, False)]
    after_1 = torch.load(out / "checkpoints" / "step_1" / "custom_checkpoint_0.pkl", weights_only=False)
    after_2 = torch.load(out / "checkpoints" / "step_2" / "custom_checkpoint_0.pkl", weights_only=False)
    assert all(torch.equal(after_1[k], after_2[k]) for k in after_1)


def test_long_prompts_are_announced_once(tiny_cache, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "warm"
    assert run(out, tiny_cache, "max_steps=1", "checkpoint_every=0") == 0  # builds the tiny pipeline in the cache
    capsys.readouterr()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_cache / "sd")
    warn_long_prompts(pipe, ["a red circle", "a red circle " * 40, "a blue square " * 40])
    err = [line for line in capsys.readouterr().err.splitlines() if "longer" in line]
    assert len(err) == 1 and "2 of 3 prompts are longer than the text encoder's 16 tokens" in err[0]


# ------------------------------------------------------------------ tracebacks instead of one-line errors
def test_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert train_t2i.main(["--config", TINY, f"output_dir={target}"]) == 2
    assert "is a file, not a folder" in one_error(capsys) and target.read_text() == "x"


def test_options_and_overrides_in_any_order():
    args = train_t2i.parse_args(["--config", TINY, "--resume", "latest", "max_steps=6", "--overwrite", "seed=2"])
    assert args.config == TINY and args.resume == "latest" and args.overwrite
    assert args.overrides == ["max_steps=6", "seed=2"]


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="max_steps must be an integer"):
        train_t2i.main(["--debug", "--config", TINY, f"output_dir={tmp_path / 'x'}", "max_steps=ten"])


def test_checkpoint_of_another_shape_is_a_one_line_error():
    from zr_align.runs.folders import TrainableState

    state = TrainableState({"denoiser": torch.nn.Linear(4, 8)})
    with pytest.raises(ValueError, match=r"the checkpoint does not fit this model: 0 trained weights missing, 1 of "
                                         r"another shape \(e.g. denoiser.bias: \(4,\) vs \(8,\)\)"):
        state.load_state_dict({"denoiser.weight": torch.zeros(8, 4), "denoiser.bias": torch.zeros(4)})


# ------------------------------------------------------------------ other
def test_stale_temporaries_are_removed_on_resume(finished, tmp_path, tiny_cache):
    out = copy_run(finished, tmp_path / "run")
    stale_lora = out / "lora" / ".pytorch_lora_weights.safetensors.tmp-99999"
    stale_lora.write_bytes(b"partial")
    (out / "checkpoints" / "step_5.tmp").mkdir()
    assert run(out, tiny_cache, "--resume", "latest", "max_steps=5", "checkpoint_every=0") == 0
    assert not stale_lora.exists() and not (out / "checkpoints" / "step_5.tmp").exists()
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4, 5]


def test_saved_lora_is_byte_reproducible(finished, tmp_path, tiny_cache):
    out = tmp_path / "again"
    assert run(out, tiny_cache) == 0
    a = (finished / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    b = (out / "lora" / "pytorch_lora_weights.safetensors").read_bytes()
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    with safe_open(out / "lora" / "pytorch_lora_weights.safetensors", framework="pt") as file:
        meta = json.loads(file.metadata()["lora_adapter_metadata"])
    targets = meta["unet.target_modules"]
    assert targets == sorted(targets)  # peft's set, written in a fixed order whatever the hash seed


def test_a_second_run_on_a_locked_folder_is_refused(finished, tmp_path, tiny_cache, capsys):
    out = copy_run(finished, tmp_path / "run")
    before = folder_hash(out)
    with RunLock(out):
        assert run(out, tiny_cache, "--resume", "latest", "max_steps=6") == 2
        assert "is in use by another run" in one_error(capsys)
    assert folder_hash(out) == before  # and the lock file is gone with the lock


def test_the_lock_dies_with_a_killed_process(tmp_path):
    out = tmp_path / "run"
    code = f"from zr_align.runs.folders import RunLock; RunLock({str(out)!r}).acquire(); print('locked', flush=True); " \
           "import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"in use by another run \\(process {holder.pid}\\)"):
            RunLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(out).acquire().release()  # SIGKILL released it


def test_every_config_still_parses():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)
