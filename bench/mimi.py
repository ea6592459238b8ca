"""Mimi: Flax vs kyutai in one run, on the same weights and audio: encode + decode of a clip, and the streaming frame
step (one 80 ms frame encoded and decoded), with the real-time factor (seconds of compute per second of audio).

    python bench/mimi.py                          # CPU: the real-size Mimi, 10 s of speech, 8 codebooks (~1 min)
    python bench/mimi.py --preset tiny --seconds 1 --repeats 1     # a smoke run
    python bench/mimi.py --device                 # an accelerator: Flax on the default jax device, kyutai on CUDA
                                                  # (bench/gpu_check.sh runs it: XLA's depthwise transposed conv on GPU)

Weights: kyutai's Mimi randomised with calibrated codebooks (parity/harness/mimi.py), converted to Flax by the
converters; timing does not depend on the values, but the codes are checked equal (a benchmark of a wrong model
measures nothing). The Flax model runs under one `jax.jit` per entry (split/merge: `nnx.jit` walks the 318-leaf
module tree on every call, ~60 ms). Each time is the median of --repeats runs after one warm-up (compile) run; kyutai
and Flax alternate, so machine drift hits both alike. Ratio = Flax time / kyutai time (< 1: Flax faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import converters
from moshi_spec import MimiConfig
from parity.harness import mimi, strategies  # noqa: F401  (mimi binds the component)
from parity.harness.adapters import adapter
from parity.harness.adapters.base import numpy_outputs


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mimi", choices=("mimi", "tiny"))
    p.add_argument("--seconds", type=float, default=10.0, help="clip length for encode + decode")
    p.add_argument("--codebooks", type=int, help="codebooks to encode (default: the preset's, 8 for mimi)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=25, help="streaming frames timed (median)")
    p.add_argument("--device", action="store_true", help="kyutai on CUDA (Flax uses jax's default device anyway)")
    args = p.parse_args()

    cfg = MimiConfig.preset(args.preset)
    cfg = cfg.replace(num_codebooks=args.codebooks or cfg.num_codebooks)
    frames = max(1, round(args.seconds * cfg.frame_rate))
    kyutai_adapter = adapter("kyutai")
    built = kyutai_adapter.build("mimi", cfg, dtype="float32")
    kyutai_adapter.randomize(built, 0)
    kyutai = built.module.to("cuda") if args.device else built.module
    flax_adapter = adapter("flax")
    flax_built = flax_adapter.build("mimi", cfg, dtype="float32", init=False)
    state = converters.convert(kyutai_adapter.state(built), src="kyutai", dst="flax", cfg=cfg, component="mimi")
    flax_adapter.load(flax_built, state)
    graphdef, weights = nnx.split(flax_built.module)

    @jax.jit
    def encode(weights, audio):
        return nnx.merge(graphdef, weights).encode(audio, num_codebooks=cfg.num_codebooks)

    @jax.jit
    def decode(weights, codes):
        return nnx.merge(graphdef, weights).decode(codes)

    @jax.jit
    def step(weights, audio, state):
        model = nnx.merge(graphdef, weights)
        codes, state = model.encode_step(audio, state, num_codebooks=cfg.num_codebooks)
        out, state = model.decode_step(codes, state)
        return out, state

    audio = strategies.audio("speech", cfg, frames=frames, batch=1)
    x_flax = jnp.asarray(audio)
    x_torch = torch.from_numpy(audio).to("cuda" if args.device else "cpu")
    print(f"{args.preset} Mimi, {frames} frames ({frames / cfg.frame_rate:.2f} s), {cfg.num_codebooks} codebooks, "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__}")  # fmt: skip

    with torch.no_grad():
        codes_k = kyutai.encode(x_torch)
        kyutai.decode(codes_k)
    codes_f = jax.block_until_ready(encode(weights, x_flax))
    jax.block_until_ready(decode(weights, codes_f))
    agree = float((np.asarray(codes_f) == numpy_outputs({"c": codes_k})["c"]).mean())
    with torch.no_grad():
        audio_k = numpy_outputs({"a": kyutai.decode(codes_k)})["a"].astype(np.float64)
    audio_f = np.asarray(decode(weights, jnp.asarray(numpy_outputs({"c": codes_k})["c"])), np.float64)
    rms = float(np.sqrt((audio_k**2).mean())) or 1.0
    diff = np.abs(audio_f - audio_k)
    print(f"codes equal: {agree:.4%}; decode of kyutai's codes, flax vs kyutai: max|d|/rms {diff.max() / rms:.2e}, "
          f"mae/rms {diff.mean() / rms:.2e}")  # fmt: skip
    if agree < 0.999:
        raise SystemExit(f"codes agree {agree:.4%} < 99.9%: the benchmark would time a wrong model")

    def run_kyutai() -> None:
        with torch.no_grad():
            kyutai.decode(kyutai.encode(x_torch))
            if args.device:
                torch.cuda.synchronize()

    def run_flax() -> None:
        jax.block_until_ready(decode(weights, encode(weights, x_flax)))

    t_k, t_f = [], []
    for _ in range(args.repeats):  # alternate, so drift hits both
        t_k.append(_median_time(run_kyutai, 1))
        t_f.append(_median_time(run_flax, 1))
    clip = frames / cfg.frame_rate
    tk, tf = statistics.median(t_k), statistics.median(t_f)
    print(f"encode+decode  kyutai {tk * 1e3:9.1f} ms (RTF {tk / clip:.3f})   flax {tf * 1e3:9.1f} ms "
          f"(RTF {tf / clip:.3f})   flax/kyutai {tf / tk:.2f}")  # fmt: skip

    frame = x_flax[..., : cfg.frame_size]
    state = flax_built.module.init_state(1)
    out, state = step(weights, frame, state)  # compile
    jax.block_until_ready(out)
    s_f = []
    for i in range(args.steps):
        piece = x_flax[..., (i % frames) * cfg.frame_size : (i % frames + 1) * cfg.frame_size]
        start = time.perf_counter()
        out, state = step(weights, piece, state)
        jax.block_until_ready(out)
        s_f.append(time.perf_counter() - start)
    s_k = []
    with torch.no_grad(), kyutai.streaming(1):
        for i in range(args.steps):
            piece = x_torch[..., (i % frames) * cfg.frame_size : (i % frames + 1) * cfg.frame_size]
            start = time.perf_counter()
            kyutai.decode(kyutai.encode(piece))
            if args.device:
                torch.cuda.synchronize()
            s_k.append(time.perf_counter() - start)
    sk, sf = statistics.median(s_k), statistics.median(s_f)
    period = 1 / cfg.frame_rate
    print(f"stream frame   kyutai {sk * 1e3:9.2f} ms (RTF {sk / period:.3f})   flax {sf * 1e3:9.2f} ms "
          f"(RTF {sf / period:.3f})   flax/kyutai {sf / sk:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
