"""KV ring cache as plain data: capacity slots per row, each slot holding a key, a value and its position (-1: empty).

Position p is written to slot p % capacity, so a cache whose capacity covers the attention context keeps every key a
query can see (kyutai `RingKVCache`). Updates return a new cache; nothing is modified in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVCache:
    keys: torch.Tensor  # (B, S, Hkv, D)
    values: torch.Tensor  # (B, S, Hkv, D)
    positions: torch.Tensor  # (B, S) int64, -1 where empty

    @classmethod
    def init(cls, batch: int, capacity: int, num_kv_heads: int, head_dim: int, *, dtype: torch.dtype) -> KVCache:
        if batch <= 0 or capacity <= 0:
            raise ValueError(f"KVCache: batch and capacity must be positive, got {batch}, {capacity}")
        zeros = torch.zeros(batch, capacity, num_kv_heads, head_dim, dtype=dtype)
        return cls(zeros, zeros.clone(), torch.full((batch, capacity), -1, dtype=torch.long))

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> KVCache:
        """Writes (B, T, Hkv, D) keys/values at their positions' slots."""
        batch, length = positions.shape
        if (
            tuple(k.shape[:1]) != (self.keys.shape[0],)
            or k.shape[2:] != self.keys.shape[2:]
            or k.dtype != self.keys.dtype
        ):
            raise ValueError(
                f"KVCache: keys {tuple(k.shape)} {k.dtype} do not fit the cache "
                f"{tuple(self.keys.shape)} {self.keys.dtype}"
            )
        if length > self.capacity:
            raise ValueError(f"KVCache: {length} new positions exceed the capacity {self.capacity}")
        slots = positions % self.capacity
        rows = torch.arange(batch)[:, None].expand(-1, length)
        keys, values, pos = self.keys.clone(), self.values.clone(), self.positions.clone()
        keys[rows, slots], values[rows, slots], pos[rows, slots] = k, v, positions.long()
        return KVCache(keys, values, pos)
