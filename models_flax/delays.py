"""kyutai's delay pattern: stream k is shifted right by delays[k] steps (the first steps filled with its initial token)
for the model's input, and the logits are shifted back, with the last delays[k] steps invalid."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def delay(codes: jax.Array, delays: tuple[int, ...], initial: jax.Array) -> jax.Array:
    """codes (B, K, T), initial (K,) -> (B, K, T) with stream k shifted right by delays[k]."""
    rows = []
    for k, d in enumerate(delays):
        line = codes[:, k]
        if d:
            line = jnp.concatenate([jnp.full((codes.shape[0], d), initial[k], codes.dtype), line[:, :-d]], axis=1)
        rows.append(line)
    return jnp.stack(rows, axis=1)


def undelay(logits: jax.Array, delays: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """logits (B, K, T, C) -> (aligned logits with NaN where invalid, mask (B, K, T) of valid positions)."""
    batch, _, length = logits.shape[:3]
    outs, masks = [], []
    for k, d in enumerate(delays):
        line = logits[:, k]
        if d:
            line = jnp.concatenate([line[:, d:], jnp.full_like(line[:, :d], jnp.nan)], axis=1)
        outs.append(line)
        masks.append(jnp.broadcast_to(jnp.arange(length) < length - d, (batch, length)))
    return jnp.stack(outs, axis=1), jnp.stack(masks, axis=1)
