"""Attention benchmark: the Pallas kernels vs the XLA path vs `jax.nn.dot_product_attention` (cuDNN on GPU).

    python bench/attention.py            # CPU: small shapes, Pallas in interpret mode (a smoke run)
    python bench/attention.py --moshi    # GPU: Moshi shapes (prefill T=3000 32x128; depth 16x64; decode vs 3000 cache)

Each row: median time of `--repeats` runs after one compile-and-warm call, TFLOP/s (causal-window FLOPs actually
needed: 4 * D per visible (query, key) pair per head) and GB/s (q, k, v read once, output written once), plus the max
|diff| / rms against the XLA path. Interpret-mode timings measure the Pallas interpreter, not a kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from models_flax.attention import attention_mask, dot_product_attention
from models_flax.kernels.decode import decode_attention
from models_flax.kernels.flash_attention import flash_attention
from parity.policy import tolerance_for

FAILURES: list[str] = []  # kernel outputs outside parity.policy's ("<dtype>", "pallas_attention") bound


def _time(fn, *args, repeats: int, calls: int = 10) -> float:
    """Median over `repeats` batches of `calls` back-to-back calls (dispatch overlaps the device work, so a
    16 us decode kernel is not timed as host dispatch overhead), in seconds per call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / calls)
    return statistics.median(times)


def hbm_bandwidth(repeats: int) -> float:
    """Measured device memory bandwidth in bytes/s: a 1 GiB array copied (read + written) by XLA."""
    x = jnp.ones((256, 1024, 1024), jnp.float32)
    copy = jax.jit(lambda x: x + 1.0)
    return 2 * x.nbytes / _time(copy, x, repeats=repeats)


def _visible_pairs(q_pos: np.ndarray, k_pos: np.ndarray, context: int | None) -> int:
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask &= delta < context
    return int(mask.sum())


def bench_case(name, *, batch, q_len, kv_len, heads, kv_heads, head_dim, context, dtype, repeats, decode=False):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((batch, q_len, heads, head_dim)), dtype)
    k = jnp.asarray(rng.standard_normal((batch, kv_len, kv_heads, head_dim)), dtype)
    v = jnp.asarray(rng.standard_normal((batch, kv_len, kv_heads, head_dim)), dtype)
    k_pos_np = np.tile(np.arange(kv_len), (batch, 1))
    q_pos_np = k_pos_np[:, -q_len:]
    q_pos, k_pos = jnp.asarray(q_pos_np, jnp.int32), jnp.asarray(k_pos_np, jnp.int32)
    kw = dict(q_positions=q_pos, k_positions=k_pos, context=context)

    pallas = jax.jit(lambda q, k, v: (decode_attention if decode else flash_attention)(q, k, v, **kw))
    xla = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, attention_mask(q_pos, k_pos, context)))

    def cudnn(q, k, v):
        mask = attention_mask(q_pos, k_pos, context)[:, None]
        if kv_heads != heads:
            k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
        impl = "cudnn" if jax.default_backend() == "gpu" and dtype == jnp.bfloat16 else None
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)

    pairs = _visible_pairs(q_pos_np, k_pos_np, context) * heads
    flops = 4.0 * head_dim * pairs
    nbytes = (2 * q.size + k.size + v.size) * q.dtype.itemsize
    reference = np.asarray(xla(q, k, v), np.float64)
    rms = float(np.sqrt(np.mean(reference**2))) or 1.0
    rows = []
    for label, fn in (("pallas", pallas), ("xla", xla), ("jax.nn", jax.jit(cudnn))):
        try:
            out = np.asarray(fn(q, k, v), np.float64)
            seconds = _time(fn, q, k, v, repeats=repeats)
        except Exception as e:  # cuDNN refuses some shapes/dtypes: report, keep going
            rows.append(f"  {label:8s} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        err = float(np.max(np.abs(out - reference))) / rms
        if label == "pallas" and err > tolerance_for(jnp.dtype(dtype).name, "pallas_attention").atol:
            FAILURES.append(f"{name}: pallas max|d|/rms {err:.1e} over the policy bound")
        rows.append(
            f"  {label:8s} {seconds * 1e3:10.3f} ms {flops / seconds / 1e12:8.3f} TFLOP/s "
            f"{nbytes / seconds / 1e9:9.2f} GB/s   max|d|/rms vs xla {err:.1e}"
        )
    print(f"{name}: B={batch} T={q_len} S={kv_len} H={heads} Hkv={kv_heads} D={head_dim} ctx={context} "
          f"{jnp.dtype(dtype).name} ({jax.default_backend()})")  # fmt: skip
    print("\n".join(rows), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moshi", action="store_true", help="Moshi 7B shapes (needs an accelerator)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None)
    args = parser.parse_args()
    if args.moshi:
        dtype = jnp.dtype(args.dtype or "bfloat16")
        repeats = args.repeats or 20
        print(f"measured memory bandwidth (1 GiB x+1 copy): {hbm_bandwidth(repeats) / 1e9:.0f} GB/s", flush=True)
        bench_case("prefill (temporal)", batch=1, q_len=3000, kv_len=3000, heads=32, kv_heads=32, head_dim=128,
                   context=3000, dtype=dtype, repeats=repeats)  # fmt: skip
        bench_case("depth (8 codebooks + text)", batch=64, q_len=9, kv_len=9, heads=16, kv_heads=16, head_dim=64,
                   context=None, dtype=dtype, repeats=repeats)  # fmt: skip
        bench_case("decode vs 3000 cache", batch=1, q_len=1, kv_len=3000, heads=32, kv_heads=32, head_dim=128,
                   context=3000, dtype=dtype, repeats=repeats, decode=True)  # fmt: skip
        bench_case("decode vs 3000 cache, B=8", batch=8, q_len=1, kv_len=3000, heads=32, kv_heads=32, head_dim=128,
                   context=3000, dtype=dtype, repeats=repeats, decode=True)  # fmt: skip
    else:
        dtype = jnp.dtype(args.dtype or "float32")
        repeats = args.repeats or 3
        bench_case("prefill (small)", batch=1, q_len=200, kv_len=200, heads=4, kv_heads=4, head_dim=64, context=100,
                   dtype=dtype, repeats=repeats)  # fmt: skip
        bench_case("depth (small)", batch=4, q_len=9, kv_len=9, heads=4, kv_heads=2, head_dim=64, context=None,
                   dtype=dtype, repeats=repeats)  # fmt: skip
        bench_case("decode (small)", batch=1, q_len=1, kv_len=300, heads=4, kv_heads=4, head_dim=128, context=250,
                   dtype=dtype, repeats=repeats, decode=True)  # fmt: skip
    if FAILURES:
        raise SystemExit("FAILED: " + "; ".join(FAILURES))


if __name__ == "__main__":
    main()
