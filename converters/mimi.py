"""The Mimi codec as component kinds of the engine, with its shapes in every format that has a `MimiSpelling`
(converters/formats.py: kyutai, hf, ref, flax).

Leaves (one edge table row set each): causal_conv1d, causal_conv_transpose1d, layer_norm (registered with the LM's
layers, converters/layers.py), layer_scale, mimi_attention, plain_mlp, vq_projection, codebook. Composites:
resnet_block, seanet_encoder, seanet_decoder, mimi_transformer_layer, mimi_transformer, residual_vq, split_residual_vq
and "mimi", the whole model (`whole`: a checkpoint with exact keys).
Part names are our module names (`stages.1.residuals.0`, `layers.3`, `codebooks.7`): a kyutai leaf is matched to its
ref / flax leaf by name, whatever its kyutai key.

kyutai's SEANet is an `nn.Sequential` with parameter-free ELU entries (HF's an `nn.ModuleList` with the same entries);
`seanet_modules` is the one place that computes both our names and their indices from the config.

Configs (opaque to the engine; each kind reads only the attributes it names): `Conv` for a convolution, `ResnetDims`
for a residual block, `ProjectionDims`, `CodebookDims` and `VQDims` for the quantizer's parts (all defined here);
moshi_spec's `SEANetConfig` for seanet_encoder / seanet_decoder, `TransformerConfig` for the transformer kinds
(layer_norm, layer_scale, mimi_attention and plain_mlp included), `MimiConfig` for split_residual_vq and "mimi".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from converters.accounting import Shape
from converters.layers import linear
from converters.registry import Component, Part, register_component

CONV = "causal_conv1d"
CONV_TR = "causal_conv_transpose1d"
RESNET = "resnet_block"


@dataclass(frozen=True)
class Conv:
    """A causal (transposed) convolution's shape-relevant settings (stride and dilation change no shape)."""

    cin: int
    cout: int
    kernel: int
    groups: int = 1
    bias: bool = True


@dataclass(frozen=True)
class ResnetDims:
    """A SEANet residual block: dim -> dim // compress (kernel `kernel`) -> dim (kernel 1)."""

    dim: int
    hidden: int
    kernel: int


@dataclass(frozen=True)
class ProjectionDims:
    """A residual VQ's projection without bias: `inp` -> `out` channels."""

    inp: int
    out: int


@dataclass(frozen=True)
class CodebookDims:
    bins: int
    dim: int


@dataclass(frozen=True)
class VQDims:
    """A residual VQ: input_dim -> dim projections around n_q codebooks of `bins` entries."""

    input_dim: int
    dim: int
    bins: int
    n_q: int


def _conv(fmt: Any, cfg: Conv) -> dict[str, Shape] | None:
    if not fmt.mimi:
        return None
    per_group = cfg.cin // cfg.groups
    weight = (cfg.kernel, per_group, cfg.cout) if fmt.transposed else (cfg.cout, per_group, cfg.kernel)
    bias = {f"{fmt.mimi.conv}bias": (cfg.cout,)} if cfg.bias else {}
    return {f"{fmt.mimi.conv}{fmt.kernel}": weight} | bias


def _conv_transpose(fmt: Any, cfg: Conv) -> dict[str, Shape] | None:
    if not fmt.mimi:
        return None
    per_group = cfg.cout // cfg.groups
    weight = (cfg.kernel, cfg.cin, per_group) if fmt.transposed else (cfg.cin, per_group, cfg.kernel)
    bias = {f"{fmt.mimi.convtr}bias": (cfg.cout,)} if cfg.bias else {}
    return {f"{fmt.mimi.convtr}{fmt.kernel}": weight} | bias


def _resnet_parts(fmt: Any, cfg: ResnetDims) -> list[Part] | None:
    if not fmt.mimi:
        return None
    conv1, conv2 = fmt.mimi.resnet
    return [
        Part("conv1", conv1, CONV, Conv(cfg.dim, cfg.hidden, cfg.kernel)),
        Part("conv2", conv2, CONV, Conv(cfg.hidden, cfg.dim, 1)),
    ]


def seanet_modules(s: Any, side: str) -> list[tuple[str, int, str, Conv | ResnetDims]]:
    """SEANet's modules with weights, in order: (our name, kyutai's `model.{i}` index, kind, config).

    kyutai's Sequential is [input conv] + one run of R + 2 entries per stage + [ELU, output conv], R the residual
    blocks per stage: an encoder stage is [R residual blocks, ELU, downsampling conv], a decoder stage [ELU,
    upsampling transposed conv, R residual blocks]. Reads s.channels, .dimension, .n_filters, .n_residual_layers,
    .ratios (decoder order; the encoder runs them reversed), .kernel_size, .residual_kernel_size, .last_kernel_size,
    .compress and s.width(stage).
    """
    R, n = s.n_residual_layers, len(s.ratios)

    def stage_start(i: int) -> int:
        return 1 + i * (R + 2)

    def residuals(i: int, width: int, first: int) -> list[tuple[str, int, str, Conv | ResnetDims]]:
        block = ResnetDims(width, width // s.compress, s.residual_kernel_size)
        return [(f"stages.{i}.residuals.{j}", first + j, RESNET, block) for j in range(R)]

    last = stage_start(n) + 1  # after the last stage's run: ELU, then the output conv
    modules: list[tuple[str, int, str, Conv | ResnetDims]]
    if side == "encoder":
        modules = [("input_conv", 0, CONV, Conv(s.channels, s.n_filters, s.kernel_size))]
        for i, ratio in enumerate(reversed(s.ratios)):
            w = s.width(i)
            modules += residuals(i, w, stage_start(i))
            modules.append((f"stages.{i}.downsample", stage_start(i) + R + 1, CONV, Conv(w, 2 * w, 2 * ratio)))
        modules.append(("output_conv", last, CONV, Conv(s.width(n), s.dimension, s.last_kernel_size)))
    elif side == "decoder":
        modules = [("input_conv", 0, CONV, Conv(s.dimension, s.width(n), s.kernel_size))]
        for i, ratio in enumerate(s.ratios):
            w = s.width(n - i)
            modules.append((f"stages.{i}.upsample", stage_start(i) + 1, CONV_TR, Conv(w, w // 2, 2 * ratio)))
            modules += residuals(i, w // 2, stage_start(i) + 2)
        modules.append(("output_conv", last, CONV, Conv(s.n_filters, s.channels, s.last_kernel_size)))
    else:
        raise ValueError(f"seanet_modules: side must be 'encoder' or 'decoder', got {side!r}")
    return modules


def _seanet_parts(side: str):
    def parts(fmt: Any, cfg: Any) -> list[Part] | None:
        if not fmt.mimi:
            return None
        return [
            Part(name, f"{fmt.mimi.sequential}{index}." if fmt.mimi.sequential else f"{name}.", kind, sub)
            for name, index, kind, sub in seanet_modules(cfg, side)
        ]

    return parts


def _layer_scale(fmt: Any, cfg: Any) -> dict[str, Shape] | None:
    return {"scale": (cfg.dim,)} if fmt.mimi else None


def _attention(fmt: Any, cfg: Any) -> dict[str, Shape] | None:
    """One weight set, no bias. Reads cfg.dim, .q_dim, .kv_dim."""
    if not fmt.mimi:
        return None
    D, Q, KV = cfg.dim, cfg.q_dim, cfg.kv_dim
    if fmt.mimi.fused:
        fused_in, fused_out = fmt.mimi.fused
        return {f"{fused_in}{fmt.kernel}": linear(fmt, Q + 2 * KV, D), f"{fused_out}{fmt.kernel}": linear(fmt, D, Q)}
    dims = {"q": (Q, D), "k": (KV, D), "v": (KV, D), "o": (D, Q)}
    return {f"{fmt.mimi.proj.format(n=n)}{fmt.kernel}": linear(fmt, *d) for n, d in dims.items()}


def _plain_mlp(fmt: Any, cfg: Any) -> dict[str, Shape] | None:
    """Relative to the MLP module (kyutai: the layer). Reads cfg.dim, .ffn_dim."""
    if not fmt.mimi:
        return None
    fc1, fc2 = fmt.mimi.linears
    return {
        f"{fc1}{fmt.kernel}": linear(fmt, cfg.ffn_dim, cfg.dim),
        f"{fc2}{fmt.kernel}": linear(fmt, cfg.dim, cfg.ffn_dim),
    }


LAYER_PARTS = (
    ("norm1", "layer_norm"),
    ("self_attn", "mimi_attention"),
    ("layer_scale_1", "layer_scale"),
    ("norm2", "layer_norm"),
    ("mlp", "plain_mlp"),
    ("layer_scale_2", "layer_scale"),
)
"""A Mimi transformer layer's parts: (name, kind); each format's prefix is its `MimiSpelling.children[name]`."""


def _layer_parts(fmt: Any, cfg: Any) -> list[Part] | None:
    if not fmt.mimi:
        return None
    return [Part(name, fmt.mimi.children[name], kind, cfg) for name, kind in LAYER_PARTS]


def _transformer_parts(fmt: Any, cfg: Any) -> list[Part] | None:
    """Reads cfg.num_layers."""
    if not fmt.mimi:
        return None
    return [Part(f"layers.{i}", f"{fmt.mimi.layers}{i}.", "mimi_transformer_layer", cfg) for i in range(cfg.num_layers)]


def _projection(fmt: Any, cfg: ProjectionDims) -> dict[str, Shape] | None:
    if not fmt.mimi:
        return None
    shape = (cfg.out, cfg.inp, 1) if fmt.mimi.conv_projections else linear(fmt, cfg.out, cfg.inp)
    return {fmt.kernel: shape}


def _codebook(fmt: Any, cfg: CodebookDims) -> dict[str, Shape] | None:
    if not fmt.mimi:
        return None
    flag = {fmt.mimi.initialized: (1,)} if fmt.mimi.initialized else {}
    return flag | {"cluster_usage": (cfg.bins,), fmt.mimi.embedding_sum: (cfg.bins, cfg.dim)}


def _residual_vq_parts(fmt: Any, cfg: VQDims) -> list[Part] | None:
    if not fmt.mimi:
        return None
    return [
        Part("input_proj", "input_proj.", "vq_projection", ProjectionDims(cfg.input_dim, cfg.dim)),
        Part("output_proj", "output_proj.", "vq_projection", ProjectionDims(cfg.dim, cfg.input_dim)),
        *(
            Part(f"codebooks.{k}", fmt.mimi.codebook.format(k=k), "codebook", CodebookDims(cfg.bins, cfg.dim))
            for k in range(cfg.n_q)
        ),
    ]


def _split_vq_parts(fmt: Any, cfg: Any) -> list[Part] | None:
    """Reads cfg.dim, .codebook_dim, .bins, .n_q_semantic, .n_q_acoustic."""
    if not fmt.mimi:
        return None
    counts: Mapping[str, int] = {"semantic": cfg.n_q_semantic, "acoustic": cfg.n_q_acoustic}
    return [
        Part(name, fmt.mimi.quantizer[name], "residual_vq", VQDims(cfg.dim, cfg.codebook_dim, cfg.bins, n))
        for name, n in counts.items()
    ]


def _mimi_parts(fmt: Any, cfg: Any) -> list[Part] | None:
    """Reads cfg.seanet, .transformer, .dim, .resample_stride and what the quantizer reads."""
    if not fmt.mimi:
        return None
    D, K = cfg.dim, 2 * cfg.resample_stride
    parts = (
        ("encoder", "seanet_encoder", cfg.seanet),
        ("encoder_transformer", "mimi_transformer", cfg.transformer),
        ("downsample", CONV, Conv(D, D, K, bias=False)),
        ("quantizer", "split_residual_vq", cfg),
        ("upsample", CONV_TR, Conv(D, D, K, groups=D, bias=False)),
        ("decoder_transformer", "mimi_transformer", cfg.transformer),
        ("decoder", "seanet_decoder", cfg.seanet),
    )
    return [Part(name, fmt.mimi.top[name], kind, sub) for name, kind, sub in parts]


MIMI_LEAVES = (CONV, CONV_TR, "layer_norm", "layer_scale", "mimi_attention", "plain_mlp", "vq_projection", "codebook")
MIMI_COMPOSITES = (
    RESNET,
    "seanet_encoder",
    "seanet_decoder",
    "mimi_transformer_layer",
    "mimi_transformer",
    "residual_vq",
    "split_residual_vq",
    "mimi",
)

register_component(Component(name=CONV, shapes=_conv))
register_component(Component(name=CONV_TR, shapes=_conv_transpose))
register_component(Component(name="layer_scale", shapes=_layer_scale))
register_component(Component(name="mimi_attention", shapes=_attention))
register_component(Component(name="plain_mlp", shapes=_plain_mlp))
register_component(Component(name="vq_projection", shapes=_projection))
register_component(Component(name="codebook", shapes=_codebook))
register_component(Component(name=RESNET, parts=_resnet_parts, uses=(CONV,)))
register_component(Component(name="seanet_encoder", parts=_seanet_parts("encoder"), uses=(CONV, RESNET)))
register_component(Component(name="seanet_decoder", parts=_seanet_parts("decoder"), uses=(CONV, CONV_TR, RESNET)))
register_component(
    Component(
        name="mimi_transformer_layer",
        parts=_layer_parts,
        uses=("layer_norm", "mimi_attention", "layer_scale", "plain_mlp"),
    )
)
register_component(Component(name="mimi_transformer", parts=_transformer_parts, uses=("mimi_transformer_layer",)))
register_component(Component(name="residual_vq", parts=_residual_vq_parts, uses=("vq_projection", "codebook")))
register_component(Component(name="split_residual_vq", parts=_split_vq_parts, uses=("residual_vq",)))
register_component(
    Component(
        name="mimi",
        parts=_mimi_parts,
        uses=("seanet_encoder", "mimi_transformer", CONV, "split_residual_vq", CONV_TR, "seanet_decoder"),
        whole=True,
    )
)
