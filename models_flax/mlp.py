"""GatingMLP: fc1 -> (act(gate) * value) -> fc2; the first half of fc1's output is the gate."""

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
