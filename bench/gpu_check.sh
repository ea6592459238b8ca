#!/usr/bin/env bash
# The whole device check (steps 0-4 take about 6 minutes on an H100, step 5 about 2-3 more; the timeouts cap them at
# 9.2 + 5 minutes, so where one device call is limited to 10 minutes run `no-train` and `train` as two calls). The
# interpret-mode parity tests are not run here: CI runs them on CPU.
#   0. the Moshi 7B streaming step in bf16 (models_flax.streaming, XLA attention then the Pallas decode kernel): ms per
#      frame against the memory floor (weight + KV-cache bytes / measured matrix-vector bandwidth), bench/step.py;
#   1. compiled (Triton) kernels at Moshi shapes, bf16: time, TFLOP/s, GB/s and max|d|/rms, mae/rms against an exact
#      float64 host reference, next to the XLA path and jax.nn.dot_product_attention (cuDNN for bf16);
#   2. the same in float32: "pallas" (exact f32 dots) and "pallas-tf32" (TF32, as XLA's GPU default);
#   3. the tile sweep: prefill bf16 (block_q, block_k, warps, stages) and B=8 decode bf16 (block_k, splits, warps);
#   4. Mimi at the real size (bench/mimi.py --device): codes equal to kyutai's (fails below 99.9%), decode vs kyutai,
#      encode + decode of 10 s and the streaming frame, Flax vs kyutai on CUDA (the depthwise transposed conv on GPU);
#   5. the Moshi 7B LoRA train step (rank 128, bf16, remat: the recipe's settings) at the recipe's shape, B=16 x 1250
#      frames, Flax only (bench/train_step.py --flax-only): tokens/s and peak device memory (jax memory_stats) against
#      the recipe's published ~12k tokens/s and 39.6 GB on one H100, and against models_flax/memory.py's plan (about
#      2-3 minutes: build, jit compile, one warm-up step and two timed steps of ~15 s each at the recipe's rate).
#   6. the nightly job's full-size checks at 7B (`nightly`, one call of its own: about 6-9 minutes, unmeasured):
#      bench/measure_full_size.py --preset moshi_7b, the numbers behind the 7B policy rows (kyutai and Flax on the
#      GPU; bf16, and fp32 where it fits), then `.ci/nightly gpu` on parity/test_full_size.py at 7B:
#      records, history, report (the 7B per-layer drift chart: copy html/report.html's chart to docs/) and summary.
# Each step fails (rc=1) when a Pallas output is more than 2x the XLA path's error against the exact reference.
# Usage (repo root): bash bench/gpu_check.sh [all|no-train|train|nightly]   -- output also lands in $OUT (or
#   ./gpu_check_out). all (default): steps 0-5; no-train: steps 0-4; train: step 5 only; nightly: step 6 only. Step 5's CPU twin, which keeps its Python from
#   rotting (the same script and flags at the tiny preset): see bench/README.md, train_step.py.
set -uo pipefail
which="${1:-all}"
case "$which" in
    all | no-train | train | nightly) ;;
    *) echo "usage: bash bench/gpu_check.sh [all|no-train|train|nightly]" >&2; exit 2 ;;
esac
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$out/device.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
    | tee -a "$out/device.txt"
rc=0
if [ "$which" = nightly ]; then
    timeout 330 python3 bench/measure_full_size.py --preset moshi_7b --seeds 0 2>&1 | tee "$out/measure_7b.txt" || rc=1
    NIGHTLY_OUT="$out/nightly" PROFILE=ci FULL_SIZE_PRESET=moshi_7b WORKERS=0 TESTS=parity/test_full_size.py \
        timeout 240 bash .ci/nightly gpu 2>&1 | tee "$out/nightly.txt" || rc=1
    echo "gpu_check rc=$rc"
    exit $rc
fi
if [ "$which" != train ]; then
    timeout 200 python3 bench/step.py --preset moshi_7b --dtype bfloat16 --no-kyutai --impl xla pallas --frames 30 \
        2>&1 | tee "$out/step_7b.txt" || rc=1
    timeout 80 python3 bench/attention.py --moshi --dtype bfloat16 2>&1 | tee "$out/bench_bf16.txt" || rc=1
    timeout 60 python3 bench/attention.py --moshi --dtype float32 --repeats 5 2>&1 | tee "$out/bench_f32.txt" || rc=1
    timeout 90 python3 bench/attention.py --sweep 2>&1 | tee "$out/sweep.txt" || rc=1
    timeout 120 python3 bench/mimi.py --device 2>&1 | tee "$out/mimi.txt" || rc=1
fi
if [ "$which" != no-train ]; then
    timeout 300 python3 bench/train_step.py --preset moshi_7b --flax-only --device --mode lora --rank 128 \
        --param-dtype bfloat16 --remat --batch 16 --frames 1250 --microbatches 1 --steps 2 2>&1 \
        | tee "$out/train_7b.txt" || rc=1
fi
echo "gpu_check rc=$rc"
exit $rc
