"""Full-size checks: kyutai LMModel vs our Flax LM at the size named by `--full-size-preset`, with random weights.

The default suite runs them at the tiny preset, so that they cannot rot; the nightly job (.ci/nightly) and the device
script (bench/gpu_check.sh) run them at 7B: `pytest parity -m full_size --full-size-preset moshi_7b`. The Flax LM runs
on the default jax device (the accelerator); kyutai runs in torch on the host CPU, as it must on a TPU host.

Over a sequence of a few dozen frames:
- the text and audio logits, in kyutai's delay layout (masks and NaN placement exactly, then the values);
- the per-layer drift of both stacks (embedding, every temporal layer, the depth transformer's input and layers),
  propagated and teacher-forced, one record per layer: the report's per-layer chart at full size;
- the streaming step against kyutai `LMGen`, greedy, for a few frames: the step's logits against kyutai's full forward
  of the codes the stream consumed, and the tokens. In float32 every token must equal LMGen's. In bfloat16 a flip
  between two near-equal logits is rounding, not a bug: tokens must agree up to the first difference, and the logits
  that token was sampled from must match kyutai's within the bf16 policy (a wrong model fails there).
bfloat16 always; float32 where the host and the device hold it (`_memory_shortfall`), else skipped saying why.
Tolerances are the policy's, the same at every size: a 7B run over budget names its first diverging layer.
"""

from __future__ import annotations

import os
from functools import cache

import jax
import numpy as np
import pytest

from models_flax.sampling import GREEDY
from models_flax.streaming import Streamer
from moshi_spec import LMConfig
from parity.harness.compare import assert_parity
from parity.harness.implementations import build
from parity.harness.lm_checks import CAPTURES, compare_logits, layer_drift
from parity.harness.strategies import random_codes
from parity.harness.streaming_runs import (
    aligned_logits,
    consumed_codes,
    first_token_mismatch,
    kyutai_logits,
    run_lmgen,
    run_steps,
    token_mismatch,
    user_codes,
)

pytestmark = [pytest.mark.full_size, pytest.mark.xdist_group("full_size")]

FRAMES = 32  # a few dozen: past the tiny preset's context (8), a 2.5 s stretch of Moshi's 12.5 Hz frames
STREAM_FRAMES = 6  # steps of the streaming check past the delay (its first max_delay steps sample nothing)
BATCH = 2
PAIR = ("kyutai", "flax")
BYTES = {"float32": 4, "bfloat16": 2}


@pytest.fixture(scope="module")
def preset(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("full_size_preset")


def _memory_shortfall(cfg: LMConfig, dtype: str) -> str | None:
    """Why this machine cannot hold the check in `dtype`, or None.

    Host: kyutai is built in float32 and cast (4 + b bytes per parameter at the peak), its state is read as numpy
    (shared with torch) and converted once for Flax (b): 4 + 2b bytes per parameter, plus a quarter for activations
    and the allocator. Device: the Flax weights (b), plus a quarter. On a CPU-only run both live in host memory.
    """
    params, size = cfg.num_params(), BYTES[dtype]
    host_need = 1.25 * params * (4 + 2 * size)
    device_need = 1.25 * params * size
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats is None or "bytes_limit" not in stats:
        host_need += device_need
    elif device_need > stats["bytes_limit"]:
        limit = stats["bytes_limit"]
        return f"{dtype}: the Flax weights need ~{device_need / 2**30:.0f} GiB, {device} has {limit / 2**30:.0f}"
    if host_need > host:
        return f"{dtype}: kyutai on the host needs ~{host_need / 2**30:.0f} GiB, the host has {host / 2**30:.0f}"
    return None


@cache
def _models(preset: str, dtype: str):
    cfg = LMConfig.preset(preset)
    reason = _memory_shortfall(cfg, dtype)
    if reason:
        pytest.skip(f"{preset}: {reason}")
    return build("lm", cfg, dtype, impls=PAIR)


@cache
def _runs(preset: str, dtype: str) -> dict[str, dict[str, np.ndarray]]:
    models = _models(preset, dtype)
    codes = random_codes(models.cfg, BATCH, FRAMES, seed=1, zero_fraction=0.1)
    return {impl: models.run(impl, {"codes": codes}, capture=CAPTURES) for impl in PAIR}


def _config(preset: str, **extra) -> dict:
    return {"preset": preset, "frames": FRAMES, "batch": BATCH, "platform": jax.default_backend(), **extra}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_logits(preset, dtype):
    runs = _runs(preset, dtype)
    compare_logits(_models(preset, dtype).cfg, runs["kyutai"], runs["flax"], PAIR, dtype, config=_config(preset))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_layer_drift(preset, dtype):
    """Every layer of both stacks, propagated and teacher-forced; the assertion names the first over budget."""
    failures = layer_drift(_models(preset, dtype), _runs(preset, dtype), PAIR, dtype, config=_config(preset))
    assert not failures, f"{preset} {dtype} {PAIR} first diverging: {failures[0]}"


@cache
def _stream(preset: str, dtype: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(LMGen's greedy tokens, our Streamer's greedy run, kyutai's full-forward logits of what our stream consumed)."""
    models = _models(preset, dtype)
    cfg = models.cfg
    codes = user_codes(cfg, BATCH, cfg.max_delay + STREAM_FRAMES, seed=2)
    expected = run_lmgen(models.module("kyutai"), codes, use_sampling=False)
    run = run_steps(Streamer(models.module("flax"), text=GREEDY, audio=GREEDY), codes)
    return expected, run, kyutai_logits(models.module("kyutai"), consumed_codes(cfg, codes, run))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_stream_logits_match_kyutai(preset, dtype):
    """Every frame's step logits against kyutai's full forward of the same history (whatever the tokens were)."""
    _, run, reference = _stream(preset, dtype)
    cfg = _models(preset, dtype).cfg
    for component, (full, step) in aligned_logits(cfg, reference, run).items():
        # The step returns float32 logits upcast exactly from the model dtype: compare in the model dtype.
        assert_parity(full.astype(np.float32), step, component=component, pair=("kyutai", "flax[step]"),
                      expected_dtype="float32", compute_dtype=dtype, logits=True,
                      config=_config(preset, frames=cfg.max_delay + STREAM_FRAMES))  # fmt: skip


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_stream_tokens_match_lmgen(preset, dtype):
    """float32: token for token. bfloat16: equal up to the first difference, which must be a near tie (its logits
    match kyutai's within the policy); the tokens after it follow a different history and are not compared."""
    expected, got, reference = _stream(preset, dtype)
    cfg = _models(preset, dtype).cfg
    assert got["tokens"].shape == expected.shape
    where, tie = token_mismatch(cfg, expected, got["tokens"], names=PAIR, logits=(got, reference), compute_dtype=dtype)
    if first_token_mismatch(cfg, expected, got["tokens"]) is not None and (dtype == "float32" or not tie):
        raise AssertionError(f"{preset} {dtype}: {where}")


def test_bf16_token_check_fails_on_a_wrong_model():
    """Negative control of the bf16 rule (always at the tiny preset): a near tie is excused, a wrong model is not.
    With the depth transformer's codebook heads reversed, the first differing token's logits fail the policy."""
    models = build("lm", LMConfig.tiny(), "bfloat16", impls=PAIR)
    heads = models.module("flax").depth.lm_heads
    heads.kernel.set_value(heads.kernel[...][::-1])
    cfg = models.cfg
    codes = user_codes(cfg, BATCH, cfg.max_delay + STREAM_FRAMES, seed=2)
    expected = run_lmgen(models.module("kyutai"), codes, use_sampling=False)
    run = run_steps(Streamer(models.module("flax"), text=GREEDY, audio=GREEDY), codes)
    reference = kyutai_logits(models.module("kyutai"), consumed_codes(cfg, codes, run))
    where, tie = token_mismatch(cfg, expected, run["tokens"], names=PAIR, logits=(run, reference),
                                compute_dtype="bfloat16")  # fmt: skip
    assert tie is False, where
