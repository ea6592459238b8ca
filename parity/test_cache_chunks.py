"""Cached attention fed chunks of several positions. A streaming step may feed a few frames at once, and `Attention`
gives a cached chunk of up to 4 queries (MAX_STEPS) to the Pallas decode kernel; the rest of the suite steps caches
one query at a time, where a chunk's own causal mask, a chunk written across the ring's end and the positions of a
chunk's queries never matter. Here chunks go through the tightest ring a chunk of 4 allows (context 8 + 3 = 11 slots,
wrapped twice; in both rows some chunks straddle its end, different ones per row): on XLA in chunks of 4 and 2, on the
Pallas decode kernel in chunks of 3 (one kernel compile per dtype), in our PyTorch ref in chunks of 2, 3 and 4,
against ref's full (uncached) pass; float32 and bfloat16. The rows sit at offsets 2990 and 4990, so this is also the
Pallas decode kernel's test at long positions (parity/test_long_positions.py has the other paths).

Negative controls plant chunk bugs that one query at a time cannot show (the rest of the suite passes them): a
chunk's queries all masked as its last position (each sees the chunk's later keys), a chunk written as one block at
its first slot (clamped back inside the ring where it would cross the end), the decode kernel handed the chunk's
first position for every query.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models_flax.attention
from models_flax.attention import Attention
from models_flax.cache import KVCache
from moshi_spec import TransformerConfig
from parity.harness import implementations
from parity.harness.checks import CaseRuns
from parity.harness.compare import ParityError
from parity.harness.kernel_tiles import use_small_tiles
from parity.harness.strategies import DTYPES, Case

CFG = TransformerConfig(dim=32, num_heads=2, num_layers=1, ffn_dim=32, num_kv_heads_override=1, context=8)
OFFSETS = (2990, 4990)
LENGTH = 24
XLA, PALLAS = "flax[cached,chunks=4-2,jit]", "flax[attention=pallas,cached,chunks=3,jit]"
PATHS = ("ref[cached,chunks=2-3-4]", XLA, PALLAS)


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    use_small_tiles(monkeypatch)


@functools.cache
def _runs(dtype: str) -> CaseRuns:
    """x (B, T, D) of rms 1 at positions OFFSETS[b] + arange(LENGTH); ref's full pass is the reference."""
    x = np.random.default_rng(0).standard_normal((len(OFFSETS), LENGTH, CFG.dim)).astype(np.float32)
    positions = np.asarray(OFFSETS)[:, None] + np.arange(LENGTH)
    return CaseRuns("attention", Case(CFG, dtype, x, positions, None, "none"), ("ref", *PATHS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
def test_chunks_equal_full_pass(path, dtype):
    _runs(dtype).compare(path)


def test_chunk_option_is_checked():
    """ "chunks" needs "cached", and a per-codebook layer (stepped one codebook at a time) refuses chunks."""
    with pytest.raises(ValueError, match="chunks=2 needs the option cached"):
        implementations.build("attention", CFG, "float32", impls=("ref[chunks=2]",))
    flexible = CFG.replace(flexible=True, num_codebooks=2, rope=False)
    models = implementations.build("attention", flexible, "float32", impls=("ref[cached,chunks=2]",))
    x = np.zeros((1, 2, CFG.dim), np.float32)
    with pytest.raises(ValueError, match="chunked decoding of a per-codebook layer"):
        models.run("ref[cached,chunks=2]", {"x": x, "positions": np.arange(2)[None], "layer_idx": None})


# --- negative controls ----------------------------------------------------------------------------------------------

_ORIGINAL_ATTEND = Attention._attend_cached
_ORIGINAL_UPDATE = KVCache.update


def _chunk_as_one_position(self, q, k, v, positions, cache):
    """The XLA path masking every query of a chunk as the chunk's last position."""
    return _ORIGINAL_ATTEND(self, q, k, v, jnp.broadcast_to(positions[:, -1:], positions.shape), cache)


def _chunk_written_as_one_block(self, k, v, positions):
    """A chunk written with dynamic_update_slice at its first position's slot: a chunk that would cross the ring's
    end is clamped back inside it, overwriting slots that still hold visible keys."""
    if self.deferred:  # a streaming cache records the chunk; its commit writes it, here
        return _ORIGINAL_UPDATE(self, k, v, positions)
    start = positions[:, 0].astype(jnp.int32) % self.capacity

    def write(rows, new, layout_start):
        return jax.vmap(jax.lax.dynamic_update_slice)(rows, new, layout_start)

    heads_first = (0, 2, 1, 3)  # the chunk (B, T, Hkv, D) in the cache's (B, Hkv, S, D) layout
    zero = jnp.zeros_like(start)
    return self.replace(
        keys=write(self.keys, k.transpose(heads_first), (zero, start, zero)),
        values=write(self.values, v.transpose(heads_first), (zero, start, zero)),
        positions=write(self.positions, positions.astype(jnp.int32), (start,)),
    )


def _decode_at_chunk_start(patch):
    """`Attention` handing the decode kernel the chunk's first position (a one-query step's offset) for every query."""
    decode = models_flax.attention.decode_attention

    def at_start(q, k, v, *, q_positions, **kw):
        return decode(q, k, v, q_positions=jnp.broadcast_to(q_positions[:, :1], q_positions.shape), **kw)

    patch.setattr(models_flax.attention, "decode_attention", at_start)


def _plant(owner, name, bug):
    return lambda patch: patch.setattr(owner, name, bug)


CONTROLS = {  # name -> (path, plant)
    "chunk_as_one_position": (XLA, _plant(Attention, "_attend_cached", _chunk_as_one_position)),
    "chunk_written_as_one_block": (PALLAS, _plant(KVCache, "update", _chunk_written_as_one_block)),
    "decode_at_chunk_start": (PALLAS, _decode_at_chunk_start),
}


@pytest.mark.parametrize("name", CONTROLS)
def test_negative_control(name, patch):
    """Each planted bug fails the float32 comparison that `test_chunks_equal_full_pass` passes unpatched."""
    path, plant = CONTROLS[name]
    runs = _runs("float32")
    runs.output("ref")  # the reference, before the patch
    plant(patch)
    with pytest.raises(ParityError):
        runs.compare(path, runs.run(path), control=name)
