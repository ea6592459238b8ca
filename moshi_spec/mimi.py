"""Config dataclasses for the Mimi codec (kyutai `MimiModel`): SEANet convolutions, two transformers, split RVQ.

Field names follow kyutai's `loaders._mimi_config` (`seanet`, `transformer`, `quantizer` kwargs). Audio at
`sample_rate` goes through SEANet's strided convolutions (`hop_length` samples per encoder step), a transformer, a
learnt stride-`resample_stride` downsample to `frame_rate`, and a split residual vector quantizer: `n_q_semantic`
semantic codebooks and `n_q - n_q_semantic` acoustic ones, both quantizing the same latent.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from moshi_spec.config import TransformerConfig
from moshi_spec.validation import Checker

PAD_MODES = ("constant", "replicate")
"""How SEANet's causal convolutions pad on the left: zeros, or copies of the first sample."""


@dataclass(frozen=True, kw_only=True)
class SEANetConfig:
    """SEANet encoder and decoder (kyutai `SEANetEncoder` / `SEANetDecoder` with ELU(1) and true skips).

    Attributes:
        channels: audio channels (>= 1).
        dimension: latent width D the encoder outputs and the decoder takes (>= 1).
        n_filters: width after the first convolution; doubles at every stage (>= 1).
        n_residual_layers: residual blocks per stage, block j with dilation dilation_base**j (>= 1).
        ratios: strides in decoder order (the encoder applies them reversed); each >= 1, at least one.
        kernel_size: first convolution's kernel (>= 1).
        residual_kernel_size: residual blocks' first kernel (>= 1; the second is 1).
        last_kernel_size: last convolution's kernel (>= 1).
        dilation_base: dilation growth across residual blocks (>= 1).
        compress: residual branches' width divisor (>= 1, divides n_filters).
        pad_mode: one of PAD_MODES.
    """

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    pad_mode: str = "constant"

    def __post_init__(self) -> None:
        c = Checker(self)
        for name in (
            "channels",
            "dimension",
            "n_filters",
            "n_residual_layers",
            "kernel_size",
            "residual_kernel_size",
            "last_kernel_size",
            "dilation_base",
            "compress",
        ):
            c.integer(name)
        c.integers("ratios", minimum=1)
        c.choice("pad_mode", PAD_MODES)
        if c.valid("ratios"):
            c.require("ratios", len(self.ratios) >= 1, "ratios must hold at least one stride, got ()")
        if c.valid("n_filters", "compress"):
            c.require(
                "compress",
                self.n_filters % self.compress == 0,
                f"compress {self.compress} must divide n_filters {self.n_filters} (residual branch widths)",
            )
        c.raise_if_any()

    @property
    def hop_length(self) -> int:
        """Audio samples per encoder step: the product of the ratios."""
        return math.prod(self.ratios)

    def width(self, stage: int) -> int:
        """Channels entering encoder stage `stage` (0 = after the first convolution)."""
        return self.n_filters * 2**stage

    def replace(self, **changes: Any) -> SEANetConfig:
        return dataclasses.replace(self, **changes)


def _mimi_transformer(dim: int) -> TransformerConfig:
    return TransformerConfig(
        dim=dim,
        num_heads=8,
        num_layers=8,
        ffn_dim=2048,
        activation="gelu",
        norm_eps=1e-5,
        rope_layout="interleaved",
        rope_theta=10_000.0,
        context=250,
    )


@dataclass(frozen=True, kw_only=True)
class MimiConfig:
    """The Mimi codec. Checked at construction (every problem listed together in a ConfigError).

    Attributes:
        sample_rate: audio samples per second (>= 1).
        frame_rate: code frames per second; sample_rate / frame_rate must be a whole number of samples, a whole
            multiple of seanet.hop_length.
        seanet: the convolutional encoder and decoder.
        transformer: both transformers (kyutai builds two from one config): dim == seanet.dimension, a plain
            FFN of width ffn_dim with the activation (gelu), LayerNorm with eps norm_eps, interleaved rope with
            base rope_theta, causal attention over `context` steps.
        layer_scale: LayerScale's initial value (the scales are learnt weights); > 0.
        codebook_dim: the quantizer's codebook width (>= 1).
        bins: entries per codebook (>= 1).
        n_q: codebooks in all (semantic + acoustic), > n_q_semantic.
        n_q_semantic: semantic codebooks (>= 1).
        num_codebooks: codebooks `encode` emits; n_q_semantic <= num_codebooks <= n_q.
        codebook_eps: clamp of the cluster usage a centroid is divided by (>= 0).
    """

    sample_rate: int = 24_000
    frame_rate: float = 12.5
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    transformer: TransformerConfig = field(default_factory=lambda: _mimi_transformer(512))
    layer_scale: float = 0.01
    codebook_dim: int = 256
    bins: int = 2048
    n_q: int = 32
    n_q_semantic: int = 1
    num_codebooks: int = 8
    codebook_eps: float = 1e-5

    def __post_init__(self) -> None:
        c = Checker(self)
        if not isinstance(c.value("seanet"), SEANetConfig):
            c.wrong_type("seanet", "a SEANetConfig")
        if not isinstance(c.value("transformer"), TransformerConfig):
            c.wrong_type("transformer", "a TransformerConfig")
        for name in ("sample_rate", "codebook_dim", "bins", "n_q", "n_q_semantic", "num_codebooks"):
            c.integer(name)
        c.real("frame_rate", above=0.0)
        c.real("layer_scale", above=0.0)
        c.real("codebook_eps", at_least=0.0)
        if c.valid("n_q", "n_q_semantic"):
            c.require(
                "n_q",
                self.n_q > self.n_q_semantic,
                f"n_q {self.n_q} must exceed n_q_semantic {self.n_q_semantic} (at least one acoustic codebook)",
            )
        if c.valid("n_q", "n_q_semantic", "num_codebooks"):
            c.require(
                "num_codebooks",
                self.n_q_semantic <= self.num_codebooks <= self.n_q,
                f"num_codebooks {self.num_codebooks} must lie in [n_q_semantic {self.n_q_semantic}, n_q {self.n_q}]",
            )
        if c.valid("seanet", "transformer"):
            t = self.transformer
            c.require(
                "transformer.dim",
                t.dim == self.seanet.dimension,
                f"transformer.dim {t.dim} must equal seanet.dimension {self.seanet.dimension} (kyutai's projections "
                "are identities)",
            )
            c.require("transformer.flexible", not t.flexible, "transformer.flexible must be False")
            c.require(
                "transformer.rope_layout",
                t.rope and t.rope_layout == "interleaved",
                f"Mimi's transformers use interleaved rope, got rope={t.rope} rope_layout={t.rope_layout!r}",
            )
        if c.valid("sample_rate", "frame_rate", "seanet"):
            frame = self.sample_rate / self.frame_rate
            hop = self.seanet.hop_length
            c.require(
                "frame_rate",
                frame == int(frame) and int(frame) % hop == 0,
                f"sample_rate / frame_rate = {frame:g} samples per frame must be a whole multiple of "
                f"seanet.hop_length {hop}",
            )
        c.raise_if_any()

    @property
    def hop_length(self) -> int:
        return self.seanet.hop_length

    @property
    def frame_size(self) -> int:
        """Audio samples per code frame (1920 for Mimi)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def resample_stride(self) -> int:
        """Encoder steps per code frame: the down/upsampling stride (2 for Mimi)."""
        return self.frame_size // self.hop_length

    @property
    def dim(self) -> int:
        return self.seanet.dimension

    @property
    def n_q_acoustic(self) -> int:
        return self.n_q - self.n_q_semantic

    def replace(self, **changes: Any) -> MimiConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def mimi(cls) -> MimiConfig:
        """kyutai's released Mimi (`loaders._mimi_config`), 8 codebooks active as Moshi uses it."""
        return cls()

    @classmethod
    def tiny(cls) -> MimiConfig:
        """A few-thousand-parameter Mimi for tests: same structure, 16 samples a frame."""
        return cls(
            sample_rate=1600,
            frame_rate=100.0,
            seanet=SEANetConfig(dimension=16, n_filters=4, ratios=(4, 2)),
            transformer=TransformerConfig(
                dim=16,
                num_heads=2,
                num_layers=2,
                ffn_dim=32,
                activation="gelu",
                norm_eps=1e-5,
                rope_layout="interleaved",
                context=6,
            ),
            codebook_dim=8,
            bins=16,
            n_q=4,
            num_codebooks=4,
        )

    @classmethod
    def preset(cls, name: str) -> MimiConfig:
        presets = {"tiny": cls.tiny, "mimi": cls.mimi}
        if name not in presets:
            raise ValueError(f"unknown Mimi preset {name!r}; known: {sorted(presets)}")
        return presets[name]()

    def stage_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(encode stages, decode stages) in computation order: what `encode(..., capture=True)` and
        `decode(..., capture=True)` of models_ref.mimi / models_flax.mimi return, and what the harness compares. SEANet
        and resampling outputs are (B, C, T), transformer layer outputs (B, T, D); "latent" is the unquantized latent
        (B, D, frames) (the downsample's output), "quantizer.decode" the dequantized one."""
        stages, layers = range(len(self.seanet.ratios)), range(self.transformer.num_layers)
        encode = (
            "encoder.input_conv",
            *(f"encoder.stages.{i}" for i in stages),
            "encoder.output_conv",
            *(f"encoder_transformer.layers.{i}" for i in layers),
            "latent",
        )
        decode = (
            "quantizer.decode",
            "upsample",
            *(f"decoder_transformer.layers.{i}" for i in layers),
            "decoder.input_conv",
            *(f"decoder.stages.{i}" for i in stages),
            "decoder.output_conv",
        )
        return encode, decode

    def num_params(self) -> dict[str, int]:
        """{"learnt": ..., "codebooks": ...}: kyutai's counts (its `_initialized` flags counted with the codebooks)."""
        s, t = self.seanet, self.transformer

        def conv(cin: int, cout: int, k: int, bias: bool = True, groups: int = 1) -> int:
            return cout * (cin // groups) * k + (cout if bias else 0)

        def block(w: int) -> int:
            hidden = w // s.compress
            return conv(w, hidden, s.residual_kernel_size) + conv(hidden, w, 1)

        seanet = 0
        for side in ("encoder", "decoder"):
            top = s.width(len(s.ratios))
            ends = conv(s.channels, s.n_filters, s.kernel_size) + conv(top, s.dimension, s.last_kernel_size)
            if side == "decoder":
                ends = conv(s.dimension, top, s.kernel_size) + conv(s.n_filters, s.channels, s.last_kernel_size)
            for i, ratio in enumerate(reversed(s.ratios)):
                w = s.width(i)  # encoder: conv w -> 2w; decoder: transposed conv 2w -> w (bias of width w)
                resample = conv(w, 2 * w, 2 * ratio) if side == "encoder" else conv(2 * w, w, 2 * ratio)
                seanet += s.n_residual_layers * block(w) + resample
            seanet += ends
        layer = 4 * t.dim * t.dim + 2 * t.dim * t.ffn_dim + 6 * t.dim
        stride, d = self.resample_stride, self.dim
        resample = conv(d, d, 2 * stride, bias=False) + conv(d, d, 2 * stride, bias=False, groups=d)
        projections = 2 * 2 * d * self.codebook_dim
        learnt = seanet + 2 * t.num_layers * layer + resample + projections
        return {"learnt": learnt, "codebooks": self.n_q * (self.bins * (self.codebook_dim + 1) + 1)}
