#!/usr/bin/env bash
# What one GPU session runs (docs/BENCHMARKS.md, "GPU"): benchmarks/gpu_bench.py at SD1.5 + Qwen2-VL-2B size (512 px,
# batch 1 and 2) and at SDXL + Qwen2.5-VL-3B size (1024 px, batch 1), each under a time limit so that both fit
# ~11 minutes of device time; a limit keeps every line already printed (the most wanted measurements come first).
#
#     bash benchmarks/gpu_session.sh OUT_DIR        # needs a CUDA torch with diffusers, transformers, peft, accelerate
#
# Writes OUT_DIR/gpu_info.txt, gpu_bench_sd15.txt and gpu_bench_sdxl.txt (one JSON line per measurement, stderr in
# *.err). Quote the .txt files in benchmarks/results/ and docs/BENCHMARKS.md with the date and machine.
set -u
OUT=${1:-${OUT:-benchmarks/results/gpu_session}}
PY=${PYTHON:-python}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
mkdir -p "$OUT"
$PY -c "import torch, diffusers, transformers, peft, accelerate; assert torch.cuda.is_available(), 'no CUDA device'" \
    || { echo "this needs a CUDA device and torch, diffusers, transformers, peft, accelerate"; exit 2; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__)"; } > "$OUT/gpu_info.txt"
timeout 330 $PY benchmarks/gpu_bench.py --scale full > "$OUT/gpu_bench_sd15.txt" 2> "$OUT/gpu_bench_sd15.err"
echo "sd15: exit $? ($(grep -c '^{' "$OUT/gpu_bench_sd15.txt") lines)"
timeout 330 $PY benchmarks/gpu_bench.py --scale sdxl --repeats 2 --switch-ks 1 > "$OUT/gpu_bench_sdxl.txt" \
    2> "$OUT/gpu_bench_sdxl.err"
echo "sdxl: exit $? ($(grep -c '^{' "$OUT/gpu_bench_sdxl.txt") lines)"
