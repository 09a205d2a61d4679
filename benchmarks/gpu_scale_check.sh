#!/usr/bin/env bash
# Scaling and memory-at-scale checks on one or more GPUs (run from the repository root with
# jax[cuda] and torch installed), sized for ~10 minutes on one H100/H200:
# the scaling sweeps on the GPU with the goal size d = 64, N = M = 8192, L = 64 (share of the
# fp32 peak, torch eager and torch.compile side by side), weak/strong scaling over the visible
# GPUs, and one step at N L M = 1e10 and at d = 64 with the device allocator's peak.
# Logs and JSON go to $OUT (default ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import jax, torch; print('jax', jax.__version__, 'torch', torch.__version__, jax.devices())"
} 2>&1 | tee "$OUT/gpu_info.txt"
timeout "${SCALING_TIMEOUT:-420}" $PY benchmarks/bench_scaling.py --device cuda --quick --goal \
  --json "$OUT/gpu_scaling.json" --figure "$OUT/scaling_gpu.png" 2>&1 | tee "$OUT/gpu_scaling.txt"
timeout 90 $PY benchmarks/bench_memory.py --size 8192,2,64,16384 --skip-naive \
  --json "$OUT/gpu_memory_1e10.json" 2>&1 | tee "$OUT/gpu_memory_1e10.txt"
timeout 90 $PY benchmarks/bench_memory.py --size 8192,64,64,8192 --skip-naive \
  --json "$OUT/gpu_memory_d64.json" 2>&1 | tee "$OUT/gpu_memory_d64.txt"
