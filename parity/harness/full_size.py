"""The runs behind the full-size checks (parity/test_full_size.py) and their measurement (bench/measure_full_size.py):
kyutai LMModel and our Flax LM at an LMConfig preset with one seed's random weights, run on the same codes.

From a seed s: the weights (s), the forward's codes (s + 1) and the stream's user codes (s + 2). The Flax LM runs on the
default jax device (the accelerator); kyutai runs in torch on the GPU when jax runs on one and torch sees CUDA
(`kyutai_device`), else on the host CPU, as it must on a TPU host.

Where one accelerator cannot hold the Flax weights but the host's together can (7B in bf16 is 15.4 GB; a TPU v5e chip
has 16 GB), they are split over all of them: a (1, n) ('dp', 'fsdp') mesh, each weight going from the host straight
onto its shards by the sharding rules (`mesh_for`; `fsdp` forces a mesh size, 1 none), and the streaming check runs
`Streamer(mesh=)`. The comparisons are the same either way.
"""

from __future__ import annotations

import gc
import os
from functools import cache

import jax
import numpy as np
from jax.sharding import Mesh

from models_flax import sharding
from models_flax.sampling import GREEDY
from models_flax.streaming import Streamer
from moshi_spec import LMConfig, MimiConfig
from parity.harness.implementations import Models, build
from parity.harness.lm_checks import CAPTURES
from parity.harness.placement import check_placement
from parity.harness.strategies import random_codes
from parity.harness.streaming_runs import consumed_codes, kyutai_logits, run_lmgen, run_steps, user_codes

FRAMES = 32  # a few dozen: past the tiny preset's context (8), a 2.5 s stretch of Moshi's 12.5 Hz frames
STREAM_FRAMES = 6  # steps of the streaming check past the delay (its first max_delay steps sample nothing)
BATCH = 2
PAIR = ("kyutai", "flax")
DTYPES = ("bfloat16", "float32")
BYTES = {"float32": 4, "bfloat16": 2}


def memory_shortfall(cfg: LMConfig, dtype: str, fsdp: int | None = None) -> str | None:
    """Why this machine cannot hold the runs in `dtype` on `shards(cfg, dtype, fsdp)` devices, or None.

    Host: kyutai is built in float32 and cast (4 + b bytes per parameter at the peak), its state is read as numpy
    (shared with torch) and converted once for Flax (b): 4 + 2b bytes per parameter, plus a quarter for activations
    and the allocator. Device: the Flax weights (b), plus a quarter, over the devices they are split over (the rules
    split every matrix and embedding; the norms, biases and layer scales they keep whole are under 0.1% at 7B). On a
    CPU-only run both live in host memory.
    """
    host_need, device_need = _needs(cfg, dtype)
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _device_limit()
    if limit is None:
        host_need += device_need
    else:
        n = shards(cfg, dtype, fsdp)
        if device_need / n > limit:
            held = f"{jax.devices()[0]} has" if n == 1 else f"each of {n} {jax.default_backend()} devices has"
            need = device_need / n / 2**30
            return f"{dtype}: the Flax weights need ~{need:.0f} GiB per device, {held} {limit / 2**30:.0f}"
    if host_need > host:
        return f"{dtype}: kyutai on the host needs ~{host_need / 2**30:.0f} GiB, the host has {host / 2**30:.0f}"
    return None


def _needs(cfg: LMConfig, dtype: str) -> tuple[float, float]:
    params, size = cfg.num_params(), BYTES[dtype]
    return 1.25 * params * (4 + 2 * size), 1.25 * params * size


def _device_limit() -> int | None:
    """The default device's memory in bytes; None on a CPU (host memory) or where the device does not say."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    return None if stats is None else stats.get("bytes_limit")


def shards(cfg: LMConfig, dtype: str, fsdp: int | None = None) -> int:
    """How many devices the Flax weights are split over: `fsdp` when given (on CPU devices, above the tiny preset,
    refused: see the error); else 1 where the default device holds them (or is the host's CPU), every device of the
    default backend where it does not."""
    if fsdp is not None:
        if not 1 <= fsdp <= jax.device_count():
            raise ValueError(f"full size: fsdp={fsdp}, but jax has {jax.device_count()} devices")
        if fsdp > 1 and jax.default_backend() == "cpu" and cfg.num_params() > LMConfig.tiny().num_params():
            raise ValueError(
                f"full size: fsdp={fsdp} on CPU devices above the tiny preset: the checks run the sharded LM eagerly, "
                "op by op, and XLA:CPU's collectives deadlock then (measured at the small preset on 2 and 8 host "
                "devices: a rendezvous that not every device reaches; jitted, the same forward runs). Split it on "
                "an accelerator, or use --full-size-fsdp 1 here"
            )
        return fsdp
    limit = _device_limit()
    return 1 if limit is None or _needs(cfg, dtype)[1] <= limit else jax.device_count()


def mesh_for(cfg: LMConfig, dtype: str, fsdp: int | None = None) -> Mesh | None:
    """The (1, n) mesh over the first n = `shards(...)` devices the Flax weights are split over; None for one."""
    n = shards(cfg, dtype, fsdp)
    return None if n == 1 else sharding.make_mesh(1, n, devices=jax.devices()[:n])


def kyutai_device() -> str:
    """Where kyutai's model runs: "cuda" when jax's default backend is a GPU and torch sees CUDA, else "cpu"."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


@cache
def models(preset: str, dtype: str, seed: int, fsdp: int | None = None) -> Models:
    """The pair, Flax on `mesh_for(..., fsdp)` (every weight checked to be where its rule puts it), kyutai moved to
    `kyutai_device()` after its weights were drawn and converted, without the weight states `build` keeps (two more
    copies of the weights on the host: 31 GB each for 7B in float32; nothing here converts again)."""
    cfg = LMConfig.preset(preset)
    built = build("lm", cfg, dtype, impls=PAIR, seed=seed, mesh=mesh_for(cfg, dtype, fsdp))
    if built.mesh is not None:
        check_placement(built.module("flax"), built.mesh)
    built.states.clear()
    built.module("kyutai").to(kyutai_device())
    return built


@cache
def drift_runs(
    preset: str, dtype: str, seed: int, fsdp: int | None = None
) -> tuple[Models, dict[str, dict[str, np.ndarray]]]:
    """(the models, each one's forward of the seed's codes with both stacks captured)."""
    built = models(preset, dtype, seed, fsdp)
    codes = random_codes(built.cfg, BATCH, FRAMES, seed=seed + 1, zero_fraction=0.1)
    return built, {impl: built.run(impl, {"codes": codes}, capture=CAPTURES) for impl in PAIR}


@cache
def stream_runs(
    preset: str, dtype: str, seed: int, fsdp: int | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(LMGen's greedy tokens, our Streamer's greedy run, kyutai's full-forward logits of what our stream consumed)."""
    built = models(preset, dtype, seed, fsdp)
    cfg = built.cfg
    codes = user_codes(cfg, BATCH, cfg.max_delay + STREAM_FRAMES, seed=seed + 2)
    expected = run_lmgen(built.module("kyutai"), codes, use_sampling=False)
    streamer = Streamer(built.module("flax"), text=GREEDY, audio=GREEDY, mesh=built.mesh)
    run = run_steps(streamer, codes)
    return expected, run, kyutai_logits(built.module("kyutai"), consumed_codes(cfg, codes, run))


def release() -> None:
    """Drops every cached model and run: at 7B one dtype's pair holds tens of GB, so a caller that moves on to the
    next dtype or seed releases the last one first."""
    for cached in (models, drift_runs, stream_runs, mimi_runs):
        cached.cache_clear()
    gc.collect()


MIMI_PRESETS = {"tiny": "tiny", "small": "mimi", "moshi_7b": "mimi"}
"""The Mimi preset that goes with each LM preset: the real codec beside any LM above tiny."""
MIMI_FRAMES = {"tiny": 8, "mimi": 24}  # the real codec: 24 frames, 1.92 s of speech


@cache
def mimi_runs(preset: str, seed: int) -> tuple[Models, dict[str, dict], dict[str, dict]]:
    """(kyutai, ref and flax Mimi with the seed's weights and calibrated codebooks, each one's encode of speech with
    its stages captured, each one's decode of kyutai's codes with its stages captured). ref is built for the
    quantizer tables the code check reads (`mimi.quantizer_tables`)."""
    from parity.harness import mimi, strategies  # noqa: F401  (mimi binds the component to every implementation)

    cfg = MimiConfig.preset(MIMI_PRESETS[preset])
    built = build("mimi", cfg, "float32", impls=("kyutai", "ref", "flax"), seed=seed)
    audio = strategies.audio("speech", cfg, frames=MIMI_FRAMES[MIMI_PRESETS[preset]], batch=BATCH, seed=seed)
    encoded = {impl: built.run(impl, {"audio": audio, "num_codebooks": cfg.num_codebooks}, capture=("stages",))
               for impl in PAIR}  # fmt: skip
    codes = {"codes": encoded["kyutai"]["codes"]}
    decoded = {impl: built.run(impl, codes, entry="decode", capture=("stages",)) for impl in PAIR}
    return built, encoded, decoded


def stage_cases(
    cfg: MimiConfig, encoded: dict[str, dict], decoded: dict[str, dict]
) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
    """(layer, stage name, kyutai's output, Flax's) of every encoder stage, then every decoder stage: one axis through
    the codec, as the report draws it."""
    names = cfg.stage_names()
    runs = [(encoded, names[0]), (decoded, names[1])]
    stages = [(name, run["kyutai"][name], run["flax"][name]) for run, stage_names in runs for name in stage_names]
    return [(layer, name, a, b) for layer, (name, a, b) in enumerate(stages)]
