#!/usr/bin/env bash
# The device check a TPU owner runs, in one call; a lent GPU runs the same script for the GPU numbers. The platform is
# jax's default backend ($PLATFORM overrides): on a TPU the attention calls take the Mosaic kernels, on a GPU the Triton
# ones (jax.lax.platform_dependent; nothing to configure).
#   0. the device and the package versions;
#   1. the parity suite on this platform (`pytest --platform`, $WORKERS xdist workers, default 4, on a TPU 0: one
#      process holds the chips; $SUITE picks the tests, default the whole suite; it needs
#      torch (CPU is enough), transformers and kyutai `moshi` beside jax: `pip install --no-deps moshi==0.2.13`);
#   2. the kernels at Moshi's shapes, bf16: ms, TFLOP/s, GB/s and the error against an exact float64 reference, beside
#      the XLA path and jax.nn.dot_product_attention (bench/attention.py --moshi; a Pallas error over 2x XLA's fails);
#   3. the 7B streaming step in bf16, XLA then Pallas attention, in ms per frame and as a ratio to its HBM floor
#      (weights + KV cache read once per frame at the measured bandwidth; bench/step.py). $STEP_FSDP=N (default 1)
#      splits the weights and caches over N chips instead (the Pallas kernels per chip on the caches' kv heads): 7B in
#      bf16 (15.4 GB) does not leave room for its caches on one 16 GB TPU v5e chip, so a v5e-8 runs STEP_FSDP=8.
# Usage (repo root): bash bench/tpu_check.sh   -- output also lands in $OUT (or ./device_check_out). Exit status 1 when
# any step fails. Timeouts: $SUITE_TIMEOUT (default 900 s), 120 s for the kernels, 300 s for the 7B step.
set -uo pipefail
out="${OUT:-device_check_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
platform="${PLATFORM:-$(python3 -c 'import jax; print(jax.default_backend())' 2>/dev/null)}"
[ "$platform" = gpu ] && platform=cuda  # jax 0.11 expands "gpu" to cuda and rocm, and fails without ROCm
export JAX_PLATFORMS="$platform,cpu"  # the default backend first; the interpreters' callbacks need a CPU device
{
    echo "platform: $platform"
    python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
    python3 -c "import jax; print('default backend', jax.default_backend())"
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    python3 -c "import moshi; print('moshi', moshi.__version__)" || echo "moshi: not installed (kyutai tests will fail)"
    if [ "$platform" = tpu ]; then
        python3 -c "from jax.experimental.pallas import tpu as t; print(t.get_tpu_info())"
    else
        nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null
    fi
} 2>&1 | tee "$out/device.txt"
# A TPU is held by one process at a time: one pytest worker there; a GPU is shared (no preallocation).
workers="${WORKERS:-$([ "$platform" = tpu ] && echo 0 || echo 4)}"
rc=0
# shellcheck disable=SC2086  # $SUITE is a list of test paths
timeout "${SUITE_TIMEOUT:-900}" python3 -m pytest ${SUITE:-parity} --platform "$platform" -n "$workers" -q \
    -p no:randomly -p no:cacheprovider --durations=15 2>&1 \
    | tee "$out/suite.txt" || rc=1
timeout 120 python3 bench/attention.py --moshi --dtype bfloat16 2>&1 | tee "$out/kernels_bf16.txt" || rc=1
timeout 300 python3 bench/step.py --preset moshi_7b --dtype bfloat16 --no-kyutai --impl xla pallas --frames 30 \
    --fsdp "${STEP_FSDP:-1}" 2>&1 | tee "$out/step_7b.txt" || rc=1
echo "device check on $platform: rc=$rc"
exit $rc
