"""Whole-LM conversion (Moshi without Mimi) between "kyutai", "hf", "ref", "flax"; LM configs from upstream files.

An LM state is three parts: the temporal layers and the depth layers (each converted by the registry's decoder_layer
edge with `cfg.temporal` / `cfg.depth`, under each format's layer prefix in `LAYERS`), and the top-level embeddings,
norm and heads (converted by the tables in `TOP`, keys written out in full). `convert_lm` walks the shortest path of LM
edges and checks the WHOLE state against `expected_lm_shapes` before and after every edge: every key is claimed exactly
once, and all missing, unexpected and misshaped keys are listed together in one ConversionError.

Shape-only checks: `validate_lm_shapes` / `convert_lm_shapes` run the same normalization, accounting and conversion on
zero-byte placeholder arrays (a dtype of itemsize 0), so the 7B key and shape set is checked without allocating weights.

kyutai sources may use the released checkpoints' legacy fused names (`self_attn.in_proj_weight`, `out_proj.weight`);
they are split per codebook (step-major) with each stack's own config before anything else.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from converters.lm_config import (  # noqa: F401  (the config readers, re-exported)
    config_kind,
    from_hf_config,
    from_kyutai_kwargs,
    lm_config_from_dict,
    lm_config_from_json,
    lm_config_to_dict,
)
from converters.registry import EDGES, Pair, Rule, apply_rules, normalize
from converters.shapes import FORMATS, ConversionError, expected_shapes
from moshi_spec.config import LMConfig, TransformerConfig

State = dict[str, np.ndarray]
Progress = Callable[[int], object]

LAYERS: dict[str, dict[str, str]] = {
    "kyutai": {"temporal": "transformer.layers.", "depth": "depformer.layers."},
    "hf": {"temporal": "decoder.model.layers.", "depth": "depth_decoder.layers."},
    "ref": {"temporal": "layers.", "depth": "depth.layers."},
    "flax": {"temporal": "layers.", "depth": "depth.layers."},
}
"""Where each format keeps its two layer stacks; a layer's keys are `{prefix}{l}.` + the decoder_layer keys."""

SHAPE_ONLY = np.dtype([])
"""Itemsize-0 dtype of the placeholder arrays the shape-only checks run on (any shape, zero bytes)."""


def _top_shapes(fmt: str, cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """Embeddings, final norm and heads of format `fmt` (everything outside the two layer stacks)."""
    D, Dd, K, V, T = cfg.temporal.dim, cfg.depth.dim, cfg.dep_q, cfg.card, cfg.text_card
    if fmt == "kyutai":
        return (
            {f"emb.{i}.weight": (V + 1, D) for i in range(cfg.n_q)}
            | {"text_emb.weight": (T + 1, D), "out_norm.alpha": (1, 1, D), "text_linear.weight": (T, D)}
            | {f"depformer_in.{c}.weight": (Dd, D) for c in range(K)}
            | {f"depformer_emb.{c}.weight": (V + 1, Dd) for c in range(K - 1)}
            | {"depformer_text_emb.weight": (T + 1, Dd)}
            | {f"linears.{c}.weight": (V, Dd) for c in range(K)}
        )
    if fmt == "hf":
        return (
            {f"embed_tokens.{i}.weight": (V + 1, D) for i in range(cfg.n_q)}
            | {"decoder.model.embed_tokens.weight": (T + 1, D), "decoder.model.norm.weight": (D,)}
            | {"decoder.lm_head.weight": (T, D), "depth_decoder.text_embed_tokens.weight": (T + 1, Dd)}
            | {f"depth_decoder.embed_tokens.{c}.weight": (V + 1, Dd) for c in range(K - 1)}
            | {"depth_decoder.input_projections.weight": (K, Dd, D), "depth_decoder.lm_heads.weight": (K, V, Dd)}
        )
    if fmt in ("ref", "flax"):
        flax = fmt == "flax"
        linears = {"lm_head": (T, D), "depth.input_projections": (K, Dd, D), "depth.lm_heads": (K, V, Dd)}  # torch
        return (
            {f"embed_tokens.{i}.weight": (V + 1, D) for i in range(cfg.n_q)}
            | {"text_embed_tokens.weight": (T + 1, D), "norm.weight": (D,)}
            | {"depth.text_embed_tokens.weight": (T + 1, Dd)}
            | {f"depth.embed_tokens.{c}.weight": (V + 1, Dd) for c in range(K - 1)}
            | {
                f"{name}.kernel" if flax else f"{name}.weight": (*lead, inp, out) if flax else (*lead, out, inp)
                for name, (*lead, out, inp) in linears.items()
            }
        )
    raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")


def _stacks(cfg: LMConfig) -> tuple[tuple[str, TransformerConfig], ...]:
    return (("temporal", cfg.temporal), ("depth", cfg.depth))


def expected_lm_shapes(fmt: str, cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a whole LM (without Mimi) in format `fmt` for `cfg`, with its shape.

    Raises:
        ValueError: unknown format.
    """
    shapes = _top_shapes(fmt, cfg)
    for stack, sub in _stacks(cfg):
        layer = expected_shapes(fmt, "decoder_layer", sub)
        for i in range(sub.num_layers):
            shapes |= {f"{LAYERS[fmt][stack]}{i}.{key}": shape for key, shape in layer.items()}
    return shapes  # type: ignore[return-value]  (no wildcards in LM shapes)


# ----------------------------------------------------------------------------------------------------------------------
# Edges: the top-level tables plus the registry's decoder_layer edges for the two stacks.

TOP: dict[tuple[str, str], tuple[Pair, ...]] = {
    ("kyutai", "hf"): (
        Pair("emb.{c}.weight", "embed_tokens.{c}.weight"),
        Pair("text_emb.weight", "decoder.model.embed_tokens.weight"),
        Pair("out_norm.alpha", "decoder.model.norm.weight", "alpha_to_weight", "weight_to_alpha"),
        Pair("text_linear.weight", "decoder.lm_head.weight"),
        Pair("depformer_in.{c}.weight", "depth_decoder.input_projections.weight", "stack", "unstack"),
        Pair("depformer_emb.{c}.weight", "depth_decoder.embed_tokens.{c}.weight"),
        Pair("depformer_text_emb.weight", "depth_decoder.text_embed_tokens.weight"),
        Pair("linears.{c}.weight", "depth_decoder.lm_heads.weight", "stack", "unstack"),
    ),
    ("hf", "ref"): (
        Pair("embed_tokens.{c}.weight", "embed_tokens.{c}.weight"),
        Pair("decoder.model.embed_tokens.weight", "text_embed_tokens.weight"),
        Pair("decoder.model.norm.weight", "norm.weight"),
        Pair("decoder.lm_head.weight", "lm_head.weight"),
        Pair("depth_decoder.text_embed_tokens.weight", "depth.text_embed_tokens.weight"),
        Pair("depth_decoder.embed_tokens.{c}.weight", "depth.embed_tokens.{c}.weight"),
        Pair("depth_decoder.input_projections.weight", "depth.input_projections.weight"),
        Pair("depth_decoder.lm_heads.weight", "depth.lm_heads.weight"),
    ),
    ("ref", "flax"): (
        Pair("embed_tokens.{c}.weight", "embed_tokens.{c}.weight"),
        Pair("text_embed_tokens.weight", "text_embed_tokens.weight"),
        Pair("norm.weight", "norm.weight"),
        Pair("lm_head.weight", "lm_head.kernel", "transpose", "transpose"),
        Pair("depth.text_embed_tokens.weight", "depth.text_embed_tokens.weight"),
        Pair("depth.embed_tokens.{c}.weight", "depth.embed_tokens.{c}.weight"),
        Pair("depth.input_projections.weight", "depth.input_projections.kernel", "transpose", "transpose"),
        Pair("depth.lm_heads.weight", "depth.lm_heads.kernel", "transpose", "transpose"),
    ),
}
"""Two-way tables of the top-level keys; `stack` / `unstack` run with cfg.depth (flexible, dep_q weight sets)."""

LM_EDGES: dict[tuple[str, str], tuple[Rule, ...]] = {}
for (_a, _b), _pairs in TOP.items():
    LM_EDGES[(_a, _b)] = tuple(p.forward() for p in _pairs)
    LM_EDGES[(_b, _a)] = tuple(p.backward() for p in _pairs)


def _split(state: Mapping[str, np.ndarray], fmt: str) -> dict[str, State]:
    """{"top": ..., "temporal": ..., "depth": ...} by the format's layer prefixes (keys stay whole)."""
    parts: dict[str, State] = {"top": {}, "temporal": {}, "depth": {}}
    for key, value in state.items():
        stack = next((s for s, prefix in LAYERS[fmt].items() if key.startswith(prefix)), "top")
        parts[stack][key] = value
    return parts


def _layer_groups(part: State, prefix: str) -> dict[str, State]:
    groups: dict[str, State] = {}
    for key, value in part.items():
        index = key[len(prefix) :].split(".", 1)[0]
        groups.setdefault(f"{prefix}{index}.", {})[key] = value
    return groups


def _blocks(state: Mapping[str, np.ndarray], fmt: str, cfg: LMConfig) -> list[tuple[str, str, State]]:
    """The state cut into independently convertible blocks: (stack, layer prefix, keys); the top-level keys first."""
    parts = _split(state, fmt)
    blocks = [("top", "", parts["top"])]
    for stack, _ in _stacks(cfg):
        blocks += [(stack, p, group) for p, group in _layer_groups(parts[stack], LAYERS[fmt][stack]).items()]
    return blocks


def _block_edge(block: State, stack: str, prefix: str, src: str, dst: str, cfg: LMConfig) -> tuple[str, State]:
    """One block through one edge, checked against dst's keys and shapes; returns (the block's dst prefix, block)."""
    where = f"LM edge {src}->{dst} ({prefix + '*' if prefix else 'embeddings, norm and heads'})"
    if stack == "top":
        applied = apply_rules(block, LM_EDGES[(src, dst)], cfg.depth, where=where)
        if applied.unmatched:
            raise ConversionError(f"{where}: {len(applied.unmatched)} key(s) matched by no rule: {applied.unmatched}")
        out, expected = applied.out, _top_shapes(dst, cfg)
    else:
        sub = cfg.temporal if stack == "temporal" else cfg.depth
        layer = EDGES[(src, dst)](block, cfg=sub, component="decoder_layer")
        new_prefix = LAYERS[dst][stack] + prefix[len(LAYERS[src][stack]) :]
        out = {new_prefix + key[len(prefix) :]: value for key, value in layer.items()}
        expected = {new_prefix + k: shape for k, shape in expected_shapes(dst, "decoder_layer", sub).items()}
        prefix = new_prefix
    problems = _problems(out, expected)  # type: ignore[arg-type]
    if problems:
        raise ConversionError(f"output of {where}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return prefix, out


def find_lm_path(src: str, dst: str) -> list[str]:
    """Shortest list of formats from src to dst through LM edges (breadth-first search).

    Raises:
        ValueError: unknown format, or no path.
    """
    for fmt in (src, dst):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
    previous: dict[str, str | None] = {src: None}
    queue = deque([src])
    while queue:
        fmt = queue.popleft()
        if fmt == dst:
            path = [dst]
            while (before := previous[path[-1]]) is not None:
                path.append(before)
            return path[::-1]
        for a, b in sorted(LM_EDGES):
            if a == fmt and b not in previous and (a, b) in EDGES:
                previous[b] = fmt
                queue.append(b)
    raise ValueError(f"no LM converter path from {src!r} to {dst!r}; LM edges: {sorted(LM_EDGES)}")


# ----------------------------------------------------------------------------------------------------------------------
# Accounting and conversion.


def _fmt(shape: object) -> str:
    if shape is None:
        return "nothing"
    dims = tuple(shape)  # type: ignore[call-overload]
    return "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"


def _problems(state: Mapping[str, object], expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    problems: list[str] = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"missing     {key}: expected {_fmt(shape)}, got nothing")
            continue
        value = state[key]
        if not isinstance(value, np.ndarray):
            problems.append(f"not numpy   {key}: got {type(value).__module__}.{type(value).__qualname__}")
        elif tuple(value.shape) != tuple(shape):
            problems.append(f"wrong shape {key}: expected {_fmt(shape)}, got {_fmt(value.shape)}")
    for key in state:
        if key not in expected:
            problems.append(f"unexpected  {key}: expected nothing, got {_fmt(getattr(state[key], 'shape', None))}")
    return problems


def check_lm_state(state: Mapping[str, object], fmt: str, cfg: LMConfig, *, what: str = "LM state") -> None:
    """Checks that `state` holds exactly the keys and shapes of a whole LM in format `fmt`.

    Raises:
        ConversionError: listing, all at once, every missing key (with its expected shape), unexpected key (with its
            shape), key of the wrong shape (expected vs got) and value that is not a numpy array.
    """
    problems = _problems(state, expected_lm_shapes(fmt, cfg))
    if problems:
        raise ConversionError(
            f"{what}: not a {fmt} Moshi LM for this config; {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )


def normalize_lm(state: Mapping[str, np.ndarray], fmt: str, cfg: LMConfig) -> State:
    """Rewrites legacy names inside each layer stack (with that stack's config); other keys pass through unchanged."""
    parts = _split(state, fmt)
    out = dict(parts["top"])
    for stack, sub in _stacks(cfg):
        out |= normalize(parts[stack], fmt, sub)
    return out


def convert_lm(
    state: Mapping[str, np.ndarray], *, src: str, dst: str, cfg: LMConfig, progress: Progress | None = None
) -> State:
    """Converts a whole LM state (Mimi excluded) from format `src` to format `dst`, bit for bit.

    Args:
        state: flat {key: numpy array}, exactly the keys of `expected_lm_shapes(src, cfg)` (kyutai: legacy fused
            attention names are accepted too).
        src, dst: formats in FORMATS; src == dst validates (and normalizes legacy names) without converting.
        cfg: the LM's config.
        progress: called with the number of input keys of each block once converted (the top-level keys, then one
            layer at a time); the calls add up to the number of (normalized) input keys.

    Returns:
        A new flat state in dst's layout; dtypes are kept key by key.

    Raises:
        ValueError: unknown format or no path.
        ConversionError: the input, or any edge's output (each block is checked after each edge), does not account
            for every key with the right shape.
    """
    path = find_lm_path(src, dst)
    state = normalize_lm(state, src, cfg)
    check_lm_state(state, src, cfg, what=f"input of convert_lm {src}->{dst}")
    out: State = {}
    for stack, prefix, block in _blocks(state, src, cfg):  # block by block: one block's intermediates alive at a time
        size = len(block)
        for a, b in itertools.pairwise(path):
            prefix, block = _block_edge(block, stack, prefix, a, b, cfg)
        out |= block
        if progress:
            progress(size)
    check_lm_state(out, dst, cfg, what=f"output of convert_lm {src}->{dst}")
    return out


def _placeholders(shapes: Mapping[str, Any], *, what: str) -> State:
    state: State = {}
    bad: list[str] = []
    for key, shape in shapes.items():
        try:
            dims = tuple(int(d) for d in shape)
            if any(d < 0 for d in dims) or any(int(d) != d for d in shape):
                raise ValueError
        except (TypeError, ValueError):
            bad.append(f"not a shape {key}: {shape!r}")
            continue
        state[key] = np.empty(dims, dtype=SHAPE_ONLY)
    if bad:
        raise ConversionError(f"{what}: {len(bad)} problem(s):\n  " + "\n  ".join(bad))
    return state


def validate_lm_shapes(shapes: Mapping[str, Any], *, fmt: str, cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """Strict accounting of a whole LM from its key -> shape table only (e.g. safetensors metadata): no weights.

    Returns:
        The shapes under current names (kyutai legacy fused names split per codebook).

    Raises:
        ConversionError: every missing, unexpected and misshaped key, listed together.
    """
    state = normalize_lm(_placeholders(shapes, what=f"{fmt} LM shapes"), fmt, cfg)
    check_lm_state(state, fmt, cfg, what=f"{fmt} LM shapes")
    return {key: tuple(value.shape) for key, value in state.items()}


def convert_lm_shapes(shapes: Mapping[str, Any], *, src: str, dst: str, cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """Runs `convert_lm` on zero-byte placeholders: the output's keys and shapes, every check done, no weights."""
    state = convert_lm(_placeholders(shapes, what=f"{src} LM shapes"), src=src, dst=dst, cfg=cfg)
    return {key: tuple(value.shape) for key, value in state.items()}
