#!/usr/bin/env bash
# The whole device check, in one call (about 6 minutes on an H100; the timeouts cap it at 9.5). The interpret-mode parity
# tests are not run here: CI runs them on CPU.
#   0. the Moshi 7B streaming step in bf16 (models_flax.streaming, XLA attention then the Pallas decode kernel): ms per
#      frame against the memory floor (weight + KV-cache bytes / measured matrix-vector bandwidth), bench/step.py;
#   1. compiled (Triton) kernels at Moshi shapes, bf16: time, TFLOP/s, GB/s and max|d|/rms, mae/rms against an exact
#      float64 host reference, next to the XLA path and jax.nn.dot_product_attention (cuDNN for bf16);
#   2. the same in float32: "pallas" (exact f32 dots) and "pallas-tf32" (TF32, as XLA's GPU default);
#   3. the tile sweep: prefill bf16 (block_q, block_k, warps, stages) and B=8 decode bf16 (block_k, splits, warps);
#   4. Mimi at the real size (bench/mimi.py --device): codes equal to kyutai's (fails below 99.9%), decode vs kyutai,
#      encode + decode of 10 s and the streaming frame, Flax vs kyutai on CUDA (the depthwise transposed conv on GPU).
# Each step fails (rc=1) when a Pallas output is more than 2x the XLA path's error against the exact reference.
# Usage (repo root): bash bench/gpu_check.sh   -- output also lands in $OUT (or ./gpu_check_out).
set -uo pipefail
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$out/device.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
    | tee -a "$out/device.txt"
rc=0
timeout 200 python3 bench/step.py --preset moshi_7b --dtype bfloat16 --no-kyutai --impl xla pallas --frames 30 2>&1 \
    | tee "$out/step_7b.txt" || rc=1
timeout 80 python3 bench/attention.py --moshi --dtype bfloat16 2>&1 | tee "$out/bench_bf16.txt" || rc=1
timeout 60 python3 bench/attention.py --moshi --dtype float32 --repeats 5 2>&1 | tee "$out/bench_f32.txt" || rc=1
timeout 90 python3 bench/attention.py --sweep 2>&1 | tee "$out/sweep.txt" || rc=1
timeout 120 python3 bench/mimi.py --device 2>&1 | tee "$out/mimi.txt" || rc=1
echo "gpu_check rc=$rc"
exit $rc
