"""Framework-neutral argument checks shared by the PyTorch and Flax layers (so both raise the same errors)."""

from __future__ import annotations

from moshi_spec.config import ROPE_LAYOUTS


def check_rope(head_dim: int, theta: float, layout: str) -> None:
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"RotaryEmbedding: unknown layout {layout!r}; known: {ROPE_LAYOUTS}")
    if head_dim % 2 or head_dim <= 0:
        raise ValueError(f"RotaryEmbedding: head_dim must be positive and even, got {head_dim}")
    if theta <= 1:
        raise ValueError(f"RotaryEmbedding: theta must be > 1, got {theta}")


def check_cache_capacity(capacity: int, length: int, context: int | None) -> None:
    """A chunk of `length` steps is exact only if the ring keeps the last context + length - 1 positions."""
    if context is not None and capacity < context + length - 1:
        raise ValueError(
            f"KVCache: capacity {capacity} cannot hold context {context} + chunk {length} - 1 positions; "
            "feed shorter chunks or use a larger cache"
        )
