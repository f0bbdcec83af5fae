# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow venv clean tinyworld tinyworld-table bench-peer

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU build from local disk; a bare requirement would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

# DeepSpeed, for the ZeRO tests only: installed beside the venv, not in it, so the main job trains without it (it
# is no dependency). Its sdist builds against the installed torch (no build isolation); no ops are compiled.
DS_DIR := $(VENV)/deepspeed
DS_STAMP := $(DS_DIR)/.installed
$(DS_STAMP): $(STAMP)
	$(PY) -m pip install -q --target $(DS_DIR) --upgrade --no-deps --no-build-isolation deepspeed==0.19.8 \
		hjson==3.1.0 py-cpuinfo==9.0.0 msgpack==1.2.4 ninja==1.13.2 einops==0.8.2
	@touch $(DS_STAMP)

# The main job on the embedded TinyWorld default: reward fine-tuning against an SFT control and reward guidance,
# judged on held-out prompts; one progress bar per phase. OMP_WAIT_POLICY=PASSIVE: on a machine shared with other
# jobs, spinning OpenMP threads made steps 7-15x slower (PITFALLS); it costs ~15% on an idle machine.
# --soup-seeds: each trained arm is trained at three seeds and is the average of their weights (a model soup; chosen
# on the validation prompts: +46.5% against +44.5 / +37.0 / +34.5% for the seeds alone,
# docs/tinyworld_demo_validation.md "Longer, deeper, and seeds averaged"); about three times the training time.
# --sft-first 1350: each reward run starts from 1350 steps of plain SFT on renders (every weight), which places
# objects better than the reward's last-steps gradient can (chosen on 1,000 validation images: the two-stage soup
# beats the reward-only soup head to head by +5.4% [+2.2, +9.3]; "Choosing among the soups on 1,000 validation
# images" in docs/tinyworld_demo_validation.md).
# Every run trains at one thread, up to one per core side by side (`--workers`), so the figures are the same on a
# machine with any number of cores (at two threads a run is another draw: session 13's demo gave +33.0% where the
# same seeds at one thread give +40.5%).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m zr_align.cli tinyworld demo --out outputs/demo --soup-seeds 0,1,2 --sft-first 1350

# Everything but what needs a GPU (slow CPU tests included).
test: $(STAMP) $(DS_STAMP)
	ZR_ALIGN_DEEPSPEED_PATH=$(abspath $(DS_DIR)) HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# Only the tests marked slow.
test-slow: $(STAMP) $(DS_STAMP)
	ZR_ALIGN_DEEPSPEED_PATH=$(abspath $(DS_DIR)) HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m "slow" $(PYTEST_ARGS)

# Rebuild every shipped TinyWorld weight from scratch (fixed seeds; one thread, as the shipped weights were
# built: float reductions differ with the thread count): the SFT model (about 31 min), then only the reward runs
# the shipped weights come from (teacher SFT -> GDSO -> RISD student, about an hour with data and evaluation; the
# table goes to outputs/tinyworld_rewards/, docs/ is left as it is), then the SFT model's decoder refinement
# (about 13 min). The reward data's generator samples come from the SFT model before its decoder is refined: the
# shipped reward models were built that way, and reward models built from the refined model's samples fine-tuned
# worse on the validation prompts (docs/tinyworld_rewards.md, "Rebuilt from the refined baseline").
# The two other students of the demo's reward ensemble (models/tinyworld/ensemble/; docs/tinyworld_demo_validation.md,
# "A reward ensemble") are built the same way, each with its own teacher, about 45 min each at one thread: one
# with object casts in the artefact mix (before the refinement), one from the refined model's samples (after it).
# The shipped teacher comes last (about 57 min at one thread beside another job, teacher SFT and GDSO only): the
# spatial rotary layout, 30% of its data the refined model's samples (half of them drawn from a prompt one attribute
# away) and 30% objects drawn at any size and place, half of its drawn images through the SFT model's decoder and
# object casts in 20% of them; its GDSO teacher ships (docs/tinyworld_rewards.md, "Object casts in the teacher's
# data", session 25); the demo's students keep the teachers of their own builds.
tinyworld: $(STAMP)
	TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m zr_align.cli tinyworld build --decoder-steps 0 --out models/tinyworld/sft --work-dir outputs/tinyworld_build
	TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m zr_align.cli tinyworld build-rewards --no-baselines --sft-model models/tinyworld/sft --student-only --out models/tinyworld
	TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m zr_align.cli tinyworld build-rewards --no-baselines --sft-model models/tinyworld/sft --artefact-rate object_cast=0.2 --student-only --work-dir outputs/tinyworld_rewards_cast --out models/tinyworld/ensemble/cast --docs ''
	TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m zr_align.cli tinyworld refine-decoder --model models/tinyworld/sft --steps 1500
	TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m zr_align.cli tinyworld build-rewards --no-baselines --sft-model models/tinyworld/sft --student-only --work-dir outputs/tinyworld_rewards_sharp --out models/tinyworld/ensemble/sharp --docs ''
	TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m zr_align.cli tinyworld build-rewards --no-baselines --sft-model models/tinyworld/sft --teacher-only --sft-fraction 0.3 --free-layout 0.3 --teacher-init tinyworld:teacher --decoder-roundtrip 0.5 --sft-swap 0.5 --artefact-rate object_cast=0.2 --teacher-choice gdso --work-dir outputs/tinyworld_rewards_reader --out models/tinyworld --docs ''
	$(PY) benchmarks/tinyworld_sft.py --model models/tinyworld/sft --grid docs/tinyworld_sft_samples.png > docs/tinyworld_sft.json

# After `make tinyworld`: the baselines too (GRPO, RewardDance, direct student SFT, 2000-step RISD and OPD; about
# 30 min more, the shipped runs and the data are reused) and the whole table in docs/tinyworld_rewards.md (the
# main build's; the shipped teacher is left as it is).
tinyworld-table: $(STAMP)
	TQDM_DISABLE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m zr_align.cli tinyworld build-rewards --reuse --sft-model models/tinyworld/sft --student-only --out models/tinyworld

# The peer: trl 0.23.1's AlignPropTrainer timed against zr_align on the same TinyWorld work, alternated
# (benchmarks/peer_alignprop.py). Its own venv: torch 2.13.0 (CPU) first, then trl with every version our .venv
# has pinned, and zr_align without the [test] extra; both sides run from it, so the installed packages are equal.
PEER := .venv-peer
PEER_STAMP := $(PEER)/.installed

$(PEER_STAMP): $(STAMP)
	@test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER) || python3 -m venv $(PEER)
	$(PEER)/bin/python -m pip install -q torch==2.13.0
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > $(PEER)/ours.txt
	$(PEER)/bin/python -m pip install -q -c $(PEER)/ours.txt trl==0.23.1 -e .
	@touch $(PEER_STAMP)

bench-peer: $(PEER_STAMP)
	env OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(PEER)/bin/python benchmarks/peer_alignprop.py \
		--out benchmarks/results/peer_alignprop.txt

clean:
	rm -rf $(VENV) $(PEER) build *.egg-info
