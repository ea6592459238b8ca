"""Positions in the thousands. Moshi's temporal context is 3000 frames (4 minutes at 12.5 frames/s) and a stream runs
on past it through the ring cache, so rope and the attention paths of the port are compared at positions 2990..5013:
rope against our PyTorch ref and kyutai; the attention layer on XLA, on the Pallas prefill kernel, cached on XLA (one
query per step, as a streaming step feeds it) and ref's own cache, against ref's full pass. float32 and bfloat16; two
rows at different offsets, one crossing position 3000, one 5000; the cached paths step through a ring of 8 slots (the
context), which they wrap twice. The Pallas decode kernel runs at these positions in parity/test_cache_chunks.py
(cached chunks of 3, float32 and bfloat16), where a kernel compile per path and dtype is spent once for both concerns.

The suite's other flax comparisons stay at offsets <= 16 (SHORT_OFFSET): torch's and XLA's float32 exp round some rope
frequencies one ulp apart, and an angle moves by position x that ulp. At head_dim 16 and theta 1e4 (Moshi's) only
the lowest frequency (3.2e-4) differs, by 1.5e-7 rad at position 5000 (`test_rope_frequencies_round_alike`), so the
float32 bounds measure the port here.

Negative controls plant bugs that only long positions show (the rest of the suite passes them: its flax positions
stay below 256): rope positions rounded to float16 (exact up to 2048) or to bfloat16 (exact up to 256), a rope table
of the context's length indexed modulo 3000, the cache's positions kept in the activations' dtype.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import models_flax.rope
import models_ref.rope
from models_flax.cache import KVCache
from moshi_spec import TransformerConfig
from parity.harness.checks import CaseRuns
from parity.harness.compare import ParityError
from parity.harness.kernel_tiles import use_small_tiles
from parity.harness.strategies import DTYPES, Case

CFG = TransformerConfig(dim=32, num_heads=2, num_layers=1, ffn_dim=32, num_kv_heads_override=1, context=8)
OFFSETS = (2990, 4990)
LENGTH = 24
MOSHI_CONTEXT = 3000
ATTENTION_PATHS = ("ref[cached]", "flax[jit]", "flax[attention=pallas,jit]", "flax[cached,jit]")
GROUPS = {  # (component, reference) -> the config and the implementations built with one set of weights
    ("rope", "ref"): (CFG, ("ref", "flax")),
    ("rope", "kyutai"): (CFG.replace(rope_layout="interleaved"), ("kyutai", "flax")),  # kyutai's pairs are interleaved
    ("attention", "ref"): (CFG, ("ref", *ATTENTION_PATHS)),
}


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    use_small_tiles(monkeypatch)


@functools.cache
def _runs(component: str, reference: str, dtype: str) -> CaseRuns:
    """x (B, T, D) (rope: (B, T, H, head_dim)) of rms 1 at positions OFFSETS[b] + arange(LENGTH)."""
    cfg, impls = GROUPS[component, reference]
    features = (cfg.num_heads, cfg.head_dim) if component == "rope" else (cfg.dim,)
    x = np.random.default_rng(0).standard_normal((len(OFFSETS), LENGTH, *features)).astype(np.float32)
    positions = np.asarray(OFFSETS)[:, None] + np.arange(LENGTH)
    return CaseRuns(component, Case(cfg, dtype, x, positions, None, "none"), impls)


def test_rope_frequencies_round_alike():
    """What the float32 bounds below assume: ref's (torch) and flax's (XLA) float32 rope frequencies give angles
    within 1e-6 rad of each other up to the last position (an element then moves by < 5e-6 x rms, the rope bound)."""
    torch_freq = models_ref.rope.inverse_frequencies(CFG.head_dim, CFG.rope_theta).numpy().astype(np.float64)
    xla_freq = np.asarray(models_flax.rope.inverse_frequencies(CFG.head_dim, CFG.rope_theta), np.float64)
    gap = (max(OFFSETS) + LENGTH - 1) * np.abs(torch_freq - xla_freq).max()
    assert gap <= 1e-6, f"torch and XLA rope angles {gap:.2e} rad apart: pick another head_dim/theta"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reference", ("ref", "kyutai"))
def test_rope(reference, dtype):
    _runs("rope", reference, dtype).compare("flax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ATTENTION_PATHS)
def test_attention(path, dtype):
    """Each path against ref's full pass (the Pallas kernels' bfloat16 softmax has its own bound:
    `attention_component`)."""
    _runs("attention", "ref", dtype).compare(path)


# --- negative controls ----------------------------------------------------------------------------------------------

_ORIGINAL_ANGLES = models_flax.rope.rotation_angles
_ORIGINAL_UPDATE = KVCache.update


def _rope_positions_through(dtype):
    """Rope angles of positions rounded through `dtype` (positions cast to a float type before the product)."""
    return lambda positions, head_dim, theta: _ORIGINAL_ANGLES(
        positions.astype(dtype).astype(positions.dtype), head_dim, theta
    )


def _rope_table_modulo_context(positions, head_dim, theta):
    """A cos/sin table of the context's length (3000) indexed ring-style, position % 3000."""
    return _ORIGINAL_ANGLES(positions % MOSHI_CONTEXT, head_dim, theta)


def _cache_positions_in_kv_dtype(self, k, v, positions):
    """The cache keeps its slots' positions in the keys' dtype (exact in float32, rounded past 256 in bfloat16)."""
    new = _ORIGINAL_UPDATE(self, k, v, positions)
    return new.replace(positions=new.positions.astype(k.dtype).astype(new.positions.dtype))


def _plant(owner, name, bug):
    return lambda patch: patch.setattr(owner, name, bug)


CONTROLS = {  # name -> (component, dtype, path, plant)
    "rope_positions_in_float16": (
        "rope", "float32", "flax", _plant(models_flax.rope, "rotation_angles", _rope_positions_through(jnp.float16))
    ),
    "rope_positions_in_bfloat16": (
        "attention", "bfloat16", "flax[cached,jit]",
        _plant(models_flax.rope, "rotation_angles", _rope_positions_through(jnp.bfloat16)),
    ),
    "rope_table_modulo_context": (
        "attention", "float32", "flax[jit]", _plant(models_flax.rope, "rotation_angles", _rope_table_modulo_context)
    ),
    "cache_positions_in_kv_dtype": (
        "attention", "bfloat16", "flax[cached,jit]", _plant(KVCache, "update", _cache_positions_in_kv_dtype)
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CONTROLS)
def test_negative_control(name, patch):
    """Each planted bug fails a comparison that passes unpatched (`test_rope` / `test_attention`, same case)."""
    component, dtype, path, plant = CONTROLS[name]
    runs = _runs(component, "ref", dtype)
    runs.output("ref")  # the reference, before the patch
    plant(patch)
    with pytest.raises(ParityError):
        runs.compare(path, runs.run(path), control=name)
