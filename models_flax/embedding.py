"""Token embedding whose id -1 (kyutai's zero token) embeds to an exact zero vector, optionally through a layer norm
(kyutai's `norm_emb`) or demuxing two streams muxed in one id (kyutai's `demux_second_stream`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.checks import check_dtype, check_ids, check_int_array
from models_flax.linear import Linear
from models_flax.norm import LayerNorm
from moshi_spec import NORM_EPS, ZERO_TOKEN

EMB_NORM_EPS = NORM_EPS["layer_norm"]
"""kyutai's norm_emb is always a `layer_norm` (ScaledEmbedding: create_norm_fn("layer_norm", dim))."""


class Embedding(nnx.Module):
    """weight (V, D); ids in [0, V) or ZERO_TOKEN. Any other id is a ValueError when the ids are concrete and embeds to
    NaN when they are traced: never clamped to a row of the table. (Traced ids are checked with checkify where they
    enter the model, e.g. `LM.check_codes`, which names them; not again per table.)

    norm=True (kyutai's norm_emb): each row goes through `norm`, a LayerNorm (eps 1e-5, kyutai's layer_norm), before
    the zero token is zeroed.

    demux=True (kyutai's demux_second_stream): an id is `(second + 1) * V + first`, ids in [0, V * (V + 1)); it
    embeds to out1(weight[first]) + out2(weight[second]), the second term 0 when second is -1 (kyutai's ScaledEmbedding:
    the same table, two bias-free linears (width, D)). No norm with it (kyutai asserts). With low_rank too, the out
    linears map r -> D and `low_rank` is unused (kyutai creates it and applies it only without demux).

    low_rank=r (kyutai's depformer_low_rank_embeddings): weight (V, r), the norm (if any) of width r, and after the
    zeroing a bias-free linear `low_rank` (kernel (r, D)) up to D, as kyutai's ScaledEmbedding orders them."""

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        norm: bool = False,
        demux: bool = False,
        low_rank: int | None = None,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        if demux and norm:
            raise ValueError("Embedding: demux has no norm (kyutai's ScaledEmbedding asserts not norm)")
        self.num_embeddings = num_embeddings
        self.dtype = check_dtype("Embedding", dtype)
        width = dim if low_rank is None else low_rank
        init = jax.random.normal(rngs.params(), (num_embeddings, width), jnp.float32)
        self.weight = nnx.Param(init.astype(check_dtype("Embedding", param_dtype)))
        self.norm = LayerNorm(width, eps=EMB_NORM_EPS, dtype=dtype, param_dtype=param_dtype) if norm else None
        self.demux = demux
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        if demux:
            self.out1, self.out2 = Linear(width, dim, **kw), Linear(width, dim, **kw)
        self.low_rank = None if low_rank is None else Linear(low_rank, dim, **kw)

    @property
    def vocab(self) -> int:
        """How many ids the embedding takes (besides ZERO_TOKEN): the rows, or every muxed pair with demux."""
        v = self.num_embeddings
        return v * (v + 1) if self.demux else v

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids (...) integers -> (..., D) embeddings in the layer's dtype."""
        check_int_array("Embedding", "ids", ids, "(...)")
        ids = check_ids("Embedding", "ids", ids, vocab=self.vocab, traced_check=False)
        if self.demux:
            return self._demuxed(ids)
        rows = self.weight[...].astype(self.dtype)[jnp.maximum(ids, 0)]
        if self.norm is not None:  # LayerNorm takes (B, T, D)
            rows = self.norm(rows.reshape(-1, 1, rows.shape[-1])).reshape(rows.shape)
        fill = jnp.where(ids == ZERO_TOKEN, 0.0, jnp.nan).astype(self.dtype)
        rows = jnp.where((ids >= 0)[..., None], rows, fill[..., None])
        return rows if self.low_rank is None else self.low_rank(rows)

    def _demuxed(self, ids: jax.Array) -> jax.Array:
        table, v = self.weight[...].astype(self.dtype), self.num_embeddings
        first, second = jnp.maximum(ids, 0) % v, jnp.maximum(ids, 0) // v - 1
        y = self.out1(table[first]) + jnp.where((second < 0)[..., None], 0.0, self.out2(table[jnp.maximum(second, 0)]))
        fill = jnp.where(ids == ZERO_TOKEN, 0.0, jnp.nan).astype(self.dtype)
        return jnp.where((ids >= 0)[..., None], y.astype(self.dtype), fill[..., None])
