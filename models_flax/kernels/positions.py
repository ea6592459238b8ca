"""What the attention kernels decide from positions alone: which (query, key) pairs are visible, which key blocks can
hold one, which queries see no key at all; shared by the Triton kernels (flash_attention.py, decode.py) and the Mosaic
kernel (mosaic.py), so that one rule serves all of them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NO_POSITION = 2**30  # above any real position: the min over a block with no valid position


def visible(q_pos: jax.Array, k_pos: jax.Array, context: int | jax.Array | None) -> jax.Array:
    """Query positions against key positions, broadcast (a column (R, 1) and a row (1, K) -> (R, K) bool): the rule of
    models_flax.attention.attention_mask, key valid, not in the future, within the context."""
    delta = q_pos - k_pos
    visible = (k_pos >= 0) & (delta >= 0)
    if context is not None:
        visible = visible & (delta < context)
    return visible


def softmax_scale(head_dim: int) -> float:
    """The scores' scale, 1/sqrt(D) (not the 1.0 of JAX's Pallas examples)."""
    return 1.0 / math.sqrt(head_dim)


def live_block_ranges(
    q_pos: jax.Array, k_pos: jax.Array, *, block_q: int, block_k: int, context: int | None
) -> jax.Array:
    """Per (batch, query block), the range [lo, hi) of key blocks that may hold a visible (query, key) pair.

    Args:
        q_pos: (B, nq * block_q) int32 query positions (padding -1).
        k_pos: (B, nk * block_k) int32 key positions (padding and empty slots -1), in any order.

    Returns:
        (B, nq, 2) int32 [lo, hi]; lo == hi when no block is live. Conservative: a key block is live when the interval
        of its valid positions [kmin, kmax] and the query block's [qmin, qmax] allow 0 <= q - k < context, so a block
        with a visible pair is always inside the range (the kernel re-checks every block from the positions).
    """
    batch = q_pos.shape[0]
    kv_blocks = k_pos.shape[1] // block_k
    qb = q_pos.reshape(batch, -1, block_q)
    kb = k_pos.reshape(batch, kv_blocks, block_k)
    # A query at a negative position sees no key (k >= 0 and q - k >= 0), so only q >= 0 bounds the range.
    q_min = jnp.min(jnp.where(qb >= 0, qb, NO_POSITION), axis=-1)[:, :, None]
    q_max = jnp.max(jnp.where(qb >= 0, qb, -1), axis=-1)[:, :, None]
    k_min = jnp.min(jnp.where(kb >= 0, kb, NO_POSITION), axis=-1)[:, None, :]
    k_max = jnp.max(jnp.where(kb >= 0, kb, -1), axis=-1)[:, None, :]
    live = (q_max >= 0) & (k_max >= 0) & (q_max >= k_min)  # some key not after some query
    if context is not None:
        live = live & (q_min - k_max < context)  # some key inside some query's window
    index = jnp.arange(kv_blocks, dtype=jnp.int32)
    hi = jnp.max(jnp.where(live, index + 1, 0), axis=-1)
    lo = jnp.minimum(jnp.min(jnp.where(live, index, kv_blocks), axis=-1), hi)
    return jnp.stack([lo, hi], axis=-1).astype(jnp.int32)


def rows_without_keys(q_positions: jax.Array, k_positions: jax.Array, context: int | jax.Array | None) -> jax.Array:
    """(B, T) bool: the queries that see no key at all, from the positions alone in O((T + S) log S).

    A query at p >= 0 sees the valid keys at positions in (p - context, p]; keys are counted in sorted positions.
    `context` may be traced (an int32 scalar); None is no window.
    """
    keys = jnp.sort(jnp.where(k_positions >= 0, k_positions, -1).astype(jnp.int32), axis=1)
    q = q_positions.astype(jnp.int32)
    lower = jnp.maximum(q - context, -1) if context is not None else jnp.full_like(q, -1)  # empty slots never count
    count = jax.vmap(
        lambda ks, hi, lo: jnp.searchsorted(ks, hi, side="right") - jnp.searchsorted(ks, lo, side="right")
    )(keys, q, lower)
    return (q < 0) | (count == 0)


def pad_axis(x: jax.Array, axis: int, size: int, value) -> jax.Array:
    """x padded with `value` along `axis` up to `size` (no copy when it is already that long)."""
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)
