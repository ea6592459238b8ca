"""Token sampling with temperature and top-k, the rule of kyutai `moshi.utils.sampling.sample_token`.

kyutai: probs = softmax(logits / temperature); keep the top_k largest; draw one with the "exponential race"
argmax(probs / q), q ~ Exponential(1) i.i.d. (the same distribution as sampling the renormalized top-k probabilities);
temperature 0 is greedy argmax of the raw logits. `sample_with_noise` is that rule with the noise passed in, so a test
can feed it the exact exponentials torch drew and expect kyutai's token; `sample` draws the noise from a JAX key.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Sampler:
    """temperature 0: greedy (top_k ignored); top_k 0: the whole vocabulary (clipped to it, as kyutai does)."""

    temperature: float
    top_k: int

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise TypeError(f"Sampler: temperature must be a number, got {self.temperature!r}")
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ValueError(f"Sampler: temperature must be >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"Sampler: top_k must be an int >= 0, got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def candidates(self, vocab: int) -> int:
        """How many tokens compete: top_k clipped to the vocabulary (0: all of it)."""
        return vocab if self.top_k == 0 else min(self.top_k, vocab)


TEXT = Sampler(temperature=0.7, top_k=25)  # kyutai LMGen defaults (temp_text, top_k_text)
AUDIO = Sampler(temperature=0.8, top_k=250)  # kyutai LMGen defaults (temp, top_k)
GREEDY = Sampler(temperature=0.0, top_k=0)


def sample_with_noise(logits: jax.Array, noise: jax.Array, sampler: Sampler) -> jax.Array:
    """logits (..., V), noise (..., sampler.candidates(V)) positive -> int32 tokens (...).

    The noise is ignored when greedy (pass anything of the right shape, or use `sample`).
    """
    if sampler.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vocab = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32) / sampler.temperature, axis=-1)
    k = sampler.candidates(vocab)
    if noise.shape != (*logits.shape[:-1], k):
        raise ValueError(f"sample_with_noise: noise {tuple(noise.shape)} must be {(*logits.shape[:-1], k)}")
    if sampler.top_k == 0:  # kyutai races over the vocabulary in its own order (no sort): noise i is token i's
        return jnp.argmax(probs / noise, axis=-1).astype(jnp.int32)
    top, index = jax.lax.top_k(probs, k)  # kyutai races over the top k in descending order: noise j is the j-th best
    choice = jnp.argmax(top / noise, axis=-1)
    return jnp.take_along_axis(index, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


def sample(logits: jax.Array, key: jax.Array, sampler: Sampler) -> jax.Array:
    """logits (..., V) -> int32 tokens (...), drawing the exponential race noise from `key`."""
    if sampler.greedy:
        return sample_with_noise(logits, logits[..., :1], sampler)
    shape = (*logits.shape[:-1], sampler.candidates(logits.shape[-1]))
    return sample_with_noise(logits, jax.random.exponential(key, shape, jnp.float32), sampler)


__all__ = ["AUDIO", "GREEDY", "TEXT", "Sampler", "sample", "sample_with_noise"]
