"""Attention benchmark: the Pallas kernels vs the XLA path vs `jax.nn.dot_product_attention` (cuDNN on GPU).

    python bench/attention.py            # CPU: small shapes, Pallas in interpret mode (a smoke run)
    python bench/attention.py --moshi    # GPU: Moshi shapes (prefill T=3000 32x128; depth 16x64; decode vs 3000 cache)
    python bench/attention.py --sweep    # GPU: tile sweep of the prefill (bf16) and B=8 decode (bf16) kernels;
                                         # CPU: a tiny interpret-mode sweep that only exercises the code path

Each row: median time (batches of back-to-back calls after one compile-and-warm call), TFLOP/s (causal-window FLOPs
actually needed: 4 * D per visible (query, key) pair per head), GB/s (q, k, v read once, output written once), and the
error of that implementation against an EXACT reference: float64 attention computed on the host (numpy, one head at a
time) from the same bf16/float32-valued inputs, as max|d| / rms and mae / rms (rms of the exact output). Errors are not
taken against the XLA path: with causal masks the first query rows see one or two keys, so their outputs are ~30x the
global rms and one bf16 ulp there is 0.2 rms; every implementation, XLA included, sits at that floor (printed as
"bf16(exact)": the exact output rounded to the output dtype).

Pass rule (FAILURES, exit status): every Pallas variant's max|d| and mae against the exact reference are each at most
2x the XLA path's own max|d| and mae in the same run, or at most 64 float32 ulps (64 * 2^-23 rms = 7.6e-6 rms), where
exact float32 implementations differ by summation order alone (measured on CPU, f32 decode over 250 keys: max|d|/rms
pallas 1.6e-6, xla 0.8e-6, jax.nn 1.2e-6); that floor is far below any bf16 or TF32 error. In float32 the kernel runs
twice: "pallas" (precision None = HIGHEST, exact f32 dots) and "pallas-tf32" (Precision.DEFAULT: TF32 on GPU, what
XLA's GPU default does for f32, so the XLA row is TF32 too).
Interpret-mode timings measure the Pallas interpreter, not a kernel.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from models_flax.attention import attention_mask, dot_product_attention
from models_flax.kernels.decode import DecodeBlockSizes, decode_attention
from models_flax.kernels.flash_attention import BlockSizes, flash_attention

FAILURES: list[str] = []  # a Pallas output more than 2x the XLA path's error against the exact reference
ERROR_RATIO = 2.0
NOISE_FLOOR = 64 * float(jnp.finfo(jnp.float32).eps)  # in units of the exact output's rms


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


def _visible(q_pos: np.ndarray, k_pos: np.ndarray, context: int | None) -> np.ndarray:
    delta = q_pos[:, :, None] - k_pos[:, None, :]
    mask = (k_pos[:, None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask &= delta < context
    return mask


def exact_attention(q, k, v, q_pos: np.ndarray, k_pos: np.ndarray, context: int | None) -> np.ndarray:
    """float64 attention on the host, one (batch, head) at a time; a row that sees no key gets the mean of V (the
    XLA path's uniform softmax over an all-masked row). q (B, T, H, D), k/v (B, S, Hkv, D) -> (B, T, H, D)."""
    q, k, v = (np.asarray(x).astype(np.float64) for x in (q, k, v))
    batch, _, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    mask = _visible(q_pos, k_pos, context)
    out = np.empty_like(q)
    for b in range(batch):
        seen = mask[b].any(axis=1)
        for h in range(heads):
            kh, vh = k[b, :, h // groups], v[b, :, h // groups]
            s = np.where(mask[b], q[b, :, h] @ kh.T / math.sqrt(head_dim), -np.inf)
            s[~seen] = 0.0  # uniform row
            s -= s.max(axis=1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=1, keepdims=True)
            out[b, :, h] = s @ vh
    return out


def _errors(out, exact: np.ndarray, rms: float) -> tuple[float, float]:
    d = np.abs(np.asarray(out).astype(np.float64) - exact)
    return float(d.max()) / rms, float(d.mean()) / rms


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int | None
    decode: bool = False

    def inputs(self, dtype):
        rng = np.random.default_rng(0)
        q = jnp.asarray(rng.standard_normal((self.batch, self.q_len, self.heads, self.head_dim)), dtype)
        k, v = (
            jnp.asarray(rng.standard_normal((self.batch, self.kv_len, self.kv_heads, self.head_dim)), dtype)
            for _ in range(2)
        )
        k_pos = np.tile(np.arange(self.kv_len), (self.batch, 1))
        q_pos = k_pos[:, -self.q_len :]
        return (q, k, v), q_pos, k_pos

    def describe(self, dtype) -> str:
        return (
            f"{self.name}: B={self.batch} T={self.q_len} S={self.kv_len} H={self.heads} Hkv={self.kv_heads} "
            f"D={self.head_dim} ctx={self.context} {jnp.dtype(dtype).name} ({jax.default_backend()})"
        )


class Measured:
    """One case's inputs, exact reference and XLA-path error: what every implementation is judged against."""

    def __init__(self, case: Case, dtype):
        self.case, self.dtype = case, jnp.dtype(dtype)
        self.args, q_pos, k_pos = case.inputs(dtype)
        self.kw = dict(q_positions=jnp.asarray(q_pos, jnp.int32), k_positions=jnp.asarray(k_pos, jnp.int32))
        self.exact = exact_attention(*self.args, q_pos, k_pos, case.context)
        self.rms = float(np.sqrt(np.mean(self.exact**2))) or 1.0
        self.floor = _errors(jnp.asarray(self.exact, self.dtype), self.exact, self.rms)
        self.xla = jax.jit(
            lambda q, k, v: dot_product_attention(q, k, v, attention_mask(*self.kw.values(), case.context))
        )
        self.xla_err = _errors(self.xla(*self.args), self.exact, self.rms)
        q, k, v = self.args
        self.flops = 4.0 * case.head_dim * int(_visible(q_pos, k_pos, case.context).sum()) * case.heads
        self.nbytes = (2 * q.size + k.size + v.size) * q.dtype.itemsize

    def pallas(self, block_sizes=None, precision=None):
        kernel = decode_attention if self.case.decode else flash_attention
        kw = dict(self.kw, context=self.case.context, block_sizes=block_sizes, precision=precision)
        return jax.jit(lambda q, k, v: kernel(q, k, v, **kw))

    def judge(self, label: str, err: tuple[float, float]) -> bool:
        """The pass rule: max|d| and mae vs exact each within ERROR_RATIO x the XLA path's, or under NOISE_FLOOR."""
        ok = all(e <= max(ERROR_RATIO * x, NOISE_FLOOR) for e, x in zip(err, self.xla_err, strict=True))
        if not ok:
            FAILURES.append(
                f"{self.case.name} {label}: max|d|/rms {err[0]:.2e}, mae/rms {err[1]:.2e} vs exact; more than "
                f"{ERROR_RATIO:g}x the XLA path's {self.xla_err[0]:.2e}, {self.xla_err[1]:.2e}"
            )
        return ok

    def row(self, label: str, seconds: float, err: tuple[float, float]) -> str:
        return (
            f"  {label:12s} {seconds * 1e3:10.3f} ms {self.flops / seconds / 1e12:8.3f} TFLOP/s "
            f"{self.nbytes / seconds / 1e9:9.2f} GB/s   vs exact: max|d|/rms {err[0]:.2e}  mae/rms {err[1]:.2e}"
        )


def bench_case(case: Case, *, dtype, repeats: int) -> None:
    m = Measured(case, dtype)
    heads, kv_heads, context = case.heads, case.kv_heads, case.context

    def cudnn(q, k, v):
        mask = attention_mask(*m.kw.values(), context)[:, None]
        if kv_heads != heads:
            k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
        impl = "cudnn" if jax.default_backend() == "gpu" and m.dtype == jnp.bfloat16 else None
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)

    impls = [("pallas", m.pallas(), True)]
    if m.dtype == jnp.float32:
        impls.append(("pallas-tf32", m.pallas(precision=jax.lax.Precision.DEFAULT), True))
    impls += [("xla", m.xla, False), ("jax.nn", jax.jit(cudnn), False)]
    rows = [f"  {'bf16(exact)' if m.dtype == jnp.bfloat16 else 'f32(exact)':12s} {'':>10s}    output rounding floor: "
            f"max|d|/rms {m.floor[0]:.2e}  mae/rms {m.floor[1]:.2e}"]  # fmt: skip
    for label, fn, judged in impls:
        try:
            err = _errors(fn(*m.args), m.exact, m.rms)
            seconds = _time(fn, *m.args, repeats=repeats)
        except Exception as e:  # cuDNN refuses some shapes/dtypes: report, keep going
            rows.append(f"  {label:12s} unavailable: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            if judged:
                FAILURES.append(f"{case.name} {label}: {type(e).__name__}")
            continue
        flag = "" if not judged or m.judge(label, err) else "   FAIL (> 2x xla)"
        rows.append(m.row(label, seconds, err) + flag)
    print(case.describe(dtype))
    print("\n".join(rows), flush=True)


MOSHI_CASES = (
    Case("prefill (temporal)", 1, 3000, 3000, 32, 32, 128, 3000),
    Case("depth (8 codebooks + text)", 64, 9, 9, 16, 16, 64, None),
    Case("decode vs 3000 cache", 1, 1, 3000, 32, 32, 128, 3000, decode=True),
    Case("decode vs 3000 cache, B=8", 8, 1, 3000, 32, 32, 128, 3000, decode=True),
)
SMALL_CASES = (
    Case("prefill (small)", 1, 200, 200, 4, 4, 64, 100),
    Case("depth (small)", 4, 9, 9, 4, 2, 64, None),
    Case("decode (small)", 1, 1, 300, 4, 4, 128, 250, decode=True),
)

# --- tile sweep -----------------------------------------------------------------------------------------------------

PREFILL_GRID = tuple(
    BlockSizes(block_q=bq, block_k=bk, num_warps=w, num_stages=st)
    for bq in (64, 128)
    for bk in (32, 64, 128)
    for w in (4, 8)
    for st in (2, 3)
)
DECODE_GRID = tuple(
    DecodeBlockSizes(block_k=bk, num_splits=ns, min_rows=16, num_warps=w, num_stages=2)
    for bk in (32, 64, 128, 256)
    for ns in (None, 1, 2, 4, 8)
    for w in (2, 4, 8)
)


def _tiles(block_sizes) -> str:
    fields = dataclasses.asdict(block_sizes)
    fields.pop("min_rows", None)
    return " ".join(f"{k}={v}" for k, v in fields.items())


def sweep_case(case: Case, grid, *, dtype, repeats: int, calls: int, budget_s: float, threads: int) -> None:
    """Times every config of `grid` (after dropping those that compile to the same kernel); prints a sorted table and
    the best config. Configs compile concurrently on `threads` host threads (Triton compiles dominate the sweep's
    time), then run one at a time. A config that fails to compile or run is reported in one line and skipped; configs
    not compiled within `budget_s` are counted, not timed. Every timed config is held to the pass rule."""
    m = Measured(case, dtype)
    print(case.describe(dtype), flush=True)
    default = BlockSizes.for_backend(head_dim=case.head_dim) if not case.decode else DecodeBlockSizes.for_backend()
    seen, configs = set(), []
    for block_sizes in (default, *grid):
        if case.decode:  # settings with one (block_k, blocks_per_split, splits) layout compile to one kernel
            layout = block_sizes.layout(case.batch, case.kv_heads, case.kv_len)
            key = (layout, block_sizes.num_warps, block_sizes.num_stages)
        else:
            key = block_sizes
        if key not in seen:
            seen.add(key)
            configs.append(block_sizes)

    def compile_one(block_sizes):
        t = time.perf_counter()
        compiled = m.pallas(block_sizes).lower(*m.args).compile()
        return compiled, time.perf_counter() - t

    start, results = time.perf_counter(), []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
    futures = [pool.submit(compile_one, block_sizes) for block_sizes in configs]
    # Every compile finishes (or the budget ends) before the first timing: host threads lowering kernels would hold
    # the GIL against the timed dispatch loop.
    done, late = concurrent.futures.wait(futures, timeout=budget_s)
    pool.shutdown(wait=False, cancel_futures=True)
    if late:
        print(f"  budget of {budget_s:.0f} s spent: {len(late)} of {len(configs)} configs not compiled, not timed")
    for block_sizes, future in zip(configs, futures, strict=True):
        if future not in done:
            continue
        try:
            compiled, compile_s = future.result()
            err = _errors(compiled(*m.args), m.exact, m.rms)
            seconds = _time(compiled, *m.args, repeats=repeats, calls=calls)
        except Exception as e:
            print(f"  skip {_tiles(block_sizes)}: {type(e).__name__}: {str(e).strip().splitlines()[0][:120]}")
            continue
        ok = m.judge(f"pallas {_tiles(block_sizes)}", err)
        results.append((seconds, block_sizes, err, compile_s, ok))
    xla_s = _time(m.xla, *m.args, repeats=repeats, calls=calls)
    print(f"  {'time ms':>9s} {'GB/s':>8s} {'TFLOP/s':>8s} {'max|d|/rms':>10s} {'compile s':>9s}  config")
    for seconds, block_sizes, err, compile_s, ok in sorted(results, key=lambda r: r[0]):
        mark = " (default)" if block_sizes == default else ""
        print(
            f"  {seconds * 1e3:9.3f} {m.nbytes / seconds / 1e9:8.1f} {m.flops / seconds / 1e12:8.2f} {err[0]:10.2e} "
            f"{compile_s:9.1f}  {_tiles(block_sizes)}{mark}{'' if ok else '  FAIL (> 2x xla)'}"
        )
    print(f"  {xla_s * 1e3:9.3f} {m.nbytes / xla_s / 1e9:8.1f} {m.flops / xla_s / 1e12:8.2f} {m.xla_err[0]:10.2e} "
          f"{'':9s}  xla path")  # fmt: skip
    if results:
        best = min(results, key=lambda r: r[0])
        print(f"  best: {_tiles(best[1])}: {best[0] * 1e3:.3f} ms ({xla_s / best[0]:.2f}x the xla path)", flush=True)
    print(f"  sweep of {case.name}: {time.perf_counter() - start:.0f} s", flush=True)


def sweep(repeats: int, threads: int) -> None:
    if jax.default_backend() == "gpu":
        for case, grid in ((MOSHI_CASES[0], PREFILL_GRID), (MOSHI_CASES[3], DECODE_GRID)):
            sweep_case(case, grid, dtype=jnp.bfloat16, repeats=repeats, calls=5, budget_s=35.0, threads=threads)
        return
    # No GPU: warps and stages do not exist in interpret mode; sweep a few tiles on small shapes to run the code path.
    print("sweep: no GPU; a reduced interpret-mode sweep on small shapes (timings measure the Pallas interpreter)")
    interpret_tiles = functools.partial(dataclasses.replace, num_warps=None, num_stages=None)
    prefill = tuple(dict.fromkeys(interpret_tiles(b) for b in PREFILL_GRID if b.block_k <= 64))
    decode = tuple(
        dict.fromkeys(interpret_tiles(b) for b in DECODE_GRID if b.block_k in (64, 128) and b.num_splits in (1, 4))
    )
    small = dataclasses.replace(SMALL_CASES[2], batch=2, name="decode (small), B=2")
    for case, grid in ((SMALL_CASES[0], prefill), (small, decode)):
        sweep_case(case, grid, dtype=jnp.bfloat16, repeats=repeats, calls=1, budget_s=30.0, threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moshi", action="store_true", help="Moshi 7B shapes (needs an accelerator)")
    parser.add_argument("--sweep", action="store_true", help="tile sweep (GPU; a tiny interpret sweep on CPU)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=4, help="--sweep: configs compiled concurrently")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None)
    args = parser.parse_args()
    if args.sweep:
        sweep(args.repeats or 3, args.threads)
    elif args.moshi:
        dtype = jnp.dtype(args.dtype or "bfloat16")
        repeats = args.repeats or 20
        print(f"measured memory bandwidth (1 GiB x+1 copy): {hbm_bandwidth(repeats) / 1e9:.0f} GB/s", flush=True)
        for case in MOSHI_CASES:
            bench_case(case, dtype=dtype, repeats=repeats)
    else:
        dtype = jnp.dtype(args.dtype or "float32")
        for case in SMALL_CASES:
            bench_case(case, dtype=dtype, repeats=args.repeats or 3)
    if FAILURES:
        raise SystemExit("FAILED: " + "; ".join(FAILURES))


if __name__ == "__main__":
    main()
