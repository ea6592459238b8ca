"""Causal 1-D convolutions of Mimi's SEANet and resampling (kyutai `StreamingConv1d`, `StreamingConvTranspose1d`).

Channels-first (B, C, T) activations, as kyutai. Parameter layouts (the converters' tables mirror them):
- `CausalConv1d.kernel`: (K, in / groups, out), lax.conv_general_dilated's "HIO" (torch Conv1d weight (out, in/groups,
  K) transposed (2, 1, 0));
- `CausalConvTranspose1d.kernel`: (K, in, out / groups) (torch ConvTranspose1d weight (in, out/groups, K) transposed
  (2, 0, 1));
- `bias`: (out,), as torch.

Both convolutions accumulate in float32 (`preferred_element_type`); on CPU bf16 operands are upcast first (XLA:CPU has
no bf16 x bf16 -> f32 convolution; bf16 products are exact in float32, so the result is the same). The output is
rounded once to the compute dtype after the bias is added in float32.

Streaming states are pytrees (`flax.struct` dataclasses) whose leaves all lead with the batch axis, updated
functionally: a step returns a new state and never mutates its input.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from models_flax.checks import check_dtype
from moshi_spec.mimi import PAD_MODES

DIMENSIONS = ("NCH", "HIO", "NCH")
"""lax dimension numbers: channels-first activations, (K, in/groups, out) kernels."""


def conv1d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """Unpadded ("valid") convolution of x (B, C, T) with kernel (K, C / groups, out) -> float32 (B, out, T').

    float32 accumulation; on CPU the operands are upcast first (as `models_flax.linear.einsum`)."""
    if jax.default_backend() == "cpu":
        x, kernel = x.astype(jnp.float32), kernel.astype(jnp.float32)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride,),
        padding="VALID",
        rhs_dilation=(dilation,),
        dimension_numbers=DIMENSIONS,
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=jnp.float32,
    )


def conv_transpose1d(
    x: jax.Array, kernel: jax.Array, *, stride: int, groups: int = 1, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
    """Full transposed convolution of x (B, in, T) with kernel (K, in, out / groups) -> float32 (B, out,
    (T - 1) * stride + K), without bias: y[:, o, t * stride + k] += x[:, i, t] * kernel[k, i, o] within each group.

    Computed in its polyphase form, one ordinary convolution with no zeros inserted: the K taps are zero-padded to
    M = ceil(K / stride) blocks of `stride` phases; output block j, phase r is sum_m x[j - m] @ kernel[m * stride + r],
    a stride-1 convolution of x (padded by M - 1 on both sides) with the blocks reversed and out * stride output
    channels (grouped as (group, out / groups, phase), so that `feature_group_count` keeps groups apart, depthwise
    included), whose phases are then interleaved in time. Same multiply-adds as the transposed convolution itself,
    none of the stride-fold zeros of the `lhs_dilation` form.
    """
    taps, cin, cout_g = kernel.shape
    blocks = math.ceil(taps / stride)
    cin_g = cin // groups
    w = jnp.pad(kernel, ((0, blocks * stride - taps), (0, 0), (0, 0)))
    w = w.reshape(blocks, stride, groups, cin_g, cout_g)[::-1]  # block m of the correlation is tap block M - 1 - m
    w = w.transpose(0, 3, 2, 4, 1).reshape(blocks, cin_g, groups * cout_g * stride)
    xp = jnp.pad(x, ((0, 0), (0, 0), (blocks - 1, blocks - 1)))
    y = conv1d(xp, w, groups=groups, precision=precision)  # (B, out * stride, T + M - 1)
    batch, _, steps = y.shape
    y = y.reshape(batch, groups * cout_g, stride, steps).transpose(0, 1, 3, 2).reshape(batch, groups * cout_g, -1)
    return y[..., : (x.shape[-1] - 1) * stride + taps]


def _init_kernel(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, param_dtype: jnp.dtype) -> nnx.Param:
    bound = 1.0 / math.sqrt(fan_in)  # torch's default conv init range
    return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound).astype(param_dtype))


def _check_positive(where: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")


def _check_activation(where: str, x: jax.Array, channels: int, dtype: jnp.dtype, stride: int) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{where}: expected an array (B, {channels}, T), got {type(x).__name__}")
    if x.ndim != 3 or x.shape[1] != channels:
        raise ValueError(f"{where}: expected (B, {channels}, T), got shape {tuple(x.shape)}")
    if jnp.dtype(x.dtype) != dtype:
        raise TypeError(f"{where}: input dtype {x.dtype} differs from the layer's dtype {dtype}; cast explicitly")
    length = x.shape[2]
    if length <= 0 or length % stride:
        raise ValueError(
            f"{where}: the time axis T={length} of {tuple(x.shape)} must be a positive multiple of the stride {stride}"
        )


def _check_state_batch(where: str, state_batch: int, batch: int) -> None:
    if state_batch != batch:
        raise ValueError(f"{where}: the state has batch {state_batch}, the input has batch {batch}")


@struct.dataclass
class ConvState:
    """A causal convolution's carry: `previous` (B, in, pad) last inputs (zeros at first), `first` (B,) bool: no
    input seen yet (a "replicate" convolution then pads with the first sample of the next input)."""

    previous: jax.Array
    first: jax.Array


@struct.dataclass
class ConvTrState:
    """A transposed convolution's carry: `partial` (B, out, K - stride), the overlap-add tail not yet output (bias
    excluded)."""

    partial: jax.Array


class CausalConv1d(nnx.Module):
    """Causal convolution: left padding (K - 1) * dilation + 1 - stride, zeros or copies of the first sample.

    Batch: (B, in, T) -> (B, out, T // stride), T a positive multiple of stride. Streaming: `step` over chunks
    (each a positive multiple of stride) concatenates to the batch output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        where = "CausalConv1d"
        _check_positive(
            where, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
            dilation=dilation, groups=groups,
        )  # fmt: skip
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{where}: groups {groups} must divide in_channels {in_channels} and out {out_channels}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"{where}: pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation, self.groups, self.pad_mode = stride, dilation, groups, pad_mode
        self.padding = (kernel_size - 1) * dilation + 1 - stride
        if self.padding < 0:
            raise ValueError(
                f"{where}: stride {stride} exceeds the effective kernel {(kernel_size - 1) * dilation + 1}: samples "
                "would be skipped"
            )
        self.dtype = check_dtype(where, dtype)
        self.precision = precision
        pdt = check_dtype(where, param_dtype)
        fan_in = in_channels // groups * kernel_size
        self.kernel = _init_kernel(rngs, (kernel_size, in_channels // groups, out_channels), fan_in, pdt)
        self.bias = _init_kernel(rngs, (out_channels,), fan_in, pdt) if bias else None

    def init_state(self, batch: int) -> ConvState:
        """A fresh carry: zeros (B, in, padding) and `first` True."""
        _check_positive("CausalConv1d.init_state", batch=batch)
        return ConvState(jnp.zeros((batch, self.in_channels, self.padding), self.dtype), jnp.ones((batch,), jnp.bool_))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, in, T) -> (B, out, T // stride)."""
        _check_activation("CausalConv1d", x, self.in_channels, self.dtype, self.stride)
        return self._run(x, self.init_state(x.shape[0]))[0]

    def step(self, x: jax.Array, state: ConvState) -> tuple[jax.Array, ConvState]:
        """One streaming chunk (B, in, T), T a positive multiple of stride -> ((B, out, T // stride), new state)."""
        _check_activation("CausalConv1d.step", x, self.in_channels, self.dtype, self.stride)
        _check_state_batch("CausalConv1d.step", state.previous.shape[0], x.shape[0])
        if tuple(state.previous.shape[1:]) != (self.in_channels, self.padding):
            raise ValueError(
                f"CausalConv1d.step: state previous {tuple(state.previous.shape)} does not fit (B, {self.in_channels}, "
                f"{self.padding})"
            )
        return self._run(x, state)

    def _run(self, x: jax.Array, state: ConvState) -> tuple[jax.Array, ConvState]:
        previous = state.previous
        if self.pad_mode == "replicate" and self.padding:
            first = jnp.broadcast_to(x[..., :1], previous.shape)
            previous = jnp.where(state.first[:, None, None], first, previous)
        xp = jnp.concatenate([previous, x], axis=-1) if self.padding else x
        y = conv1d(
            xp,
            self.kernel[...].astype(self.dtype),
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
            precision=self.precision,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype).astype(jnp.float32)[:, None]
        tail = xp[..., xp.shape[-1] - self.padding :]
        return y.astype(self.dtype), ConvState(tail, jnp.zeros_like(state.first))


class CausalConvTranspose1d(nnx.Module):
    """Causal transposed convolution: the full output ((T - 1) * stride + K) trimmed by K - stride on the right.

    Batch: (B, in, T) -> (B, out, T * stride). Streaming: `step` keeps the K - stride overlap-add tail, so that chunks
    concatenate to the batch output. Computed as a polyphase convolution (`conv_transpose1d`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        where = "CausalConvTranspose1d"
        _check_positive(
            where, in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
            groups=groups,
        )  # fmt: skip
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{where}: groups {groups} must divide in_channels {in_channels} and out {out_channels}")
        if kernel_size < stride:
            raise ValueError(f"{where}: kernel_size {kernel_size} < stride {stride} would leave output gaps")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.groups = stride, groups
        self.overlap = kernel_size - stride
        self.dtype = check_dtype(where, dtype)
        self.precision = precision
        pdt = check_dtype(where, param_dtype)
        fan_in = out_channels // groups * kernel_size  # torch's ConvTranspose1d fan_in (weight.size(1) * K)
        self.kernel = _init_kernel(rngs, (kernel_size, in_channels, out_channels // groups), fan_in, pdt)
        self.bias = _init_kernel(rngs, (out_channels,), fan_in, pdt) if bias else None

    def init_state(self, batch: int) -> ConvTrState:
        """A fresh carry: zeros (B, out, K - stride)."""
        _check_positive("CausalConvTranspose1d.init_state", batch=batch)
        return ConvTrState(jnp.zeros((batch, self.out_channels, self.overlap), self.dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, in, T) -> (B, out, T * stride)."""
        _check_activation("CausalConvTranspose1d", x, self.in_channels, self.dtype, 1)
        y = self._full(x)
        return y[..., : y.shape[-1] - self.overlap].astype(self.dtype)

    def step(self, x: jax.Array, state: ConvTrState) -> tuple[jax.Array, ConvTrState]:
        """One streaming chunk (B, in, T), T >= 1 -> ((B, out, T * stride), new state)."""
        _check_activation("CausalConvTranspose1d.step", x, self.in_channels, self.dtype, 1)
        _check_state_batch("CausalConvTranspose1d.step", state.partial.shape[0], x.shape[0])
        if tuple(state.partial.shape[1:]) != (self.out_channels, self.overlap):
            raise ValueError(
                f"CausalConvTranspose1d.step: state partial {tuple(state.partial.shape)} does not fit "
                f"(B, {self.out_channels}, {self.overlap})"
            )
        y = self._full(x).astype(self.dtype)  # rounded as the batch output is, before the carry is added
        if not self.overlap:
            return y, state
        y = y.at[..., : self.overlap].add(state.partial)
        tail = y[..., y.shape[-1] - self.overlap :]
        if self.bias is not None:
            tail = tail - self.bias[...].astype(self.dtype)[:, None]
        return y[..., : y.shape[-1] - self.overlap], ConvTrState(tail)

    def _full(self, x: jax.Array) -> jax.Array:
        """float32 (B, out, (T - 1) * stride + K), bias included."""
        y = conv_transpose1d(
            x, self.kernel[...].astype(self.dtype), stride=self.stride, groups=self.groups, precision=self.precision
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype).astype(jnp.float32)[:, None]
        return y
