"""The MLPs of kyutai's layers: GatingMLP (fc1 -> (act(gate) * value) -> fc2; the first half of fc1's output is the
gate) and PlainMLP (fc1 -> act -> fc2: kyutai's gating="none"); `make_mlp` picks one by the config's `gated`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.activations import get_activation
from models_flax.linear import make_linear
from moshi_spec import TransformerConfig


class GatingMLP(nnx.Module):
    """fc1 (D, ffn_dim), fc2 (ffn_dim / 2, D) kernels; one kernel set per codebook when cfg.flexible."""

    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        self.activation_name = cfg.activation
        self.activation = get_activation(cfg.activation)
        self.hidden = cfg.hidden
        kw = dict(flexible=cfg.flexible, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.fc1 = make_linear(cfg.dim, cfg.ffn_dim, cfg.weight_sets, **kw)
        self.fc2 = make_linear(cfg.hidden, cfg.dim, cfg.weight_sets, **kw)

    def __call__(self, x: jax.Array, *, layer_idx: object = None) -> jax.Array:
        h = self.fc1(x, layer_idx=layer_idx)
        gate, value = h[..., : self.hidden], h[..., self.hidden :]
        # The activation is evaluated in float32 and rounded once, as torch does for bf16 tensors.
        gated = self.activation(gate.astype(jnp.float32)).astype(gate.dtype) * value
        return self.fc2(gated, layer_idx=layer_idx)


class PlainMLP(nnx.Module):
    """fc2(act(fc1(x))), no bias: fc1 kernel (D, ffn_dim), fc2 kernel (ffn_dim, D) (one kernel set per codebook when
    cfg.flexible); the activation (exact GELU for kyutai) in float32, rounded once."""

    def __init__(
        self,
        cfg: TransformerConfig,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        self.activation_name = cfg.activation
        self.activation = get_activation(cfg.activation)
        kw = dict(flexible=cfg.flexible, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.fc1 = make_linear(cfg.dim, cfg.ffn_dim, cfg.weight_sets, **kw)
        self.fc2 = make_linear(cfg.ffn_dim, cfg.dim, cfg.weight_sets, **kw)

    def __call__(self, x: jax.Array, *, layer_idx: object = None) -> jax.Array:
        h = self.fc1(x, layer_idx=layer_idx)
        return self.fc2(self.activation(h.astype(jnp.float32)).astype(h.dtype), layer_idx=layer_idx)


def make_mlp(cfg: TransformerConfig, **kwargs) -> nnx.Module:
    """cfg's MLP: GatingMLP when cfg.gated, else PlainMLP (kwargs: dtype, param_dtype, precision, rngs)."""
    return GatingMLP(cfg, **kwargs) if cfg.gated else PlainMLP(cfg, **kwargs)
