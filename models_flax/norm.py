"""The norms of kyutai's `create_norm_fn`: RMSNorm (float32 math, or the input's dtype) and LayerNorm (weight and
bias, float32 math); `make_norm` picks one by a config's `norm` kind. The output keeps the input dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.checks import check_dtype, check_input
from moshi_spec import TransformerConfig


class RMSNorm(nnx.Module):
    """weight (D,); y = x / sqrt(mean(x^2) + eps) * weight.

    upcast=True (kyutai rms_norm_f32, HF): computed in float32, rounded once. upcast=False (kyutai rms_norm): computed
    in the input's dtype as kyutai writes it, x * (weight * rsqrt(eps + mean(x^2))), each op rounded.
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        upcast: bool = True,
    ):
        if eps < 0:
            raise ValueError(f"RMSNorm: eps must be >= 0, got {eps}")
        self.dim, self.eps, self.upcast = dim, eps, upcast
        self.dtype = check_dtype("RMSNorm", dtype)
        self.weight = nnx.Param(jnp.ones((dim,), check_dtype("RMSNorm", param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input("RMSNorm", x, rank=3, last=self.dim, dtype=self.dtype)
        if not self.upcast:
            var = self.eps + jnp.mean(jnp.square(x), axis=-1, keepdims=True)
            return x * (self.weight[...].astype(x.dtype) * jax.lax.rsqrt(var))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * self.weight[...].astype(jnp.float32)).astype(x.dtype)


class LayerNorm(nnx.Module):
    """weight (D,), bias (D,); y = (x - mean) / sqrt(var + eps) * weight + bias in float32, rounded once to x's dtype
    (what torch's nn.LayerNorm computes for bf16 tensors on CPU, up to one ulp in ~2e-5 of the elements). kyutai's
    layer_norm and layer_norm_f32 therefore differ only in eps."""

    def __init__(self, dim: int, *, eps: float, dtype: object = jnp.float32, param_dtype: object = jnp.float32):
        if eps < 0:
            raise ValueError(f"LayerNorm: eps must be >= 0, got {eps}")
        self.dim, self.eps = dim, eps
        self.dtype = check_dtype("LayerNorm", dtype)
        pdt = check_dtype("LayerNorm", param_dtype)
        self.weight = nnx.Param(jnp.ones((dim,), pdt))
        self.bias = nnx.Param(jnp.zeros((dim,), pdt))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input("LayerNorm", x, rank=3, last=self.dim, dtype=self.dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centered = x32 - mean
        var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
        y = centered * jax.lax.rsqrt(var + jnp.float32(self.eps))
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def make_norm(cfg: TransformerConfig, *, dtype: object = jnp.float32, param_dtype: object = jnp.float32):
    """The norm of cfg's kind (`cfg.norm`) over cfg.dim, with cfg.norm_eps."""
    if cfg.layer_norm:
        return LayerNorm(cfg.dim, eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)
    return RMSNorm(cfg.dim, eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype, upcast=cfg.norm_upcast)
