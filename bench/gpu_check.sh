#!/usr/bin/env bash
# The whole device check for the Pallas attention kernels, in one call (< 8 minutes on an H100):
#   1. the interpret-mode parity tests on the host CPU (what CI runs; kyutai tests need the `moshi` wheel);
#   2. compiled (Triton) kernels at Moshi shapes, bf16 then fp32: time, TFLOP/s, GB/s and max|d|/rms vs the XLA path,
#      next to the XLA path and jax.nn.dot_product_attention (cuDNN for bf16).
# Usage (repo root, venv active): bash bench/gpu_check.sh   -- output also lands in $OUT (or ./gpu_check_out).
set -uo pipefail
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$out/device.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$out/device.txt"
rc=0
JAX_PLATFORMS=cpu timeout 180 python3 -m pytest parity/test_pallas.py -q -n 8 -p no:cacheprovider \
    -k "not kyutai" 2>&1 | tail -5 | tee "$out/interpret_tests.txt" || rc=1
JAX_PLATFORMS=cuda timeout 150 python3 bench/attention.py --moshi --dtype bfloat16 2>&1 | tee "$out/bench_bf16.txt" || rc=1
JAX_PLATFORMS=cuda timeout 120 python3 bench/attention.py --moshi --dtype float32 --repeats 5 2>&1 \
    | tee "$out/bench_f32.txt" || rc=1
echo "gpu_check rc=$rc"
exit $rc
