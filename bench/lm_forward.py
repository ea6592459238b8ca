"""Forward of the whole Moshi LM: Flax (jit) vs kyutai PyTorch vs HF PyTorch, side by side in one process.

Every implementation runs the `small` preset (moshi_spec.LMConfig.small(), ~341M params) on the same teacher-forced
codes (B, 1 + n_q, T) with its own random weights (timing does not depend on the values). Each time is the median of
--repeats runs taken round-robin (one run of each implementation per round, so drift hits all alike), after one
untimed warm-up run. The compute floor is the forward's matmul FLOPs (counted from the config) divided by the matmul
rate measured in this run (the fastest of 20 square matmuls, before and after the timed runs), torch's rate for the
PyTorch implementations and XLA's for Flax.

What is timed:
    kyutai  `LMModel.forward(codes)` under torch.no_grad(): delays, embeddings, temporal transformer, text head,
            depth transformer over all frames (teacher forced), audio heads, undelay.
    flax    `jax.jit(lambda state, codes: merge(graphdef, state)(codes))` returning (text_logits, audio_logits),
            block_until_ready; compile time is printed separately and excluded.
    hf      `MoshiForConditionalGeneration` (its Mimi codec is built but never called) in two official calls:
            (1) `model(input_ids=text, moshi_audio_codes=..., user_audio_codes=..., use_cache=False)`: embeddings,
            temporal decoder, text head (no labels, so no loss and no depth decoder);
            (2) `model.depth_decoder(input_ids=(B*T, dep_q) ids, last_hidden_state=(B*T, 1, D), use_cache=False)`:
            what the top-level forward runs when given text_labels and audio_labels, minus the delay pattern and
            the losses. HF's MoshiFlexibleLinear broadcasts every per-codebook weight over the B*T rows
            (torch.matmul of (N, K, 1, in) by (1, K, in, out)), which runs at ~0.3 s per frame here, so (2) is timed
            on --hf-depth-frames frames and scaled by T / that (the depth work is independent per frame). The HF
            total is therefore an estimate; the table says so.

Run (about 1.5 minutes with the defaults on 2 cores; --frames 64 for a quick check):

    NO_TORCH_COMPILE=1 python bench/lm_forward.py [--frames 256] [--repeats 10] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from moshi_spec import LMConfig, TransformerConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
JAX_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---------------------------------------------------------------------------------------------------------- FLOPs


def _layer_macs_per_token(c: TransformerConfig) -> int:
    """q/k/v/o projections and the gated MLP (in: D -> ffn_dim, out: ffn_dim / 2 -> D) of one layer, one token."""
    return c.dim * (c.q_dim + 2 * c.kv_dim) + c.q_dim * c.dim + c.dim * c.ffn_dim + c.hidden * c.dim


def _attention_macs(c: TransformerConfig, length: int) -> int:
    """Scores (q.k) and values (p.v) of one layer over a causal sequence: query p sees min(p + 1, context) keys."""
    keys = sum(min(p + 1, c.context or length) for p in range(length))
    return 2 * keys * c.num_heads * c.head_dim


def forward_flops(cfg: LMConfig, frames: int, batch: int = 1) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one teacher-forced LM forward, by part. Gathers, norms, rope, softmax and
    elementwise work are not counted: this is a floor, not an estimate."""
    t, d, k = cfg.temporal, cfg.depth, cfg.dep_q
    parts = {
        "temporal q/k/v/o + mlp": t.num_layers * frames * _layer_macs_per_token(t),
        "temporal attention (causal, window)": t.num_layers * _attention_macs(t, frames),
        "text head": frames * t.dim * cfg.text_card,
        "depth input projections": frames * k * t.dim * d.dim,
        "depth q/k/v/o + mlp": frames * d.num_layers * k * _layer_macs_per_token(d),
        "depth attention (causal over dep_q)": frames * d.num_layers * _attention_macs(d, k),
        "depth audio heads": frames * k * d.dim * cfg.card,
    }
    return {name: 2.0 * batch * macs for name, macs in parts.items()}


TEMPORAL_PARTS = ("temporal q/k/v/o + mlp", "temporal attention (causal, window)", "text head")
DEPTH_PARTS = ("depth input projections", "depth q/k/v/o + mlp", "depth attention (causal over dep_q)")
DEPTH_PARTS += ("depth audio heads",)


# ------------------------------------------------------------------------------------------------------ timing


def run_times(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_rates(n: int, dtype: str, repeats: int) -> dict[str, float]:
    """Peak FLOP/s (fastest of repeats, torch and jax alternating, after a warm-up) of an n x n x n matmul in torch
    and in jitted jnp.dot. The fastest run, not the median: the floor is what the hardware can do."""
    a = torch.randn(n, n, dtype=TORCH_DTYPES[dtype])
    b = torch.randn(n, n, dtype=TORCH_DTYPES[dtype])
    dot = jax.jit(jnp.dot)
    ja, jb = jnp.asarray(a.float().numpy(), JAX_DTYPES[dtype]), jnp.asarray(b.float().numpy(), JAX_DTYPES[dtype])
    fns = {"torch": lambda: torch.matmul(a, b), "jax": lambda: dot(ja, jb).block_until_ready()}
    best = {}
    for name, fn in fns.items():
        fn()
        best[name] = float("inf")
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], run_times(fn, 1)[0])
    return {name: 2.0 * n**3 / t for name, t in best.items()}


class CpuMonitor:
    """CPU time that other processes took while we timed: the machine is small, and a neighbour stealing one of two
    cores slows torch's OpenMP (which waits on the descheduled thread) far more than XLA's pool."""

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuMonitor:
        self.start = (time.perf_counter(), self._busy(), sum(os.times()[:2]))
        return self

    def __exit__(self, *exc: object) -> None:
        wall, busy, own = time.perf_counter(), self._busy(), sum(os.times()[:2])
        self.wall = wall - self.start[0]
        self.other = max(0.0, (busy - self.start[1]) - (own - self.start[2]))

    def report(self) -> str:
        share = self.other / (self.wall * os.cpu_count())
        warn = "\n  WARNING: the machine was not idle; rerun when it is" if share > 0.05 else ""
        return f"others used {self.other:.1f} cpu-s in {self.wall:.1f} s ({100 * share:.0f}% of the CPUs){warn}"


@dataclass
class Row:
    name: str
    framework: str  # "torch" or "jax": whose matmul rate sets its floor
    flops: float
    times: list[float]
    scale: float = 1.0  # the HF depth decoder is timed on fewer frames and scaled
    note: str = ""

    @property
    def median(self) -> float:
        return self.scale * statistics.median(self.times)


# ---------------------------------------------------------------------------------------------- implementations


def random_codes(cfg: LMConfig, frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, cfg.card, size=(1, 1 + cfg.n_q, frames))
    codes[:, 0] = rng.integers(0, cfg.text_card, size=(1, frames))
    return codes


def build_kyutai(cfg: LMConfig, dtype: str, codes: np.ndarray):
    from parity.harness import adapters

    lm = adapters.adapter("kyutai").build("lm", cfg, dtype=dtype).module
    tc = torch.from_numpy(codes)

    @torch.no_grad()
    def full():
        return lm(tc)

    @torch.no_grad()
    def temporal():
        return lm.forward_text(tc)

    hidden = temporal()[0]

    @torch.no_grad()
    def depth():  # the delay shift does not change the work: feed the codes as they are
        return lm.forward_depformer_training(tc, hidden)

    return lm, full, temporal, depth


def build_flax(cfg: LMConfig, dtype: str, codes: np.ndarray):
    from models_flax.lm import LM

    dt = JAX_DTYPES[dtype]
    model = LM(cfg, dtype=dt, param_dtype=dt, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    # the per-codebook kernels are initialised N(0, 1); scale them by fan_in^-1/2 so activations stay O(1)
    state = jax.tree.map(lambda x: x * x.shape[-2] ** -0.5 if x.ndim == 3 else x, state)
    jcodes = jnp.asarray(codes, jnp.int32)

    def forward(state, codes):
        out = nnx.merge(graphdef, state)(codes)
        return out.text_logits, out.audio_logits

    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, jcodes).compile()
    compile_s = time.perf_counter() - start

    def full():
        return jax.block_until_ready(compiled(state, jcodes))

    parts = None
    try:  # the parts, for the breakdown; models_flax internals may move, the full forward above is what counts

        def temporal_fn(state, codes):
            m = nnx.merge(graphdef, state)
            positions = jnp.broadcast_to(jnp.arange(codes.shape[2]), (codes.shape[0], codes.shape[2]))
            x = m.stack_input(m.embed(codes), positions)
            for layer in m.layers:
                x, _ = layer(x, positions=positions)
            x = m.norm(x)
            return m.lm_head(x), x

        def depth_fn(state, codes, x):
            m = nnx.merge(graphdef, state)
            tokens = codes[:, : cfg.dep_q].transpose(0, 2, 1).reshape(-1, cfg.dep_q)
            return m.depth(tokens, context=x.reshape(tokens.shape[0], -1))

        temporal_c = jax.jit(temporal_fn).lower(state, jcodes).compile()
        hidden = temporal_c(state, jcodes)[1]
        depth_c = jax.jit(depth_fn).lower(state, jcodes, hidden).compile()
        parts = (
            lambda: jax.block_until_ready(temporal_c(state, jcodes)),
            lambda: jax.block_until_ready(depth_c(state, jcodes, hidden)),
        )
    except Exception as err:  # report and go on with the full forward
        print(f"flax breakdown unavailable: {type(err).__name__}: {err}")
    return model, full, parts, compile_s


def build_hf(cfg: LMConfig, dtype: str, codes: np.ndarray, depth_frames: int):
    from parity.harness import adapters

    model = adapters.adapter("hf").build("lm", cfg, dtype=dtype).module
    lm_params = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.audio_encoder.parameters())
    if lm_params != cfg.num_params():
        raise ValueError(f"HF LM has {lm_params} parameters (Mimi excluded), the config says {cfg.num_params()}")
    tc = torch.from_numpy(codes)
    k = cfg.dep_q

    @torch.no_grad()
    def temporal():
        return model(
            input_ids=tc[:, 0], moshi_audio_codes=tc[:, 1 : 1 + k], user_audio_codes=tc[:, 1 + k :], use_cache=False
        )

    out = temporal()
    width = out.last_hidden_state.shape[-1]
    hidden = out.last_hidden_state[:, :depth_frames].reshape(-1, 1, width)
    depth_ids = tc[:, :k, :depth_frames].transpose(1, 2).reshape(-1, k)  # text token, then audio 0 .. dep_q - 2

    @torch.no_grad()
    def depth():
        return model.depth_decoder(input_ids=depth_ids, last_hidden_state=hidden, use_cache=False)

    return model, temporal, depth


# ----------------------------------------------------------------------------------------------------- report


def environment(args: argparse.Namespace) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    import flax
    import jaxlib
    import moshi
    import transformers

    print(f"python {platform.python_version()}  numpy {np.__version__}  torch {torch.__version__}")
    print(f"jax {jax.__version__}  jaxlib {jaxlib.__version__}  flax {flax.__version__}")
    print(f"transformers {transformers.__version__}  moshi (kyutai) {moshi.__version__}")
    print(f"cpu: {cpu}; os.cpu_count {os.cpu_count()}; affinity {len(os.sched_getaffinity(0))} cores")
    print(
        f"torch threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}); "
        f"jax backend {jax.default_backend()} {jax.devices()}"
    )
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "NO_TORCH_COMPILE", "JAX_PLATFORMS"):
        print(f"  {var}={os.environ.get(var, '')}")
    print(f"load average {open('/proc/loadavg').read().split()[:3]}")
    print(f"frames {args.frames}, batch 1, dtype {args.dtype}, repeats {args.repeats}")


def print_table(rows: list[Row], rates: dict[str, float], baseline: float) -> None:
    head = f"{'implementation':38} {'median s':>9} {'min s':>8} {'/kyutai':>8} {'/floor':>7} {'/torch floor':>12}"
    print(head)
    print("-" * len(head))
    for row in rows:
        own = row.median / (row.flops / rates[row.framework])
        torch_floor = row.median / (row.flops / rates["torch"])
        low = row.scale * min(row.times)
        print(
            f"{row.name:38} {row.median:9.3f} {low:8.3f} {row.median / baseline:8.2f} {own:7.2f} {torch_floor:12.2f}"
            + (f"  {row.note}" if row.note else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--matmul-n", type=int, default=2048, help="size of the square matmul measuring the rate")
    parser.add_argument("--hf-depth-frames", type=int, default=4, help="frames the HF depth decoder is timed on")
    parser.add_argument("--hf-depth-repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="skip HF (its model build and depth decoder are slow)")
    args = parser.parse_args()
    os.environ["NO_TORCH_COMPILE"] = "1"  # read when kyutai's moshi is imported; torch.compile would change the timing
    torch.set_num_threads(args.threads)
    environment(args)

    cfg = LMConfig.small()
    frames = args.frames
    flops = forward_flops(cfg, frames)
    total = sum(flops.values())
    temporal_flops = sum(flops[p] for p in TEMPORAL_PARTS)
    depth_flops = sum(flops[p] for p in DEPTH_PARTS)
    print(f"\nsmall preset: {cfg.num_params() / 1e6:.1f}M params; matmul FLOPs of one forward ({frames} frames):")
    for name, value in flops.items():
        print(f"  {name:38} {value / 1e9:8.2f} GFLOP")
    print(f"  {'total':38} {total / 1e9:8.2f} GFLOP")

    rates_before = matmul_rates(args.matmul_n, args.dtype, repeats=20)

    codes = random_codes(cfg, frames)
    start = time.perf_counter()
    _, kyutai_full, kyutai_temporal, kyutai_depth = build_kyutai(cfg, args.dtype, codes)
    print(f"\nbuilt kyutai in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    _, flax_full, flax_parts, compile_s = build_flax(cfg, args.dtype, codes)
    print(f"built flax in {time.perf_counter() - start:.1f} s (jit compile of the full forward: {compile_s:.1f} s)")

    fulls: dict[str, Callable[[], object]] = {"kyutai": kyutai_full, "flax": flax_full}
    parts: dict[str, Callable[[], object]] = {"kyutai temporal": kyutai_temporal, "kyutai depth": kyutai_depth}
    if flax_parts is not None:
        parts |= {"flax temporal": flax_parts[0], "flax depth": flax_parts[1]}
    hf_depth = None
    depth_frames = min(args.hf_depth_frames, frames)
    if not args.no_hf:
        start = time.perf_counter()
        _, hf_temporal, hf_depth = build_hf(cfg, args.dtype, codes, depth_frames)
        print(f"built hf in {time.perf_counter() - start:.1f} s")
        parts["hf temporal"] = hf_temporal

    for fn in (*fulls.values(), *parts.values()):  # warm-up, untimed
        fn()
    times: dict[str, list[float]] = {name: [] for name in (*fulls, *parts)}
    hf_depth_times: list[float] = []
    with CpuMonitor() as monitor:
        for _ in range(args.repeats):  # round-robin
            for name, fn in (*fulls.items(), *parts.items()):
                times[name] += run_times(fn, 1)
        if hf_depth is not None:
            hf_depth()
            hf_depth_times = run_times(hf_depth, args.hf_depth_repeats)

    rates_after = matmul_rates(args.matmul_n, args.dtype, repeats=20)
    rates = {fw: max(rates_before[fw], rates_after[fw]) for fw in rates_before}
    n = args.matmul_n
    print(f"\nmatmul rate ({n}x{n}x{n} {args.dtype}, fastest of 20, measured before and after the timed runs):")
    for fw, rate in rates.items():
        measured = f"{rates_before[fw] / 1e9:.1f} before, {rates_after[fw] / 1e9:.1f} after"
        print(f"  {fw:6} {rate / 1e9:7.1f} GFLOP/s ({measured})  -> floor {total / rate:.3f} s")
    print(f"  xla / torch rate: {rates['jax'] / rates['torch']:.2f}")

    rows = [
        Row("kyutai LMModel.forward", "torch", total, times["kyutai"]),
        Row("flax jit LM", "jax", total, times["flax"]),
    ]
    if hf_depth is not None:
        scale = frames / depth_frames
        hf_total = [t + scale * statistics.median(hf_depth_times) for t in times["hf temporal"]]
        rows.append(Row("hf (estimate: temporal + depth scaled)", "torch", total, hf_total, note="see breakdown"))
    print(f"\nforward of the LM, B=1, T={frames}, {args.dtype}, median of {args.repeats} (round-robin)")
    print_table(rows, rates, statistics.median(times["kyutai"]))

    print("\nbreakdown: temporal = embeddings + temporal transformer + norm + text head; depth = depth transformer")
    breakdown = [Row(name, "jax" if name.startswith("flax") else "torch", 0.0, times[name]) for name in parts]
    for row in breakdown:
        row.flops = temporal_flops if row.name.endswith("temporal") else depth_flops
    if hf_depth is not None:
        breakdown.append(
            Row(
                "hf depth (scaled)",
                "torch",
                depth_flops,
                hf_depth_times,
                scale=frames / depth_frames,
                note=f"timed on {depth_frames} frames x {frames / depth_frames:g}",
            )
        )
    print_table(breakdown, rates, statistics.median(times["kyutai"]))
    print(f"\nwhile timing, {monitor.report()}")
    print(
        "\n/kyutai: median over kyutai's full forward. /floor: over the matmul FLOPs of that row divided by its own "
        "framework's\nmatmul rate (torch for kyutai and hf, XLA for flax). /torch floor: the same with torch's rate."
    )


if __name__ == "__main__":
    main()
