"""Moshi's layer component kinds: flexible_linear, rmsnorm, layer_norm, gating_mlp, attention (leaves) and
decoder_layer (their composite, whose norms are rmsnorm or layer_norm by the config's `norm` kind), with their shapes
in any format built from the format's descriptor (converters/formats.py) alone.

Axis names: D dim, Q q_dim (heads x head_dim), KV kv_dim, F ffn_dim, Hd hidden (= F/2), W weight sets (num_codebooks
when flexible, else the axis is absent), L num_codebooks (a standalone flexible linear's stack). A linear is written
(out, in) here and stored (in, out) by a transposed format.
"""

from __future__ import annotations

from typing import Any, Protocol

from converters.accounting import Shape
from converters.registry import Component, Part, register_component
from converters.rules import register_condition


class LayerConfig(Protocol):
    """What the layer kinds, their conditions and their transforms read from a config (TransformerConfig has it)."""

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    num_codebooks: int
    flexible: bool
    rope: bool
    rope_layout: str
    layer_norm: bool
    gated: bool
    layer_scale: float | None
    ffn_dims: tuple[int, ...] | None

    @property
    def q_dim(self) -> int: ...
    @property
    def kv_dim(self) -> int: ...
    @property
    def hidden(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def weight_sets(self) -> int: ...


register_condition("flexible", lambda cfg: cfg.flexible)  # one weight set per codebook (the depth transformer)
register_condition("plain", lambda cfg: not cfg.flexible)

DECODER_CHILDREN = {"norm1": "norm", "norm2": "norm", "attention": "attention", "mlp": "gating_mlp"}
"""A decoder layer's parts by role (each format's `LMSpelling.children` gives their prefixes): pre-attention norm,
pre-MLP norm (kind `norm_kind(cfg)`), attention, gated MLP. A plain MLP (cfg.gated False: kyutai's gating="none") is
a "plain_mlp" under the role `plain_mlp`'s prefix (kyutai: its linear1/linear2 sit in the layer itself); with
kyutai's layer_scale, the roles layer_scale_1 (on the attention's update) and layer_scale_2 (on the MLP's) join."""
LAYER_SCALES = {"layer_scale_1": "layer_scale", "layer_scale_2": "layer_scale"}


def norm_kind(cfg: LayerConfig) -> str:
    """The component kind of cfg's norms: layer_norm (weight and bias) or rmsnorm (a scale)."""
    return "layer_norm" if cfg.layer_norm else "rmsnorm"


def linear(fmt: Any, out: int | None, inp: int | None) -> Shape:
    """A linear's stored shape in `fmt`."""
    return (inp, out) if fmt.transposed else (out, inp)


def per_set(fmt: Any, cfg: LayerConfig, linears: dict[str, tuple[int, int]]) -> dict[str, Shape]:
    """Keys and shapes of linears {module prefix: (out, in)} with one weight set per codebook when cfg.flexible:
    `{c}.` ModuleList entries in front of the modules (format with lists), else a leading W axis."""
    spelling = fmt.lm
    if not cfg.flexible:
        return {m + fmt.kernel: linear(fmt, *dims) for m, dims in linears.items()}
    if spelling.lists:
        sets = range(cfg.weight_sets)
        return {f"{c}.{m}{fmt.kernel}": linear(fmt, *dims) for c in sets for m, dims in linears.items()}
    return {m + fmt.kernel: (cfg.weight_sets, *linear(fmt, *dims)) for m, dims in linears.items()}


def _flexible_linear(fmt: Any, cfg: LayerConfig) -> dict[str, Shape] | None:
    # in/out widths are not in the config: wildcards
    return {fmt.kernel: (cfg.num_codebooks, None, None)} if fmt.lm and fmt.lm.flexible_linear else None


def norm(fmt: Any, dim: int) -> dict[str, Shape]:
    """An RMSNorm scale of width `dim`, relative to the norm module."""
    return {fmt.lm.norm: (1, 1, dim) if fmt.lm.norm_alpha else (dim,)}


def _rmsnorm(fmt: Any, cfg: LayerConfig) -> dict[str, Shape] | None:
    return norm(fmt, cfg.dim) if fmt.lm else None


def _layer_norm(fmt: Any, cfg: Any) -> dict[str, Shape] | None:
    """torch's nn.LayerNorm in every format (the LM's layer-norm kinds and Mimi's); reads cfg.dim."""
    return {"weight": (cfg.dim,), "bias": (cfg.dim,)} if fmt.lm or fmt.mimi else None


def _gating_mlp(fmt: Any, cfg: LayerConfig) -> dict[str, Shape] | None:
    if not fmt.lm:
        return None
    fc1, fc2 = fmt.lm.mlp
    widths = getattr(cfg, "ffn_dims", None)
    if widths is not None and fmt.lm.lists:  # kyutai's per-set gatings, each its own width (stacks: padded to F)
        sets = {f"{c}.": {fc1: (f, cfg.dim), fc2: (cfg.dim, f // 2)} for c, f in enumerate(widths)}
        return {c + m + fmt.kernel: linear(fmt, *dims) for c, mlp in sets.items() for m, dims in mlp.items()}
    return per_set(fmt, cfg, {fc1: (cfg.ffn_dim, cfg.dim), fc2: (cfg.dim, cfg.hidden)})


def _attention(fmt: Any, cfg: LayerConfig) -> dict[str, Shape] | None:
    if not fmt.lm:
        return None
    D, Q, KV = cfg.dim, cfg.q_dim, cfg.kv_dim
    if fmt.lm.fused:  # ModuleLists even for one weight set (kyutai builds attention that way)
        fused_in, fused_out = fmt.lm.fused
        shapes: dict[str, Shape] = {}
        for c in range(cfg.weight_sets):
            shapes[f"{fused_in}{c}.{fmt.kernel}"] = linear(fmt, Q + 2 * KV, D)
            shapes[f"{fused_out}{c}.{fmt.kernel}"] = linear(fmt, D, Q)
        return shapes
    dims = {"q": (Q, D), "k": (KV, D), "v": (KV, D), "o": (D, Q)}
    return per_set(fmt, cfg, {fmt.lm.proj.format(n=n): d for n, d in dims.items()})


def _decoder_parts(fmt: Any, cfg: LayerConfig) -> list[Part] | None:
    if not fmt.lm:
        return None
    kinds = {role: norm_kind(cfg) if kind == "norm" else kind for role, kind in DECODER_CHILDREN.items()}
    kinds |= {} if cfg.layer_scale is None else LAYER_SCALES
    parts = [Part(role, fmt.lm.children[role], kind, cfg) for role, kind in kinds.items()]
    if not cfg.gated:
        parts = [Part("mlp", fmt.lm.children["plain_mlp"], "plain_mlp", cfg) if p.name == "mlp" else p for p in parts]
    return parts


LAYER_COMPONENTS = ("flexible_linear", "rmsnorm", "gating_mlp", "attention", "decoder_layer")

register_component(Component(name="flexible_linear", shapes=_flexible_linear))
register_component(Component(name="rmsnorm", shapes=_rmsnorm))
register_component(Component(name="layer_norm", shapes=_layer_norm))
register_component(Component(name="gating_mlp", shapes=_gating_mlp))
register_component(Component(name="attention", shapes=_attention))
register_component(
    Component(name="decoder_layer", parts=_decoder_parts, uses=("rmsnorm", "layer_norm", "attention", "gating_mlp"))
)
