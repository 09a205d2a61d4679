#!/usr/bin/env bash
# GPU checks in one go (run from the repository root on a machine with jax[cuda] and torch):
# device info, the core numerics tests on the GPU backend, the step benchmark (JAX on the GPU,
# torch CUDA eager, NumPy on the host), the kernel comparison and the memory benchmark.
# Logs and JSON go to $OUT (default ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import jax, jaxlib, torch; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'torch', torch.__version__, jax.devices())"
} 2>&1 | tee "$OUT/gpu_info.txt"
timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -q -p no:cacheprovider tests/test_features.py tests/test_depth.py 2>&1 | tail -n 25 | tee "$OUT/gpu_tests.txt"
timeout 200 $PY benchmarks/bench_step.py --device cuda --sizes 256,2,32,512 1024,2,64,2048 --json "$OUT/gpu_step.json" 2>&1 | tee "$OUT/gpu_step.txt"
timeout 90 $PY benchmarks/bench_kernels.py --sizes 256,2,32,512 1024,2,64,2048 4096,2,64,4096 2>&1 | tee "$OUT/gpu_kernels.txt"
timeout 90 $PY benchmarks/bench_memory.py --json "$OUT/gpu_memory.json" 2>&1 | tee "$OUT/gpu_memory.txt"
