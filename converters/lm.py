"""The whole Moshi LM (Mimi excluded) as component kinds of the engine: "lm_top" (embeddings and heads, a leaf) and
"lm" (lm_top, the final norm of the temporal stack's norm kind, the embeddings' layer norms when norm_emb is set, the
depth stack's per-codebook output norms when depformer_norm is set, and one decoder layer per layer of the temporal and
depth stacks, a composite), both `whole`:
an LM state is a checkpoint with exact keys. Shapes and prefixes come from each format's `LMSpelling`.

Axis names: D temporal dim, Dd depth dim, K dep_q (codebooks the depth transformer predicts), V card (audio vocabulary;
embeddings hold V + 1 rows, the last one the initial token), T text_card (likewise T + 1), n_q audio streams, Ki the
temporal -> depth input projections (cfg.depth_in_count: K, the schedule's weight sets, or 1 without
depformer_multi_linear), r the depth embeddings' rank (cfg.depth_low_rank: their tables are (rows, r), each followed by
a `low_rank.` linear (Dd, r); without it r = Dd and no linear).
kyutai's head options add keys: bias_proj the heads' biases, text_card_out the text head's width (text_out),
extra_heads_num_heads the extra heads (extra_heads_dim, D), demux_second_text_stream both text embeddings' out1 / out2
(from the table's width: r for the depth one, whose `low_rank.` linear kyutai then creates but never applies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from converters.accounting import Shape
from converters.layers import LayerConfig, linear, norm_kind
from converters.registry import Component, Part, register_component

STACKS = ("temporal", "depth")


class LMShapeConfig(Protocol):
    """What the LM kinds read from a config (LMConfig has it)."""

    temporal: LayerConfig
    depth: LayerConfig
    n_q: int
    dep_q: int
    card: int
    text_card: int
    norm_emb: bool
    bias_proj: bool
    text_out: int
    extra_heads: int
    extra_heads_dim: int
    demux_second_text_stream: bool
    depth_low_rank: int | None

    @property
    def depth_out_norm(self) -> LayerConfig | None: ...
    @property
    def depth_in_count(self) -> int: ...


LOW_RANK = "low_rank."
"""A low-rank embedding's projection (kyutai's ScaledEmbedding.low_rank), under the embedding's prefix in every
format."""


@dataclass(frozen=True)
class Width:
    """The config of a layer norm that is not a stack's width (a low-rank embedding's, of width r)."""

    dim: int


def _top(fmt: Any, cfg: LMShapeConfig) -> dict[str, Shape] | None:
    spelling = fmt.lm
    if not spelling:
        return None
    D, Dd, K, V, T = cfg.temporal.dim, cfg.depth.dim, cfg.dep_q, cfg.card, cfg.text_card
    r = cfg.depth_low_rank or Dd
    at, emb, kernel = spelling.top, spelling.embedding, fmt.kernel

    def embeddings(role: str, n: int, rows: int, dim: int) -> dict[str, Shape]:
        return {f"{at[role]}{i}.{emb}": (rows, dim) for i in range(n)}

    def per_codebook(role: str, out: int, inp: int, count: int = K) -> dict[str, Shape]:  # one linear per weight set
        if spelling.lists:
            return {f"{at[role]}{c}.{kernel}": linear(fmt, out, inp) for c in range(count)}
        return {f"{at[role]}{kernel}": (count, *linear(fmt, out, inp))}

    def demux(role: str, dim: int, width: int) -> dict[str, Shape]:  # demux_second_text_stream: out1, out2 width -> dim
        if not cfg.demux_second_text_stream:
            return {}
        return {f"{at[role]}{out}.{kernel}": linear(fmt, dim, width) for out in ("out1", "out2")}

    def biases() -> dict[str, Shape]:  # kyutai's bias_proj: the text head's and every depth head's
        if not cfg.bias_proj:
            return {}
        heads = at["depth_heads"]
        per_head = {f"{heads}{c}.bias": (V,) for c in range(K)} if spelling.lists else {f"{heads}bias": (K, V)}
        return {f"{at['text_head']}bias": (cfg.text_out,)} | per_head

    low_rank = {}
    if cfg.depth_low_rank is not None:  # each depth embedding's r -> Dd projection
        low_rank = {f"{at['depth_emb']}{i}.{LOW_RANK}{kernel}": linear(fmt, Dd, r) for i in range(K - 1)}
        low_rank[f"{at['depth_text_emb']}{LOW_RANK}{kernel}"] = linear(fmt, Dd, r)
    extra = {f"{at['extra_heads']}{i}.{kernel}": linear(fmt, cfg.extra_heads_dim, D) for i in range(cfg.extra_heads)}
    return (
        embeddings("audio_emb", cfg.n_q, V + 1, D)
        | {f"{at['text_emb']}{emb}": (T + 1, D)}
        | demux("text_emb", D, D)
        | {f"{at['text_head']}{kernel}": linear(fmt, cfg.text_out, D)}
        | extra
        | per_codebook("depth_in", Dd, D, cfg.depth_in_count)
        | embeddings("depth_emb", K - 1, V + 1, r)
        | {f"{at['depth_text_emb']}{emb}": (T + 1, r)}
        | low_rank
        | demux("depth_text_emb", Dd, r)
        | per_codebook("depth_heads", V, Dd)
        | biases()
    )


def _embedding_norms(top: dict[str, str], cfg: LMShapeConfig) -> list[Part]:
    """The layer norm of every embedding (`{embedding}norm.`), named by the embedding's role and index; a low-rank
    depth embedding's is of width r."""
    t, d = cfg.temporal, cfg.depth if cfg.depth_low_rank is None else Width(cfg.depth_low_rank)
    tables = (
        ("audio_emb", cfg.n_q, t),
        ("text_emb", None, t),
        ("depth_emb", cfg.dep_q - 1, d),
        ("depth_text_emb", None, d),
    )
    parts = []
    for role, count, sub in tables:
        at = [f"{top[role]}norm."] if count is None else [f"{top[role]}{i}.norm." for i in range(count)]
        parts += [Part(f"{role}_norm.{i}", prefix, "layer_norm", sub) for i, prefix in enumerate(at)]
    return parts


def _parts(fmt: Any, cfg: LMShapeConfig) -> list[Part] | None:
    if not fmt.lm:
        return None
    found = [Part("top", "", "lm_top", cfg), Part("norm", fmt.lm.top["norm"], norm_kind(cfg.temporal), cfg.temporal)]
    if cfg.norm_emb:  # kyutai's norm_emb: a layer norm inside every embedding
        found += _embedding_norms(fmt.lm.top, cfg)
    if (out := cfg.depth_out_norm) is not None:  # kyutai's depformer_norms, one per codebook
        prefix = fmt.lm.top["depth_norms"]
        found += [Part(f"depth_norm.{c}", f"{prefix}{c}.", norm_kind(out), out) for c in range(cfg.dep_q)]
    for stack in STACKS:
        sub = getattr(cfg, stack)
        prefix = fmt.lm.stacks[stack]
        found += [Part(f"{stack}.{i}", f"{prefix}{i}.", "decoder_layer", sub) for i in range(sub.num_layers)]
    return found


register_component(Component(name="lm_top", shapes=_top, whole=True))
register_component(
    Component(name="lm", parts=_parts, uses=("lm_top", "rmsnorm", "layer_norm", "decoder_layer"), whole=True)
)
