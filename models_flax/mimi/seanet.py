"""SEANet encoder and decoder of Mimi (kyutai `SEANetEncoder`, `SEANetDecoder`, `SEANetResnetBlock`).

Causal convolutions with ELU(alpha=1) activations and identity ("true") skips, channels-first (B, C, T). The ELU is
evaluated in float32 and rounded once to the compute dtype, as torch does for bf16 tensors.

Streaming state: a dict per module holding its convolutions' states under their attribute names (lists for
`residuals` and `stages`), e.g. the encoder's {"input_conv": ConvState, "stages": [{"residuals": [{"conv1": ...,
"conv2": ...}], "downsample": ...}], "output_conv": ...}. `step(x, state) -> (y, new_state)` everywhere; the steps
of consecutive chunks concatenate to the batch output.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.checks import check_dtype
from models_flax.mimi.conv import CausalConv1d, CausalConvTranspose1d
from moshi_spec.mimi import SEANetConfig

State = dict[str, Any]


def elu(x: jax.Array) -> jax.Array:
    """ELU(alpha=1) in float32, rounded once to x's dtype."""
    return jax.nn.elu(x.astype(jnp.float32)).astype(x.dtype)


def _record(capture: dict[str, jax.Array] | None, name: str, value: jax.Array) -> None:
    if capture is not None:
        capture[name] = value


class ResnetBlock(nnx.Module):
    """x + conv2(elu(conv1(elu(x)))): conv1 (dim -> dim // compress, kernel_size, dilation), conv2 (-> dim, 1)."""

    def __init__(
        self,
        dim: int,
        *,
        kernel_size: int,
        dilation: int,
        compress: int,
        pad_mode: str,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        if dim % compress:
            raise ValueError(f"ResnetBlock: compress {compress} must divide dim {dim}")
        kw = dict(pad_mode=pad_mode, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        hidden = dim // compress
        self.conv1 = CausalConv1d(dim, hidden, kernel_size, dilation=dilation, **kw)
        self.conv2 = CausalConv1d(hidden, dim, 1, **kw)

    def init_state(self, batch: int) -> State:
        return {"conv1": self.conv1.init_state(batch), "conv2": self.conv2.init_state(batch)}

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv2(elu(self.conv1(elu(x))))

    def step(self, x: jax.Array, state: State) -> tuple[jax.Array, State]:
        h, conv1 = self.conv1.step(elu(x), state["conv1"])
        h, conv2 = self.conv2.step(elu(h), state["conv2"])
        return x + h, {"conv1": conv1, "conv2": conv2}


def _residuals(cfg: SEANetConfig, width: int, kw: dict) -> nnx.List:
    return nnx.List(
        [
            ResnetBlock(
                width,
                kernel_size=cfg.residual_kernel_size,
                dilation=cfg.dilation_base**j,
                compress=cfg.compress,
                pad_mode=cfg.pad_mode,
                **kw,
            )
            for j in range(cfg.n_residual_layers)
        ]
    )


class EncoderStage(nnx.Module):
    """residuals (ResnetBlock(width) each), elu, downsample = CausalConv1d(width, 2 width, 2 ratio, stride=ratio)."""

    def __init__(self, cfg: SEANetConfig, width: int, ratio: int, **kw: Any):
        self.residuals = _residuals(cfg, width, kw)
        self.downsample = CausalConv1d(width, 2 * width, 2 * ratio, stride=ratio, pad_mode=cfg.pad_mode, **kw)

    def init_state(self, batch: int) -> State:
        return {
            "residuals": [block.init_state(batch) for block in self.residuals],
            "downsample": self.downsample.init_state(batch),
        }

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.residuals:
            x = block(x)
        return self.downsample(elu(x))

    def step(self, x: jax.Array, state: State) -> tuple[jax.Array, State]:
        residuals = []
        for block, block_state in zip(self.residuals, state["residuals"], strict=True):
            x, block_state = block.step(x, block_state)
            residuals.append(block_state)
        x, downsample = self.downsample.step(elu(x), state["downsample"])
        return x, {"residuals": residuals, "downsample": downsample}


class DecoderStage(nnx.Module):
    """elu, upsample = CausalConvTranspose1d(width, width // 2, 2 ratio, stride=ratio), residuals (ResnetBlock(width
    // 2) each)."""

    def __init__(self, cfg: SEANetConfig, width: int, ratio: int, **kw: Any):
        self.upsample = CausalConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio, **kw)
        self.residuals = _residuals(cfg, width // 2, kw)

    def init_state(self, batch: int) -> State:
        return {
            "upsample": self.upsample.init_state(batch),
            "residuals": [block.init_state(batch) for block in self.residuals],
        }

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.upsample(elu(x))
        for block in self.residuals:
            x = block(x)
        return x

    def step(self, x: jax.Array, state: State) -> tuple[jax.Array, State]:
        x, upsample = self.upsample.step(elu(x), state["upsample"])
        residuals = []
        for block, block_state in zip(self.residuals, state["residuals"], strict=True):
            x, block_state = block.step(x, block_state)
            residuals.append(block_state)
        return x, {"upsample": upsample, "residuals": residuals}


class _SEANet(nnx.Module):
    """input_conv, stages, elu, output_conv: the structure encoder and decoder share."""

    input_conv: CausalConv1d
    stages: nnx.List
    output_conv: CausalConv1d

    def init_state(self, batch: int) -> State:
        return {
            "input_conv": self.input_conv.init_state(batch),
            "stages": [stage.init_state(batch) for stage in self.stages],
            "output_conv": self.output_conv.init_state(batch),
        }

    def __call__(self, x: jax.Array, *, capture: dict[str, jax.Array] | None = None) -> jax.Array:
        """(B, C_in, T) -> (B, C_out, T'); `capture`, a dict, receives "input_conv", "stages.{i}", "output_conv"."""
        x = self.input_conv(x)
        _record(capture, "input_conv", x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            _record(capture, f"stages.{i}", x)
        x = self.output_conv(elu(x))
        _record(capture, "output_conv", x)
        return x

    def step(self, x: jax.Array, state: State) -> tuple[jax.Array, State]:
        """One streaming chunk; the encoder takes a multiple of hop_length samples, the decoder any T >= 1."""
        x, input_conv = self.input_conv.step(x, state["input_conv"])
        stages = []
        for stage, stage_state in zip(self.stages, state["stages"], strict=True):
            x, stage_state = stage.step(x, stage_state)
            stages.append(stage_state)
        x, output_conv = self.output_conv.step(elu(x), state["output_conv"])
        return x, {"input_conv": input_conv, "stages": stages, "output_conv": output_conv}


class SEANetEncoder(_SEANet):
    """(B, channels, T) audio, T a multiple of hop_length -> (B, dimension, T // hop_length).

    input_conv (channels -> n_filters, kernel_size); stage i over reversed(ratios) at width n_filters * 2**i
    (EncoderStage, doubling the width); elu; output_conv (n_filters * 2**len(ratios) -> dimension, last_kernel_size).
    """

    def __init__(
        self,
        cfg: SEANetConfig,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        if not isinstance(cfg, SEANetConfig):
            raise TypeError(f"SEANetEncoder: expected a SEANetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dtype = check_dtype("SEANetEncoder", dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.input_conv = CausalConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size, pad_mode=cfg.pad_mode, **kw)
        self.stages = nnx.List(
            [EncoderStage(cfg, cfg.width(i), ratio, **kw) for i, ratio in enumerate(reversed(cfg.ratios))]
        )
        top = cfg.width(len(cfg.ratios))
        self.output_conv = CausalConv1d(top, cfg.dimension, cfg.last_kernel_size, pad_mode=cfg.pad_mode, **kw)


class SEANetDecoder(_SEANet):
    """(B, dimension, T) -> (B, channels, T * hop_length); no final activation.

    input_conv (dimension -> n_filters * 2**len(ratios), kernel_size); stage i over ratios (decoder order) at width
    n_filters * 2**(len(ratios) - i) (DecoderStage, halving the width); elu; output_conv (n_filters -> channels,
    last_kernel_size).
    """

    def __init__(
        self,
        cfg: SEANetConfig,
        *,
        dtype: object = jnp.float32,
        param_dtype: object = jnp.float32,
        precision: jax.lax.PrecisionLike = None,
        rngs: nnx.Rngs,
    ):
        if not isinstance(cfg, SEANetConfig):
            raise TypeError(f"SEANetDecoder: expected a SEANetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dtype = check_dtype("SEANetDecoder", dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        n = len(cfg.ratios)
        self.input_conv = CausalConv1d(cfg.dimension, cfg.width(n), cfg.kernel_size, pad_mode=cfg.pad_mode, **kw)
        self.stages = nnx.List([DecoderStage(cfg, cfg.width(n - i), ratio, **kw) for i, ratio in enumerate(cfg.ratios)])
        self.output_conv = CausalConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size, pad_mode=cfg.pad_mode, **kw)
