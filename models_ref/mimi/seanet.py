"""SEANet convolutional encoder and decoder (kyutai `SEANetEncoder` / `SEANetDecoder`: causal convolutions, ELU(1)
activations, residual blocks with identity skips, no normalisation, no final activation).

Channels-first (B, C, T) throughout. Each module has a batch `forward` and a streaming `step(x, state)`; streaming
states are dicts (lists for repeated children) holding every convolution's ConvState / ConvTrState under the
convolution's attribute name, so the structure mirrors the state_dict's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models_ref.mimi.conv import CausalConv1d, CausalConvTranspose1d
from moshi_spec import SEANetConfig

SEANetState = dict[str, Any]
"""A SEANet module's streaming state: {child name: ConvState | ConvTrState | SEANetState | list[SEANetState]}."""


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU with alpha 1 (kyutai's nn.ELU(alpha=1.0)), in the input's dtype."""
    return F.elu(x, alpha=1.0)


class ResnetBlock(nn.Module):
    """x + conv2(elu(conv1(elu(x)))); conv1: dim -> dim // compress (kernel_size, dilation); conv2: to dim, kernel 1."""

    def __init__(
        self,
        dim: int,
        *,
        kernel_size: int,
        dilation: int,
        compress: int,
        pad_mode: str,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if dim % compress:
            raise ValueError(f"ResnetBlock: compress {compress} must divide dim {dim}")
        hidden = dim // compress
        self.conv1 = CausalConv1d(dim, hidden, kernel_size, dilation=dilation, pad_mode=pad_mode, dtype=dtype)
        self.conv2 = CausalConv1d(hidden, dim, 1, pad_mode=pad_mode, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(elu(self.conv1(elu(x))))

    def init_state(self, batch: int) -> SEANetState:
        return {"conv1": self.conv1.init_state(batch), "conv2": self.conv2.init_state(batch)}

    def step(self, x: torch.Tensor, state: SEANetState) -> tuple[torch.Tensor, SEANetState]:
        h, conv1 = self.conv1.step(elu(x), state["conv1"])
        h, conv2 = self.conv2.step(elu(h), state["conv2"])
        return x + h, {"conv1": conv1, "conv2": conv2}


def _residuals(cfg: SEANetConfig, width: int, dtype: torch.dtype) -> nn.ModuleList:
    return nn.ModuleList(
        [
            ResnetBlock(
                width,
                kernel_size=cfg.residual_kernel_size,
                dilation=cfg.dilation_base**j,
                compress=cfg.compress,
                pad_mode=cfg.pad_mode,
                dtype=dtype,
            )
            for j in range(cfg.n_residual_layers)
        ]
    )


def _step_residuals(
    blocks: nn.ModuleList, x: torch.Tensor, states: list[SEANetState]
) -> tuple[torch.Tensor, list[SEANetState]]:
    new_states = []
    for block, block_state in zip(blocks, states, strict=True):
        x, block_state = block.step(x, block_state)
        new_states.append(block_state)
    return x, new_states


class EncoderStage(nn.Module):
    """Residual blocks at width w, then elu and a strided downsample w -> 2w (kernel 2 * ratio, stride ratio)."""

    def __init__(self, cfg: SEANetConfig, width: int, ratio: int, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.residuals = _residuals(cfg, width, dtype)
        self.downsample = CausalConv1d(width, 2 * width, 2 * ratio, stride=ratio, pad_mode=cfg.pad_mode, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.residuals:
            x = block(x)
        return self.downsample(elu(x))

    def init_state(self, batch: int) -> SEANetState:
        return {
            "residuals": [block.init_state(batch) for block in self.residuals],
            "downsample": self.downsample.init_state(batch),
        }

    def step(self, x: torch.Tensor, state: SEANetState) -> tuple[torch.Tensor, SEANetState]:
        x, residuals = _step_residuals(self.residuals, x, state["residuals"])
        y, downsample = self.downsample.step(elu(x), state["downsample"])
        return y, {"residuals": residuals, "downsample": downsample}


class DecoderStage(nn.Module):
    """elu and a transposed upsample w -> w // 2 (kernel 2 * ratio, stride ratio), then residual blocks at w // 2."""

    def __init__(self, cfg: SEANetConfig, width: int, ratio: int, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.upsample = CausalConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio, dtype=dtype)
        self.residuals = _residuals(cfg, width // 2, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(elu(x))
        for block in self.residuals:
            x = block(x)
        return x

    def init_state(self, batch: int) -> SEANetState:
        return {
            "upsample": self.upsample.init_state(batch),
            "residuals": [block.init_state(batch) for block in self.residuals],
        }

    def step(self, x: torch.Tensor, state: SEANetState) -> tuple[torch.Tensor, SEANetState]:
        x, upsample = self.upsample.step(elu(x), state["upsample"])
        x, residuals = _step_residuals(self.residuals, x, state["residuals"])
        return x, {"upsample": upsample, "residuals": residuals}


class _SEANet(nn.Module):
    """input_conv, stages, elu, output_conv: the structure encoder and decoder share."""

    input_conv: CausalConv1d
    stages: nn.ModuleList
    output_conv: CausalConv1d

    def forward(self, x: torch.Tensor, *, capture: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, C_in, T) -> (B, C_out, T'); `capture`, a dict, receives "input_conv", "stages.{i}", "output_conv"."""
        x = self.input_conv(x)
        _record(capture, "input_conv", x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            _record(capture, f"stages.{i}", x)
        x = self.output_conv(elu(x))
        _record(capture, "output_conv", x)
        return x

    def init_state(self, batch: int) -> SEANetState:
        return {
            "input_conv": self.input_conv.init_state(batch),
            "stages": [stage.init_state(batch) for stage in self.stages],
            "output_conv": self.output_conv.init_state(batch),
        }

    def step(self, x: torch.Tensor, state: SEANetState) -> tuple[torch.Tensor, SEANetState]:
        """One streaming chunk; the encoder takes a multiple of hop_length samples, the decoder any T >= 1."""
        x, input_conv = self.input_conv.step(x, state["input_conv"])
        stages = []
        for stage, stage_state in zip(self.stages, state["stages"], strict=True):
            x, stage_state = stage.step(x, stage_state)
            stages.append(stage_state)
        x, output_conv = self.output_conv.step(elu(x), state["output_conv"])
        return x, {"input_conv": input_conv, "stages": stages, "output_conv": output_conv}


def _record(capture: dict[str, torch.Tensor] | None, name: str, value: torch.Tensor) -> None:
    if capture is not None:
        capture[name] = value


class SEANetEncoder(_SEANet):
    """Audio (B, channels, T) -> latent (B, dimension, T // hop_length), T a positive multiple of hop_length.

    input_conv (channels -> n_filters, kernel_size); stages over reversed(ratios), stage i at width n_filters * 2**i;
    elu; output_conv (n_filters * 2**len(ratios) -> dimension, last_kernel_size).
    """

    def __init__(self, cfg: SEANetConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(cfg, SEANetConfig):
            raise TypeError(f"SEANetEncoder: cfg must be a SEANetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.input_conv = CausalConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size, pad_mode=cfg.pad_mode, dtype=dtype)
        self.stages = nn.ModuleList(
            [EncoderStage(cfg, cfg.width(i), ratio, dtype=dtype) for i, ratio in enumerate(reversed(cfg.ratios))]
        )
        self.output_conv = CausalConv1d(
            cfg.width(len(cfg.ratios)), cfg.dimension, cfg.last_kernel_size, pad_mode=cfg.pad_mode, dtype=dtype
        )


class SEANetDecoder(_SEANet):
    """Latent (B, dimension, T) -> audio (B, channels, T * hop_length).

    input_conv (dimension -> n_filters * 2**len(ratios), kernel_size); stages over ratios (decoder order), stage i at
    input width n_filters * 2**(len(ratios) - i); elu; output_conv (n_filters -> channels, last_kernel_size).
    """

    def __init__(self, cfg: SEANetConfig, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(cfg, SEANetConfig):
            raise TypeError(f"SEANetDecoder: cfg must be a SEANetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        n = len(cfg.ratios)
        self.input_conv = CausalConv1d(cfg.dimension, cfg.width(n), cfg.kernel_size, pad_mode=cfg.pad_mode, dtype=dtype)
        self.stages = nn.ModuleList(
            [DecoderStage(cfg, cfg.width(n - i), ratio, dtype=dtype) for i, ratio in enumerate(cfg.ratios)]
        )
        self.output_conv = CausalConv1d(
            cfg.n_filters, cfg.channels, cfg.last_kernel_size, pad_mode=cfg.pad_mode, dtype=dtype
        )
