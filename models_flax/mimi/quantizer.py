"""Mimi's split residual vector quantizer (kyutai `SplitResidualVectorQuantizer`, `ResidualVectorQuantizer`,
`EuclideanCodebook`), inference only: codebooks are `nnx.Param`s read as weights, never updated.

Codebook arithmetic is float32 whatever the compute dtype: centroids (embedding_sum / clamp(cluster_usage, eps)),
distances, the residual loop and the sum of decoded centroids. The projections are `models_flax.linear.Linear`
(kernel (in, out); kyutai's 1x1 Conv1d weight (out, in, 1)) in the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models_flax.checks import check_dtype, concrete, require
from models_flax.linear import Linear, einsum
from moshi_spec.mimi import MimiConfig


def check_codes(where: str, codes: object, *, bins: int) -> jax.Array:
    """codes must be an integer jax/numpy array of rank 3 (B, K, T); values in [0, bins) are checked when concrete
    (a ValueError naming the first bad one) and, traced, by a checkify check under `checked_jit` (otherwise their
    decoded rows are NaN, never a clamped centroid). Returns the codes as a jax int32 array."""
    if not isinstance(codes, jax.Array | np.ndarray):
        raise TypeError(f"{where}: codes must be a jax or numpy integer array (B, K, T), got {type(codes).__name__}")
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"{where}: codes must be integers, got {codes.dtype} of shape {tuple(codes.shape)}")
    if codes.ndim != 3:
        raise ValueError(f"{where}: codes must be (B, K, T), got shape {tuple(codes.shape)}")
    value = concrete(codes)
    if value is not None:
        bad = (value < 0) | (value >= bins)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{where}: codes must be in [0, {bins}); got {int(value[index])} at index {index} ({int(bad.sum())} "
                f"out of range) in codes of shape {value.shape}"
            )
        return jnp.asarray(value, jnp.int32)
    ok = (codes >= 0) & (codes < bins)
    require(
        ok, f"{where}: codes must be in [0, {bins}); got min {{low}}, max {{high}}", low=codes.min(), high=codes.max()
    )
    return codes.astype(jnp.int32)


class Codebook(nnx.Module):
    """embedding_sum (bins, dim), cluster_usage (bins,): centroids embedding_sum / clamp(cluster_usage, eps)."""

    def __init__(
        self,
        dim: int,
        bins: int,
        *,
        eps: float,
        param_dtype: object = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if eps < 0:
            raise ValueError(f"Codebook: eps must be >= 0, got {eps}")
        self.dim, self.bins, self.eps = dim, bins, eps
        pdt = check_dtype("Codebook", param_dtype)
        self.embedding_sum = nnx.Param(jax.random.normal(rngs.params(), (bins, dim), jnp.float32).astype(pdt))
        self.cluster_usage = nnx.Param(jnp.ones((bins,), pdt))

    def embedding(self) -> jax.Array:
        """(bins, dim) float32 centroids."""
        usage = jnp.maximum(self.cluster_usage[...].astype(jnp.float32), jnp.float32(self.eps))
        return self.embedding_sum[...].astype(jnp.float32) / usage[:, None]

    def distances(self, x: jax.Array) -> jax.Array:
        """x (N, dim) -> (N, bins) float32 euclidean distances, as kyutai's torch.cdist computes them for N or bins >
        25 (always so at Mimi's 2048 bins): sqrt(clamp(|x|^2 - 2 x.e + |e|^2, 0)), the dot at HIGHEST precision."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"Codebook: expected (N, {self.dim}), got shape {tuple(x.shape)}")
        x = x.astype(jnp.float32)
        e = self.embedding()
        dots = einsum("nd,kd->nk", x, e, precision=jax.lax.Precision.HIGHEST)
        squared = jnp.sum(jnp.square(x), axis=1, keepdims=True) - 2 * dots + jnp.sum(jnp.square(e), axis=1)[None]
        return jnp.sqrt(jnp.maximum(squared, 0.0))

    def encode(self, x: jax.Array) -> jax.Array:
        """x (N, dim) -> (N,) int32: the nearest centroid, the first one on ties."""
        return jnp.argmin(self.distances(x), axis=1).astype(jnp.int32)

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes (...) int -> (..., dim) float32 centroids; a code outside [0, bins) gives a NaN row."""
        ok = (codes >= 0) & (codes < self.bins)
        rows = jnp.take(self.embedding(), jnp.clip(codes, 0, self.bins - 1), axis=0)
        return jnp.where(ok[..., None], rows, jnp.nan)


class ResidualVQ(nnx.Module):
    """input_proj (input_dim -> dim), codebooks (n_q Codebook), output_proj (dim -> input_dim); no bias.

    encode(x (B, input_dim, T), n) -> (B, n, T): each of the first n codebooks quantizes the residual the previous
    ones left. decode(codes (B, k, T)) -> (B, input_dim, T): output_proj of the sum of the k centroids.
    """

    def __init__(
        self,
        input_dim: int,
        dim: int,
        bins: int,
        n_q: int,
        *,
        eps: float,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        self.input_dim, self.dim, self.bins, self.n_q = input_dim, dim, bins, n_q
        self.dtype = check_dtype("ResidualVQ", dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.input_proj = Linear(input_dim, dim, **kw)
        self.output_proj = Linear(dim, input_dim, **kw)
        self.codebooks = nnx.List(
            [Codebook(dim, bins, eps=eps, param_dtype=param_dtype, rngs=rngs) for _ in range(n_q)]
        )

    def encode(self, x: jax.Array, n: int | None = None) -> jax.Array:
        n = self.n_q if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.n_q:
            raise ValueError(f"ResidualVQ.encode: n must be an int in [0, {self.n_q}], got {n!r}")
        if x.ndim != 3 or x.shape[1] != self.input_dim:
            raise ValueError(f"ResidualVQ.encode: expected (B, {self.input_dim}, T), got shape {tuple(x.shape)}")
        batch, _, length = x.shape
        residual = self.input_proj(x.transpose(0, 2, 1)).astype(jnp.float32).reshape(batch * length, self.dim)
        codes = []
        for codebook in self.codebooks[:n]:
            c = codebook.encode(residual)
            residual = residual - codebook.decode(c)
            codes.append(c.reshape(batch, length))
        if not codes:
            return jnp.zeros((batch, 0, length), jnp.int32)
        return jnp.stack(codes, axis=1)

    def decode(self, codes: jax.Array) -> jax.Array:
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= self.n_q:
            raise ValueError(f"ResidualVQ.decode: expected codes (B, 1..{self.n_q}, T), got shape {codes.shape}")
        total = None
        for k in range(codes.shape[1]):
            rows = self.codebooks[k].decode(codes[:, k])  # (B, T, dim)
            total = rows if total is None else total + rows
        return self.output_proj(total.astype(self.dtype)).transpose(0, 2, 1)


class SplitResidualVQ(nnx.Module):
    """semantic = ResidualVQ(n_q_semantic), acoustic = ResidualVQ(n_q - n_q_semantic), both on the same latent.

    encode(x, num_codebooks) = cat(semantic codes, acoustic codes of num_codebooks - n_q_semantic codebooks);
    decode(codes (B, K, T)) = semantic.decode(codes[:, :n_sem]) + acoustic.decode(codes[:, n_sem:]) (when K > n_sem).
    """

    def __init__(
        self,
        cfg: MimiConfig,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.dtype = check_dtype("SplitResidualVQ", dtype)
        kw = dict(eps=cfg.codebook_eps, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.semantic = ResidualVQ(cfg.dim, cfg.codebook_dim, cfg.bins, cfg.n_q_semantic, **kw)
        self.acoustic = ResidualVQ(cfg.dim, cfg.codebook_dim, cfg.bins, cfg.n_q_acoustic, **kw)

    def check_num_codebooks(self, where: str, num_codebooks: int | None) -> int:
        cfg = self.cfg
        k = cfg.num_codebooks if num_codebooks is None else num_codebooks
        if isinstance(k, bool) or not isinstance(k, int) or not cfg.n_q_semantic <= k <= cfg.n_q:
            raise ValueError(
                f"{where}: num_codebooks must be an int in [n_q_semantic {cfg.n_q_semantic}, n_q {cfg.n_q}], got {k!r}"
            )
        return k

    def encode(self, x: jax.Array, num_codebooks: int | None = None) -> jax.Array:
        """x (B, D, T) -> codes (B, num_codebooks, T) int32 (default cfg.num_codebooks)."""
        k = self.check_num_codebooks("SplitResidualVQ.encode", num_codebooks)
        n_sem = self.cfg.n_q_semantic
        codes = self.semantic.encode(x, n_sem)
        if k > n_sem:
            codes = jnp.concatenate([codes, self.acoustic.encode(x, k - n_sem)], axis=1)
        return codes

    def decode(self, codes: jax.Array) -> jax.Array:
        """codes (B, K, T), n_q_semantic <= K <= n_q -> (B, D, T) in the compute dtype."""
        cfg = self.cfg
        codes = check_codes("SplitResidualVQ.decode", codes, bins=cfg.bins)
        if not cfg.n_q_semantic <= codes.shape[1] <= cfg.n_q:
            raise ValueError(
                f"SplitResidualVQ.decode: codes (B, K, T) need n_q_semantic {cfg.n_q_semantic} <= K <= n_q {cfg.n_q}, "
                f"got shape {tuple(codes.shape)}"
            )
        n_sem = cfg.n_q_semantic
        out = self.semantic.decode(codes[:, :n_sem])
        if codes.shape[1] > n_sem:
            out = out + self.acoustic.decode(codes[:, n_sem:])
        return out
