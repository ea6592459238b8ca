"""Training loss of the LM: text + audio cross entropy over the valid positions, per-codebook weights.

Invalid positions (the delay pattern's tail, zero tokens) are excluded through the output's masks; a label outside its
vocabulary at a valid position is an error when the labels are concrete; under jit such labels are masked out and
counted in the returned `out_of_range`, which a training loop must check (never silently dropped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from models_flax.checks import concrete
from models_flax.lm import LMOutput


def _masked_ce(logits: jax.Array, labels: jax.Array, mask: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
    """Mean cross entropy of (N, C) logits against (N,) labels over mask (0 when nothing is valid), bad-label count."""
    vocab = logits.shape[-1]
    bad = mask & ((labels < 0) | (labels >= vocab))
    value = concrete(bad)
    if value is not None and value.any():
        raise ValueError(f"loss: {int(value.sum())} {name} label(s) outside [0, {vocab}) at valid positions")
    mask = mask & ~bad
    logp = jax.nn.log_softmax(jnp.where(mask[:, None], logits.astype(jnp.float32), 0.0), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(mask, labels, 0)[:, None], axis=-1)[:, 0]
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1), bad.sum()


def lm_loss(
    out: LMOutput, codes: jax.Array, *, text_weight: float = 1.0, audio_weights: tuple[float, ...] | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (text_weight * text CE + weighted mean of the per-codebook audio CEs, the parts)."""
    dep_q = out.audio_logits.shape[1]
    # Checked on the host (numpy): jnp ops on the weights would be traced under jit, and the check could not run.
    weights = np.asarray(audio_weights if audio_weights is not None else (1.0,) * dep_q, np.float32)
    if weights.shape != (dep_q,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"loss: audio_weights must be {dep_q} non-negative numbers with a positive sum, got {weights}")
    text, bad = _masked_ce(
        out.text_logits[:, 0].reshape(-1, out.text_logits.shape[-1]),
        codes[:, 0].reshape(-1),
        out.text_mask[:, 0].reshape(-1),
        "text",
    )
    audio_parts = []
    for k in range(dep_q):
        ce, bad_k = _masked_ce(
            out.audio_logits[:, k].reshape(-1, out.audio_logits.shape[-1]),
            codes[:, 1 + k].reshape(-1),
            out.audio_mask[:, k].reshape(-1),
            "audio",
        )
        audio_parts.append(ce)
        bad = bad + bad_k
    audio = jnp.stack(audio_parts)
    total = text_weight * text + (weights * audio).sum() / weights.sum()
    return total, {"text": text, "audio": audio, "out_of_range": bad}
