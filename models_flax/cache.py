"""KV ring cache as plain data: capacity slots per row, each slot holding a key, a value and its position (-1: empty).

Position p is written to slot p % capacity, so a cache whose capacity covers the attention context keeps every key a
query can see (kyutai `RingKVCache`). A pytree: it passes through jit, and updates return a new cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    keys: jax.Array  # (B, S, Hkv, D)
    values: jax.Array  # (B, S, Hkv, D)
    positions: jax.Array  # (B, S) int32, -1 where empty

    @classmethod
    def init(cls, batch: int, capacity: int, num_kv_heads: int, head_dim: int, *, dtype: object) -> KVCache:
        if batch <= 0 or capacity <= 0:
            raise ValueError(f"KVCache: batch and capacity must be positive, got {batch}, {capacity}")
        shape = (batch, capacity, num_kv_heads, head_dim)
        # Two distinct buffers: a streaming step donates the cache, and one buffer cannot be donated twice.
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.full((batch, capacity), -1, jnp.int32))

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]

    def update(self, k: jax.Array, v: jax.Array, positions: jax.Array) -> KVCache:
        """Writes (B, T, Hkv, D) keys/values at their positions' slots."""
        batch, length = positions.shape
        if k.shape[:1] != self.keys.shape[:1] or k.shape[2:] != self.keys.shape[2:] or k.dtype != self.keys.dtype:
            raise ValueError(
                f"KVCache: keys {tuple(k.shape)} {k.dtype} do not fit the cache "
                f"{tuple(self.keys.shape)} {self.keys.dtype}"
            )
        if length > self.capacity:
            raise ValueError(f"KVCache: {length} new positions exceed the capacity {self.capacity}")
        slots = positions % self.capacity
        rows = jnp.arange(batch)[:, None]
        return KVCache(
            self.keys.at[rows, slots].set(k),
            self.values.at[rows, slots].set(v),
            self.positions.at[rows, slots].set(positions.astype(jnp.int32)),
        )
