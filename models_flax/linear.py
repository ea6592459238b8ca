"""FlexibleLinear: one weight matrix per codebook, selected per position; and the plain Linear beside it. Either may
carry a LoRA adapter (`lora`, models_flax/training/lora.py) whose output adds to the layer's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models_flax.checks import check_dtype, check_input, require


def einsum(equation: str, a: jax.Array, b: jax.Array, *, precision: jax.lax.PrecisionLike) -> jax.Array:
    """einsum with float32 accumulation (as torch's bf16 matmul). XLA:CPU has no bf16 x bf16 -> f32 dot thunk, so on
    CPU the operands are upcast first: bf16 products are exact in float32, so the result is the same."""
    if jax.default_backend() == "cpu":
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(equation, a, b, precision=precision, preferred_element_type=jnp.float32)


def select_weights(kernel: jax.Array, seq_len: int, layer_idx: object) -> tuple[jax.Array, jax.Array | None]:
    """Returns the (S', in, out) kernels applied to the S positions of the input (S' == S, or S' == L when S == 1),
    and, for a traced layer_idx, which of the S' (or the one, for a 0-d index) selections were in range (else None).

    layer_idx modes:
        None: position i uses kernel[i]; S must equal num_layers.
        Python int or 0-d integer array: one kernel for all positions.
        1-D integer array of length S: position i uses kernel[idx[i]].
        1-D integer array of length L with S == 1: the one input goes through L matrices (L outputs).

    An index outside [0, L) is a ValueError when concrete; traced, a checkify check under `checked_jit` (see
    models_flax.checks), and the selections it makes are reported invalid, so that the caller outputs NaN.
    """
    num_layers = kernel.shape[0]
    if layer_idx is None:
        if seq_len != num_layers:
            raise ValueError(
                f"FlexibleLinear: layer_idx=None needs sequence length S == num_layers ({num_layers}), "
                f"got S={seq_len}; "
                "pass layer_idx to select weights explicitly"
            )
        return kernel, None
    if isinstance(layer_idx, bool) or not (isinstance(layer_idx, int) or hasattr(layer_idx, "dtype")):
        raise TypeError(f"FlexibleLinear: layer_idx must be None, an int or an integer array, got {layer_idx!r}")
    idx = jnp.asarray(layer_idx) if isinstance(layer_idx, jax.core.Tracer) else np.asarray(layer_idx)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"FlexibleLinear: layer_idx must be integer, got dtype {idx.dtype}")
    if idx.ndim > 1:
        raise ValueError(f"FlexibleLinear: layer_idx must be 0-d or 1-D, got shape {tuple(idx.shape)}")
    if idx.ndim == 1 and idx.shape[0] != seq_len and seq_len != 1:
        raise ValueError(
            f"FlexibleLinear: 1-D layer_idx of length {idx.shape[0]} needs S == {idx.shape[0]} or S == 1, "
            f"got S={seq_len}"
        )
    valid = None
    if idx.size:
        ok = (idx >= 0) & (idx < num_layers)
        require(
            ok, f"FlexibleLinear: layer_idx out of range [0, {num_layers}): min {{low}}, max {{high}}",
            low=idx.min(), high=idx.max(),
        )  # fmt: skip
        if isinstance(idx, jax.core.Tracer):
            valid, idx = ok, jnp.clip(idx, 0, num_layers - 1)  # the caller turns the invalid selections into NaN
    if idx.ndim == 0:
        return kernel[idx][None], valid
    return kernel[idx], valid


class FlexibleLinear(nnx.Module):
    """kernel (L, in, out), bias (L, out) only when `bias`; `__call__(x (B, S, in), *, layer_idx)` -> (B, S', out).
    A layer_idx out of range is a ValueError when concrete; traced, it raises under `checked_jit` and its outputs are
    NaN (not a clamped kernel's)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_layers: int,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        bias: bool = False,
        rngs: nnx.Rngs,
    ):
        self.in_features, self.out_features, self.num_layers = in_features, out_features, num_layers
        self.dtype = check_dtype("FlexibleLinear", dtype)
        self.precision = precision
        init = jax.random.normal(rngs.params(), (num_layers, in_features, out_features), jnp.float32)
        self.kernel = nnx.Param(init.astype(check_dtype("FlexibleLinear", param_dtype)))
        # kyutai's bias_proj heads: bias (L, out), selected with the kernel
        self.bias = nnx.Param(jnp.zeros((num_layers, out_features), param_dtype)) if bias else None
        self.lora: nnx.Module | None = nnx.data(None)  # models_flax.training.lora attaches one for LoRA fine-tuning

    def __call__(self, x: jax.Array, *, layer_idx: object = None) -> jax.Array:
        check_input("FlexibleLinear", x, rank=3, last=self.in_features, dtype=self.dtype)
        y = apply_kernels(x, self.kernel[...].astype(self.dtype), layer_idx, precision=self.precision)
        if self.bias is not None:  # (S' or 1, out), the selection the kernels made (NaN there already if invalid)
            y = y + select_weights(self.bias[...].astype(jnp.float32), x.shape[1], layer_idx)[0]
        if self.lora is not None:
            y = y + self.lora(x, layer_idx=layer_idx)
        return y.astype(self.dtype)


def apply_kernels(x: jax.Array, kernel: jax.Array, layer_idx: object, *, precision: jax.lax.PrecisionLike) -> jax.Array:
    """x (B, S, in) through the (L, in, out) kernels `layer_idx` selects (`select_weights`) -> (B, S', out), with
    float32 accumulation; NaN at a traced selection out of range."""
    w, valid = select_weights(kernel, x.shape[1], layer_idx)
    if w.shape[0] == 1:  # one kernel for every position (int / 0-d index, or num_layers == 1)
        y = einsum("bsi,io->bso", x, w[0], precision=precision)
    else:  # an S == 1 input broadcasts over the S' = L kernels
        x = jnp.broadcast_to(x, (x.shape[0], w.shape[0], x.shape[2]))
        y = einsum("bsi,sio->bso", x, w, precision=precision)
    if valid is not None:  # a traced index out of range: NaN, not the clamped kernel's output
        y = jnp.where(valid.reshape(1, -1, 1) if valid.ndim else valid, y, jnp.nan)
    return y


class Linear(nnx.Module):
    """Linear, kernel (in, out), bias (out,) only when `bias`; takes layer_idx only as None so callers treat both kinds
    alike."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        bias: bool = False,
        rngs: nnx.Rngs,
    ):
        self.in_features, self.out_features = in_features, out_features
        self.dtype = check_dtype("Linear", dtype)
        self.precision = precision
        scale = in_features**-0.5
        init = scale * jax.random.normal(rngs.params(), (in_features, out_features), jnp.float32)
        self.kernel = nnx.Param(init.astype(check_dtype("Linear", param_dtype)))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if bias else None  # kyutai's bias_proj
        self.lora: nnx.Module | None = nnx.data(None)  # models_flax.training.lora attaches one for LoRA fine-tuning

    def __call__(self, x: jax.Array, *, layer_idx: object = None) -> jax.Array:
        if layer_idx is not None:
            raise ValueError("Linear: layer_idx given to a layer with a single weight set (not flexible)")
        check_input("Linear", x, rank=max(x.ndim, 2), last=self.in_features, dtype=self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        y = einsum("...i,io->...o", x, kernel, precision=self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        if self.lora is not None:
            y = y + self.lora(x)
        return y.astype(self.dtype)


def make_linear(in_features: int, out_features: int, weight_sets: int, *, flexible: bool, **kwargs) -> nnx.Module:
    """A FlexibleLinear with weight_sets kernels when flexible, else a plain Linear."""
    if flexible:
        return FlexibleLinear(in_features, out_features, weight_sets, **kwargs)
    return Linear(in_features, out_features, **kwargs)
