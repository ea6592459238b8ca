"""Causal 1-D convolutions over channels-first (B, C, T) audio features, in batch and streaming form (kyutai
`StreamingConv1d` / `StreamingConvTranspose1d` with causal=True, norm="none").

A causal convolution pads on the left only, so that output step t sees input steps <= t * stride + stride - 1; its
streaming form keeps the last `pad` input samples between calls. A causal transposed convolution trims K - stride
samples on the right; its streaming form carries them (without the bias) into the next call. Batch forward equals the
concatenated streaming steps for any split of the input into whole strides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from models_ref.checks import check_dtype
from moshi_spec import PAD_MODES


@dataclass(frozen=True)
class ConvState:
    """Streaming state of a CausalConv1d.

    Attributes:
        previous: (B, in_channels, pad) the last `pad` input samples seen (zeros at the start).
        first: (B,) bool, True until the row has been stepped once (replicate padding then copies its first sample).
    """

    previous: torch.Tensor
    first: torch.Tensor


@dataclass(frozen=True)
class ConvTrState:
    """Streaming state of a CausalConvTranspose1d.

    Attributes:
        partial: (B, out_channels, K - stride) the overlap of the last call's output with the next one's, bias removed.
    """

    partial: torch.Tensor


def _check_channels_first(where: str, x: object, channels: int, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor (B, {channels}, T), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[1] != channels:
        raise ValueError(f"{where}: expected (B, {channels}, T), got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{where}: input dtype {x.dtype} differs from the layer's dtype {dtype}; cast explicitly")
    return x


def _check_batch(where: str, x: torch.Tensor, batch: int) -> None:
    if x.shape[0] != batch:
        raise ValueError(f"{where}: input batch {x.shape[0]} (shape {tuple(x.shape)}) differs from the state's {batch}")


def _check_sizes(where: str, **sizes: int) -> None:
    """Every size an int >= 1, and `groups` dividing both channel counts."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
    groups, cin, cout = sizes["groups"], sizes["in_channels"], sizes["out_channels"]
    if cin % groups or cout % groups:
        raise ValueError(f"{where}: groups {groups} must divide in_channels {cin} and out_channels {cout}")


class CausalConv1d(nn.Module):
    """Left-padded 1-D convolution: (B, in, T) -> (B, out, T // stride), T a positive multiple of stride.

    Parameters:
        weight: (out_channels, in_channels / groups, kernel_size), torch Conv1d layout (flax `kernel` is
            (kernel_size, in_channels / groups, out_channels)).
        bias: (out_channels,), absent when bias=False.

    The input is padded on the left by pad = (kernel_size - 1) * dilation + 1 - stride samples: zeros
    (pad_mode "constant") or copies of the first sample (pad_mode "replicate"); never on the right.
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
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        check_dtype("CausalConv1d", dtype)
        if pad_mode not in PAD_MODES:
            raise ValueError(f"CausalConv1d: unknown pad_mode {pad_mode!r}; known: {PAD_MODES}")
        _check_sizes("CausalConv1d", in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                     stride=stride, dilation=dilation, groups=groups)  # fmt: skip
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.dilation, self.groups, self.pad_mode = stride, dilation, groups, pad_mode
        self.pad = (kernel_size - 1) * dilation + 1 - stride
        if self.pad < 0:
            raise ValueError(
                f"CausalConv1d: stride {stride} exceeds the effective kernel (kernel_size {kernel_size} - 1) * "
                f"dilation {dilation} + 1 (input samples would be skipped)"
            )
        fan_in = in_channels // groups * kernel_size
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels // groups, kernel_size, dtype=dtype) / math.sqrt(fan_in)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype)) if bias else None

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, stride=self.stride, dilation=self.dilation, groups=self.groups)

    def _check_length(self, where: str, x: torch.Tensor) -> None:
        length = x.shape[-1]
        if length <= 0 or length % self.stride:
            raise ValueError(
                f"{where}: T = {length} (input shape {tuple(x.shape)}) must be a positive multiple of the stride "
                f"{self.stride}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, T), T > 0 and T % stride == 0 -> (B, out_channels, T // stride)."""
        _check_channels_first("CausalConv1d", x, self.in_channels, self.weight.dtype)
        self._check_length("CausalConv1d", x)
        if self.pad_mode == "replicate":
            left = x[..., :1].expand(-1, -1, self.pad)
        else:
            left = x.new_zeros(x.shape[0], x.shape[1], self.pad)
        return self._conv(torch.cat([left, x], dim=-1))

    def init_state(self, batch: int) -> ConvState:
        """A fresh stream: `previous` zeros (B, in_channels, pad), `first` all True."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"CausalConv1d: batch must be an int >= 1, got {batch!r}")
        previous = torch.zeros(batch, self.in_channels, self.pad, dtype=self.weight.dtype)
        return ConvState(previous, torch.ones(batch, dtype=torch.bool))

    def step(self, x: torch.Tensor, state: ConvState) -> tuple[torch.Tensor, ConvState]:
        """x (B, in_channels, T), T a positive multiple of stride -> (y (B, out_channels, T // stride), new state)."""
        _check_channels_first("CausalConv1d.step", x, self.in_channels, self.weight.dtype)
        self._check_length("CausalConv1d.step", x)
        _check_batch("CausalConv1d.step", x, state.first.shape[0])
        previous = state.previous
        if self.pad_mode == "replicate":
            previous = torch.where(state.first[:, None, None], x[..., :1].expand_as(previous), previous)
        full = torch.cat([previous, x], dim=-1)
        new_previous = full[..., full.shape[-1] - self.pad :]
        return self._conv(full), ConvState(new_previous, torch.zeros_like(state.first))


class CausalConvTranspose1d(nn.Module):
    """Transposed 1-D convolution trimmed on the right: (B, in, T) -> (B, out, T * stride).

    Parameters:
        weight: (in_channels, out_channels / groups, kernel_size), torch ConvTranspose1d layout (flax `kernel` is
            (kernel_size, in_channels, out_channels / groups)).
        bias: (out_channels,), absent when bias=False.

    The full transposed convolution has (T - 1) * stride + kernel_size samples; the last kernel_size - stride are
    dropped (they overlap the next input step, which the streaming form carries over).
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
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        check_dtype("CausalConvTranspose1d", dtype)
        _check_sizes("CausalConvTranspose1d", in_channels=in_channels, out_channels=out_channels,
                     kernel_size=kernel_size, stride=stride, groups=groups)  # fmt: skip
        if stride > kernel_size:
            raise ValueError(
                f"CausalConvTranspose1d: stride {stride} exceeds kernel_size {kernel_size} (gaps in the output)"
            )
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.groups = stride, groups
        self.trim = kernel_size - stride
        self.weight = nn.Parameter(
            torch.randn(in_channels, out_channels // groups, kernel_size, dtype=dtype) / math.sqrt(in_channels)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype)) if bias else None

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.weight, self.bias, stride=self.stride, groups=self.groups)

    def _check_length(self, where: str, x: torch.Tensor) -> None:
        if x.shape[-1] <= 0:
            raise ValueError(f"{where}: T must be positive, got input shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, T), T > 0 -> (B, out_channels, T * stride)."""
        _check_channels_first("CausalConvTranspose1d", x, self.in_channels, self.weight.dtype)
        self._check_length("CausalConvTranspose1d", x)
        y = self._full(x)
        return y[..., : y.shape[-1] - self.trim]

    def init_state(self, batch: int) -> ConvTrState:
        """A fresh stream: `partial` zeros (B, out_channels, kernel_size - stride)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"CausalConvTranspose1d: batch must be an int >= 1, got {batch!r}")
        return ConvTrState(torch.zeros(batch, self.out_channels, self.trim, dtype=self.weight.dtype))

    def step(self, x: torch.Tensor, state: ConvTrState) -> tuple[torch.Tensor, ConvTrState]:
        """x (B, in_channels, T), T > 0 -> (y (B, out_channels, T * stride), new state)."""
        _check_channels_first("CausalConvTranspose1d.step", x, self.in_channels, self.weight.dtype)
        self._check_length("CausalConvTranspose1d.step", x)
        _check_batch("CausalConvTranspose1d.step", x, state.partial.shape[0])
        y = self._full(x)
        if self.trim == 0:
            return y, state
        y = torch.cat([y[..., : self.trim] + state.partial, y[..., self.trim :]], dim=-1)
        tail = y[..., y.shape[-1] - self.trim :]
        if self.bias is not None:
            tail = tail - self.bias[:, None]
        return y[..., : y.shape[-1] - self.trim], ConvTrState(tail)
