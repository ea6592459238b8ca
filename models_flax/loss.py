"""Training loss of the LM, kyutai's fine-tuning recipe: text + audio cross entropy, each a weighted mean over its
stream's valid positions normalised by the sum of its weights (the weights: moshi_spec/loss.py).

Invalid positions (the delay pattern's tail, zero tokens) are excluded through the output's masks; a label outside its
vocabulary at a valid position is an error when the labels are concrete; under jit such labels are masked out and
counted in the returned `out_of_range`, which a training loop must check (never silently dropped). Logits of any dtype
are read in float32. The weights are Python numbers, checked on the host (under jit too).
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp

from models_flax.checks import concrete
from models_flax.lm import LMOutput
from moshi_spec.loss import LossWeights


def _cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, name: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(..., C) logits, (...) labels and mask -> ((...) float32 negative log-likelihood at the scored positions, 0
    elsewhere; the scored positions: the mask less out-of-range labels; the number of those labels)."""
    vocab = logits.shape[-1]
    bad = mask & ((labels < 0) | (labels >= vocab))
    value = concrete(bad)
    if value is not None and value.any():
        raise ValueError(f"loss: {int(value.sum())} {name} label(s) outside [0, {vocab}) at valid positions")
    mask = mask & ~bad
    logp = jax.nn.log_softmax(jnp.where(mask[..., None], logits.astype(jnp.float32), 0.0), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(mask, nll, 0.0), mask, bad.sum()


def _text_weights(
    mask: jax.Array, labels: jax.Array, *, padding_ids: tuple[int, ...], padding_weight: float
) -> jax.Array:
    """(B, 1, T) float32: padding_weight where the label is a padding id, 1 elsewhere, 0 outside the mask."""
    padding = jnp.isin(labels, jnp.asarray(padding_ids, labels.dtype))
    return jnp.where(mask, jnp.where(padding, jnp.float32(padding_weight), jnp.float32(1.0)), jnp.float32(0.0))


def _audio_weights(mask: jax.Array, codebook_weights: tuple[float, ...]) -> jax.Array:
    """(B, K, T) float32: codebook k's weight at its valid positions, 0 elsewhere."""
    return jnp.where(mask, jnp.asarray(codebook_weights, jnp.float32)[:, None], jnp.float32(0.0))


def _weighted_mean(nll: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(weights * nll) / sum(weights); 0 when the weights sum to 0 (nothing to score)."""
    total = weights.sum()
    return jnp.where(total > 0, (weights * nll).sum() / jnp.where(total > 0, total, 1.0), 0.0)


def lm_loss(
    out: LMOutput,
    codes: jax.Array,
    *,
    text_weight: float = 1.0,
    audio_weights: tuple[float, ...] | None = None,
    first_codebook_weight_multiplier: float = 1.0,
    text_padding_weight: float = 1.0,
    text_padding_ids: Iterable[int] = (),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of an LM output against codes (B, 1 + n_q, T), text first (the labels: usually the codes the
    output was computed from); the arguments are `moshi_spec.loss.LossWeights`' (defaults: plain cross entropy).

    Returns:
        (text_weight * text + audio, parts): parts "text" and "audio" (the two weighted means), "audio_per_codebook"
        (dep_q,) (each codebook's unweighted mean, for monitoring) and "out_of_range" (labels outside their vocabulary
        at valid positions, masked out: nonzero only under jit, where they cannot raise).

    Raises:
        ValueError: a bad weight (naming it and its value) or, for concrete labels, a label outside its vocabulary at a
            valid position.
    """
    weights = LossWeights(
        text_weight=text_weight,
        audio_weights=audio_weights,
        first_codebook_weight_multiplier=first_codebook_weight_multiplier,
        text_padding_weight=text_padding_weight,
        text_padding_ids=text_padding_ids,
    )
    dep_q = out.audio_logits.shape[1]
    codebook_weights = weights.codebook_weights(dep_q)
    padding_ids = weights.padding_ids(out.text_logits.shape[-1])
    text_labels, audio_labels = codes[:, :1], codes[:, 1 : 1 + dep_q]
    text_nll, text_mask, text_bad = _cross_entropy(out.text_logits, text_labels, out.text_mask, "text")
    audio_nll, audio_mask, audio_bad = _cross_entropy(out.audio_logits, audio_labels, out.audio_mask, "audio")
    padding_weight = weights.text_padding_weight
    text_w = _text_weights(text_mask, text_labels, padding_ids=padding_ids, padding_weight=padding_weight)
    text = _weighted_mean(text_nll, text_w)
    audio = _weighted_mean(audio_nll, _audio_weights(audio_mask, codebook_weights))
    counts = audio_mask.astype(jnp.float32)
    per_codebook = jnp.stack([_weighted_mean(audio_nll[:, k], counts[:, k]) for k in range(dep_q)])
    total = weights.text_weight * text + audio
    parts = {"text": text, "audio": audio, "audio_per_codebook": per_codebook, "out_of_range": text_bad + audio_bad}
    return total, parts
