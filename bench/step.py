"""One streaming frame (80 ms of audio): Flax `Streamer.step` vs kyutai `LMGen.step`, and the memory floor.

A frame reads every weight once (temporal layers, text head, the depth transformer's per-codebook weights; only one row
of each embedding table), and the temporal KV caches: at batch 1 the step is a chain of matrix-vector products, bounded
below by (weight bytes + cache bytes) / memory bandwidth. The bandwidth is measured in this run as a matrix-vector
product reaches it (the largest temporal weight, in the model dtype, times one vector), not a copy.

    NO_TORCH_COMPILE=1 python bench/step.py                       # CPU: small preset, fp32, Flax vs kyutai (~2 min)
    python bench/step.py --preset moshi_7b --dtype bfloat16 --no-kyutai --impl xla pallas   # an accelerator
    ... --profile 5   # also trace 5 steps: device kernels per step, device busy time vs wall time, top kernels
    ... --fsdp 8      # the weights and caches split over 8 devices (a TPU v5e-8: 7B in bf16 fills one 16 GB chip)

Both run with kyutai's default sampling (text 0.7 / top 25, audio 0.8 / top 250), batch 1, random weights (timing
does not depend on the values), the same random user codes. Each time is the median over --frames frames after
--warmup untimed ones, taken round robin (frame t of every implementation in turn, so machine drift hits all alike);
the Flax step blocks on its tokens every frame, as a server that sends them must. The cache
starts empty, so a short run needs less of it than a full 3000-frame context: both floors are printed (the XLA path
reads every slot of the ring whatever its fill, masked, so the full-cache floor is the one it can reach).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models_flax import sharding
from models_flax.lm import LM
from models_flax.streaming import Streamer
from moshi_spec import LMConfig

JAX_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def weight_bytes_per_frame(lm: LM) -> int:
    """Every parameter except the embedding tables (a frame reads one row of each: negligible)."""
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(lm, nnx.Param))
    return sum(x.size * x.dtype.itemsize for path, x in leaves if "embed_tokens" not in jax.tree_util.keystr(path))


def cache_bytes(cfg: LMConfig, dtype, frames: int) -> int:
    t = cfg.temporal
    return 2 * t.num_layers * frames * t.num_kv_heads * t.head_dim * jnp.dtype(dtype).itemsize


def matvec_bandwidth(cfg: LMConfig, dtype, repeats: int = 50) -> float:
    """Bytes/s of the largest temporal weight (D x ffn) times a vector, chained so that calls cannot overlap."""
    t = cfg.temporal
    w = jax.random.normal(jax.random.key(0), (t.dim, t.ffn_dim), dtype)
    x = jnp.ones((1, t.dim), dtype)
    mv = jax.jit(lambda x, w: (x @ w)[:, : t.dim] * 1e-3)
    jax.block_until_ready(mv(x, w))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            x = mv(x, w)
        jax.block_until_ready(x)
        best = min(best, (time.perf_counter() - start) / repeats)
    return w.size * w.dtype.itemsize / best


def time_round_robin(steps: dict[str, Callable[[int], None]], frames: int, warmup: int) -> dict[str, float]:
    """Median seconds per frame of each stepper, frame t of every stepper in turn (drift hits all alike)."""
    for t in range(1, 1 + warmup):
        for step in steps.values():
            step(t)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for t in range(1 + warmup, 1 + warmup + frames):
        for name, step in steps.items():
            start = time.perf_counter()
            step(t)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_profile(trace_dir: str, steps: int, wall: float) -> None:
    """Device time per step from a perfetto trace: per device line (CUDA streams, XLA ops, modules) the events and busy
    time per step against the wall time, then the top kernels of the stream lines."""
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    events = json.load(gzip.open(paths[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    meta = [e for e in events if e.get("ph") == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e.get("name") == "process_name"}
    lines = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e.get("name") == "thread_name"}
    device = {pid for pid, name in procs.items() if "GPU" in name or "TPU" in name}
    print(f"  profile over {steps} steps, {wall * 1e3 / steps:.2f} ms wall per step")
    if not device:
        print(f"  profile: no device events (processes: {sorted(set(procs.values()))})")
        return
    by_line: dict[tuple, list] = {}
    for e in events:
        if e.get("ph") == "X" and e["pid"] in device:
            by_line.setdefault((e["pid"], e["tid"]), []).append(e)
    for key, evs in sorted(by_line.items(), key=lambda kv: -len(kv[1])):
        busy = sum(e["dur"] for e in evs) / 1e3 / steps
        print(f"    line {lines.get(key, key)!s:40.40}: {len(evs) / steps:6.0f} events, {busy:7.3f} ms busy per step")
    kernels = [e for key, evs in by_line.items() if str(lines.get(key, "")).startswith("Stream") for e in evs]
    totals: dict[str, list[float]] = {}
    for e in kernels:
        entry = totals.setdefault(e["name"][:70], [0.0, 0])
        entry[0] += e["dur"] / 1e3 / steps
        entry[1] += 1 / steps
    for name, (ms, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:15]:
        print(f"    {ms:7.3f} ms  {calls:5.1f}x  {name}")


def flax_stepper(cfg, dtype, impl, codes, fsdp: int = 1) -> tuple[Callable[[int], None], float]:
    """step(t) runs frame t of a Flax stream (frame 0, the compile, is run here: its time is returned); over fsdp > 1
    devices the weights are drawn onto their shards and the stream runs on `Streamer(mesh=)`."""

    def make() -> LM:
        return LM(cfg, dtype=JAX_DTYPES[dtype], param_dtype=JAX_DTYPES[dtype], impl=impl, rngs=nnx.Rngs(0))

    if fsdp == 1:
        streamer = Streamer(make())
    else:
        mesh = sharding.make_mesh(1, fsdp, devices=jax.devices()[:fsdp])
        streamer = Streamer(sharding.init_on_mesh(make, mesh), mesh=mesh)
    box = {"state": streamer.init_state(1)}
    keys = jax.random.split(jax.random.key(0), codes.shape[2])

    def step(t):
        out, box["state"] = streamer.step(box["state"], codes[:, :, t], keys[t])
        np.asarray(out.tokens)  # the server needs the tokens every frame

    start = time.perf_counter()
    step(0)
    return step, time.perf_counter() - start


def kyutai_stepper(cfg, dtype, codes, stack: contextlib.ExitStack) -> Callable[[int], None]:
    """step(t) runs frame t of kyutai LMGen with its default sampling (frame 0 is run here)."""
    import torch
    from moshi.models.lm import LMGen

    from parity.harness import adapters

    torch.set_num_threads(os.cpu_count() or 1)
    lm = adapters.adapter("kyutai").build("lm", cfg, dtype=dtype).module
    gen = LMGen(lm)
    stack.enter_context(gen.streaming(1))
    stack.enter_context(torch.no_grad())
    user = torch.from_numpy(codes)

    def step(t):
        gen.step(user[:, :, t : t + 1])

    step(0)
    return step


def profile_steps(step: Callable[[int], None], first: int, count: int) -> None:
    trace_dir = tempfile.mkdtemp()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        start = time.perf_counter()
        for t in range(first, first + count):
            step(t)
        wall = time.perf_counter() - start
    print_profile(trace_dir, count, wall)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "moshi_7b"))
    parser.add_argument("--dtype", default="float32", choices=tuple(JAX_DTYPES))
    parser.add_argument("--impl", nargs="+", default=["xla"], choices=("xla", "pallas"))
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-kyutai", action="store_true", help="Flax only (e.g. on an accelerator without moshi)")
    parser.add_argument("--profile", type=int, default=0, help="trace this many more Flax steps; print device time")
    parser.add_argument(
        "--fsdp",
        type=int,
        default=1,
        help="split the Flax weights and caches over this many devices "
        "(Streamer(mesh=); Pallas kernels per device on the caches' kv heads): 7B on 16 GB TPU v5e chips; the "
        "floors are per device",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not 1 <= args.fsdp <= jax.device_count():
        parser().error(f"--fsdp {args.fsdp}: 1 to {jax.device_count()} devices")
    cfg = getattr(LMConfig, args.preset)()
    total = args.frames + args.warmup + 1 + args.profile
    codes = np.random.default_rng(0).integers(0, cfg.card, (1, cfg.n_q - cfg.dep_q, total)).astype(np.int64)
    bandwidth = matvec_bandwidth(cfg, JAX_DTYPES[args.dtype])
    print(f"{args.preset} {args.dtype} on {args.fsdp} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"batch 1, {args.frames} frames; matrix-vector bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)  # fmt: skip
    dtype = JAX_DTYPES[args.dtype]
    nbytes = weight_bytes_per_frame(nnx.eval_shape(lambda: LM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))))
    context = cfg.temporal.context or total
    # Split over fsdp devices, each reads its 1/fsdp of the weights and caches, all at once.
    floor_now = (nbytes + cache_bytes(cfg, dtype, min(total, context))) / bandwidth / args.fsdp
    floor_full = (nbytes + cache_bytes(cfg, dtype, context)) / bandwidth / args.fsdp
    print(f"weights read per frame {nbytes / 1e9:.3f} GB; floor {floor_now * 1e3:.2f} ms with this run's cache, "
          f"{floor_full * 1e3:.2f} ms with a full {context}-frame cache", flush=True)  # fmt: skip
    steps: dict[str, Callable[[int], None]] = {}
    with contextlib.ExitStack() as stack:
        for impl in args.impl:
            steps[f"flax step ({impl})"], compile_s = flax_stepper(cfg, args.dtype, impl, codes, args.fsdp)
            print(f"  flax ({impl}): compiled in {compile_s:.1f} s", flush=True)
        if not args.no_kyutai:
            steps["kyutai LMGen.step"] = kyutai_stepper(cfg, args.dtype, codes, stack)
        rows = time_round_robin(steps, args.frames, args.warmup)
        for name, step in steps.items():
            if args.profile and name.startswith("flax"):
                print(f"  {name}:")
                profile_steps(step, 1 + args.warmup + args.frames, args.profile)
    kyutai = rows.get("kyutai LMGen.step")
    print(f"| {'step':24} | {'ms / frame':>10} | {'x kyutai':>8} | {'x floor':>7} | {'x full-cache floor':>18} |")
    for name, seconds in rows.items():
        ratio = f"{seconds / kyutai:8.2f}" if kyutai else f"{'-':>8}"
        print(f"| {name:24} | {seconds * 1e3:10.2f} | {ratio} | {seconds / floor_now:7.2f} | "
              f"{seconds / floor_full:18.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
