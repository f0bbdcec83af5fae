"""train_t2i.py on several processes (issue 15 item 4), on CPU ranks with gloo: DDP and FSDP2 through accelerate's
`prepare`, the random streams of ranks and micro-batches, exact resume after a kill, the lock on every rank, and the
shipped accelerate configs as accelerate's own launcher reads them.

The equality that must hold: micro-batch m of step s on rank r draws from stream (seed, s, r * A + m), so 2 ranks x
A=1 see the samples of 1 rank x A=2, and DDP's average of the two ranks' gradients equals the accumulated gradient of
the two micro-batches (halving is exact in floating point): the LoRA files must be equal, bit for bit.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_t2i
from accelerate_cpu import launch_env
from zr_align.runs.folders import MARKER, RunLock
from zr_align.runs.processes import micro_batch_generator, shape_generator

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_debug.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def with_cache(out: Path, cache: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / ".tiny").exists():
        (out / ".tiny").symlink_to(cache, target_is_directory=True)
    return out


def deepspeed_path() -> str:
    """The folder `make test` installs DeepSpeed into, beside the venv (it is no dependency of the package)."""
    folder = Path(os.environ.get("ZR_ALIGN_DEEPSPEED_PATH", ROOT / ".venv" / "deepspeed"))
    if not (folder / "deepspeed" / "__init__.py").is_file():
        pytest.skip(f"DeepSpeed is not installed in {folder}; `make test` installs it there")
    return str(folder)


def torchrun(out: Path, cache: Path, *args, kind: str = "ddp", wait: bool = True):
    """2 gloo ranks of train_t2i.py (DDP), or of tests/accelerate_cpu.py under configs/accelerate/<kind>.yaml."""
    with_cache(out, cache)
    env = {**ENV, "ACCELERATE_USE_CPU": "1"}
    script = ROOT / "train_t2i.py"
    if kind != "ddp":
        env.update(launch_env(ROOT / "configs" / "accelerate" / f"{kind}.yaml"))
        script = ROOT / "tests" / "accelerate_cpu.py"
    if kind.startswith("zero"):  # after launch_env, which returns a whole environment
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [deepspeed_path(), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(script), "--config", TINY, f"output_dir={out}", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lora(out: Path) -> dict:
    return load_file(out / "lora" / "pytorch_lora_weights.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def numbers(out: Path) -> list[tuple]:
    return [(m["step"], m["loss"], m["reward_mean"], m["grad_norm"]) for m in metrics(out)]


@pytest.fixture(scope="module")
def ddp_run(tiny_cache, tmp_path_factory):
    """2 ranks x batch 2 x A=1, 4 steps, checkpoints at 2 and 4."""
    return torchrun(tmp_path_factory.mktemp("ddp") / "run", tiny_cache)


# ------------------------------------------------------------------ random streams
def test_every_rank_and_micro_batch_has_its_own_stream_and_layouts_agree():
    def draw(rank, micro, micro_batches):
        return torch.randn(4, generator=micro_batch_generator(0, 3, rank, micro, micro_batches))

    streams = [draw(r, m, 2) for r in range(2) for m in range(2)]
    assert all(not torch.equal(a, b) for i, a in enumerate(streams) for b in streams[i + 1:])
    assert torch.equal(draw(1, 0, 1), draw(0, 1, 2))  # rank 1 of 2 x A=1 is micro-batch 1 of 1 x A=2
    assert torch.equal(draw(0, 0, 1), torch.randn(4, generator=torch.Generator().manual_seed(3 * 7919)))
    same_on_every_rank = [torch.rand(3, generator=shape_generator(0, 3, 0)) for _ in range(2)]
    assert torch.equal(*same_on_every_rank)
    with pytest.raises(ValueError, match="random streams"):
        micro_batch_generator(0, 0, 7918, 1, 2)


def test_process_kinds_and_fsdp_version_1_refused():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from zr_align.runs.processes import process_kind

    def state(kind, processes=2, fsdp2=True):
        return SimpleNamespace(distributed_type=kind, num_processes=processes, is_fsdp2=fsdp2)

    assert process_kind(state(DistributedType.NO, 1)) == "single"
    assert process_kind(state(DistributedType.MULTI_CPU)) == "ddp"
    assert process_kind(state(DistributedType.MULTI_GPU)) == "ddp"
    assert process_kind(state(DistributedType.FSDP)) == "fsdp"
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        process_kind(state(DistributedType.FSDP, fsdp2=False))


# ------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_two_micro_batches(ddp_run, tiny_cache, tmp_path):
    single = with_cache(tmp_path / "single", tiny_cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (torch.distributed.run and ENV set one thread): same float reductions
    try:
        assert train_t2i.main(["--config", TINY, f"output_dir={single}", "gradient_accumulation_steps=2"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert max_diff(lora(ddp_run), lora(single)) == 0.0  # measured: bit for bit
    assert numbers(ddp_run) == numbers(single)  # loss (averaged over ranks), rewards of both ranks, gradient norm
    # Rank 1 drew its own samples: the mean reward of step 1 is not rank 0's alone (the 1-rank, A=1 run).
    alone = with_cache(tmp_path / "alone", tiny_cache)
    assert train_t2i.main(["--config", TINY, f"output_dir={alone}", "max_steps=1"]) == 0
    assert metrics(alone)[0]["reward_mean"] != metrics(ddp_run)[0]["reward_mean"]
    assert (ddp_run / "checkpoints" / "step_4" / "random_states_1.pkl").is_file()
    assert not (ddp_run / "checkpoints" / "step_4" / "model.safetensors").exists()  # LoRA only, as on one process


@pytest.mark.slow
def test_dpo_on_two_ranks_equals_one_rank_with_two_micro_batches(tiny_cache, tmp_path):
    """method dpo under DDP: the reference forward (the LoRA switched off, no graph) goes through the bare module on
    every rank, and the pair draws follow the same streams as every other method."""
    from safetensors.torch import save_file

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    save_file({"latents": torch.randn((6, 4, 16, 16), generator=torch.Generator().manual_seed(0))},
              str(pairs / "latents.safetensors"))
    (pairs / "pairs.jsonl").write_text("".join(json.dumps({"prompt": f"shape {i}", "chosen": i, "rejected": 3 + i})
                                               + "\n" for i in range(3)))
    args = ["method=dpo", f"data.pairs={pairs}", "max_steps=2", "optim.lr=1e-2"]
    ddp = torchrun(tmp_path / "ddp", tiny_cache, *args)
    single = with_cache(tmp_path / "single", tiny_cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_t2i.main(["--config", TINY, f"output_dir={single}", "gradient_accumulation_steps=2", *args]) == 0
    finally:
        torch.set_num_threads(threads)
    assert max_diff(lora(ddp), lora(single)) == 0.0
    assert numbers(ddp) == numbers(single) and all(m["grad_norm"] > 0 for m in metrics(ddp))


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_train_exactly(ddp_run, tiny_cache, tmp_path):
    out = tmp_path / "killed"
    run = torchrun(out, tiny_cache, "checkpoint_every=1", wait=False)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoints" / "step_1" / MARKER).is_file():
            assert run.poll() is None and time.time() < deadline, run.stderr.read()[-2000:] if run.stderr else ""
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the launcher and both ranks
        run.wait()
    assert not (out / "lora").exists()  # killed mid-run
    torchrun(out, tiny_cache, "checkpoint_every=1", "--resume", "latest")
    assert max_diff(lora(out), lora(ddp_run)) == 0.0
    assert numbers(out) == numbers(ddp_run)


# ------------------------------------------------------------------ FSDP2
@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_resumes_exactly(ddp_run, tiny_cache, tmp_path):
    whole = torchrun(tmp_path / "fsdp", tiny_cache, kind="fsdp")
    # Sharded: reduce-scatter and AdamW on shards round differently; measured 4.7e-8 (LoRA values up to 0.18).
    assert max_diff(lora(whole), lora(ddp_run)) < 1e-6
    assert (whole / "checkpoints" / "step_2" / "pytorch_model_fsdp_0").is_dir()  # accelerate's sharded save
    resumed = torchrun(tmp_path / "resumed", tiny_cache, "max_steps=2", kind="fsdp")
    torchrun(resumed, tiny_cache, "--resume", "latest", kind="fsdp")
    assert max_diff(lora(resumed), lora(whole)) == 0.0
    assert numbers(resumed) == numbers(whole)


def test_fsdp_refuses_merge_lora_in_one_line(tiny_cache, tmp_path):
    """Folding the LoRA into the base weights needs them whole; FSDP shards them: refused before the first step."""
    out = with_cache(tmp_path / "merge", tiny_cache)
    proc = torchrun(out, tiny_cache, "sampling.merge_lora=true", kind="fsdp", wait=False)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("train_t2i.py: error: ")]
    assert errors and all("sampling.merge_lora=true folds the LoRA into whole base weights, but fsdp shards them"
                          in line for line in errors), err[-2000:]
    assert "ValueError" not in err  # (the launcher prints its own traceback when ranks exit non-zero)
    assert not (out / "checkpoints").exists() and not (out / "lora").exists()


# ------------------------------------------------------------------ DeepSpeed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_trains_like_ddp_and_resumes_exactly(stage, ddp_run, tiny_cache, tmp_path):
    # DeepSpeed's CPU accelerator communicates over gloo. Under ZeRO-3 only the prepared denoiser is partitioned;
    # the text encoder and the reward are loaded whole (`runs.processes.frozen_models_whole`).
    whole = torchrun(tmp_path / "whole", tiny_cache, kind=f"zero{stage}")
    saved = sorted(p.name for p in (whole / "checkpoints" / "step_2" / "pytorch_model").iterdir())  # DeepSpeed's own
    # one optimiser-state partition per rank; under ZeRO-3 the denoiser's weights are partitioned per rank too
    models = ["mp_rank_00_model_states.pt"] if stage == 2 else [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
                                                                 for r in range(2)]
    assert saved == sorted(models + [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]), saved
    assert max_diff(lora(whole), lora(ddp_run)) < 1e-6  # measured: 0.0 with ZeRO-2, 1.7e-7 with ZeRO-3
    resumed = torchrun(tmp_path / "resumed", tiny_cache, "max_steps=2", kind=f"zero{stage}")
    torchrun(resumed, tiny_cache, "--resume", "latest", kind=f"zero{stage}")
    assert max_diff(lora(resumed), lora(whole)) == 0.0
    assert numbers(resumed) == numbers(whole)


# ------------------------------------------------------------------ the lock, on every rank
def spawn_ranks(out: Path, *args, world: int = 2) -> list[subprocess.CompletedProcess]:
    """`world` ranks of train_t2i.py with the environment torchrun gives them, so each rank's exit code is seen."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train_t2i.py"), "--config", TINY, f"output_dir={out}",
                               *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "ACCELERATE_USE_CPU": "1", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank),
                                   "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world)})
             for rank in range(world)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.relative_to(folder).parts[0] != ".tiny" and path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_a_locked_folder_is_refused_on_every_rank(tiny_cache, tmp_path):
    out = with_cache(tmp_path / "run", tiny_cache)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    before = folder_hash(out)
    with RunLock(out):
        ranks = spawn_ranks(out, "--resume", "latest")
    expected = ["is in use by another run", "another process refused the run"]
    for rank, (result, message) in enumerate(zip(ranks, expected)):
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert result.returncode == 2, (rank, result.stderr[-2000:])
        assert len(errors) == 1 and errors[0].startswith("train_t2i.py: error: ") and message in errors[0], errors
        assert "Traceback" not in result.stderr
    assert folder_hash(out) == before
    assert sorted(p.name for p in out.iterdir()) == [".tiny", "metrics.jsonl"]  # no lock file, nothing else


# ------------------------------------------------------------------ the shipped accelerate configs
@pytest.mark.parametrize("name, expected", [
    ("ddp.yaml", {}),
    ("fsdp.yaml", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
                   "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}),
    ("multi_node_fsdp.yaml", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}),
    ("zero2.yaml", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
    ("zero3.yaml", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}),
])
def test_shipped_accelerate_configs_read_by_accelerate(name, expected):
    env = launch_env(ROOT / "configs" / "accelerate" / name)
    assert {k: env.get(k) for k in expected} == expected
    assert env.get("ACCELERATE_MIXED_PRECISION") == "no"  # precision comes from the training config
    assert "ACCELERATE_USE_FSDP" not in env or env["ACCELERATE_USE_FSDP"] == expected.get("ACCELERATE_USE_FSDP")
