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

import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from converters.registry import EDGES, Pair, Rule, apply_rules, normalize
from converters.shapes import FORMATS, ConversionError, expected_shapes
from moshi_spec.config import ACTIVATIONS, LMConfig, TransformerConfig

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


# ----------------------------------------------------------------------------------------------------------------------
# LM configs from upstream files: kyutai LMModel kwargs, HF MoshiConfig dicts, and our own LMConfig dicts.

# num_heads is an explicit LMModel argument, so the depformer never inherits it: depformer_num_heads is required.
KYUTAI_REQUIRED = tuple(
    "dim num_heads num_layers n_q dep_q card text_card delays depformer_dim depformer_num_heads".split()
)
KYUTAI_USED = frozenset(
    {*KYUTAI_REQUIRED, "hidden_scale", "context", "max_period", "gating", "kv_repeat", "existing_text_padding_id"}
    | {"depformer_dim_feedforward", "depformer_num_layers", "depformer_gating", "depformer_kv_repeat", "text_card_out"}
)
KYUTAI_SUPPORTED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    # key: (LMModel's default when absent, the values this port implements)
    "norm": ("layer_norm", ("rms_norm_f32",)),
    "positional_embedding": ("sin", ("rope",)),
    "depformer_pos_emb": ("sin", ("none",)),
    "depformer_multi_linear": (False, (True,)),
    "depformer_weights_per_step": (False, (True,)),
    "causal": (True, (True,)),
    "positional_scale": (1.0, (1.0,)),
    "extra_heads_num_heads": (0, (0,)),
    "conditioners": (None, (None, {})),
    "fuser": (None, (None, {})),
    **{k: (None, (None,)) for k in "layer_scale depformer_layer_scale depformer_norm".split()},
    **{k: (None, (None,)) for k in "depformer_weights_per_step_schedule depformer_low_rank_embeddings".split()},
    **{k: (False, (False,)) for k in "norm_emb bias_proj demux_second_text_stream demux_second_stream".split()},
    **{k: (False, (False,)) for k in "cross_attention quantize lora skip_self_attn".split()},
}
KYUTAI_IGNORED = frozenset(
    # no effect on the weights or on this port: LMModel overrides depformer_context with None, the depth stack has no
    # rope, depformer_causal is deprecated (loaders drop it), and the rest is training or loading detail.
    "depformer_context depformer_max_period depformer_causal existing_text_end_padding_id extra_heads_dim "
    "gradient_checkpointing lora_rank lora_scaling dtype device".split()
    # kyutai config.json entries that loaders.CheckpointInfo pops before building the LM
    + "moshi_name mimi_name mimi_config_name tokenizer_name lora_name model_type lm_gen_config tts_config stt_config "
    "model_id".split()
)


def _kyutai_hidden(dim: int, dim_feedforward: int) -> int:
    """kyutai ActivationGating's hidden width for (dim, dim_feedforward)."""
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


def from_kyutai_kwargs(kwargs: Mapping[str, Any]) -> LMConfig:
    """The LMConfig of kyutai `LMModel(**kwargs)` (as in `moshi.models.loaders._lm_kwargs` or a kyutai config.json).

    Raises:
        ValueError: required keys missing, unknown keys, or settings this port does not implement (listed together).
    """
    d = dict(kwargs)
    problems = [f"missing required key {k!r}" for k in KYUTAI_REQUIRED if k not in d]
    unknown = sorted(set(d) - KYUTAI_USED - KYUTAI_IGNORED - set(KYUTAI_SUPPORTED))
    problems += [f"unknown key {k!r}" for k in unknown]
    for key, (default, allowed) in KYUTAI_SUPPORTED.items():
        if d.get(key, default) not in allowed:
            problems.append(f"{key}={d.get(key, default)!r} is not supported (supported: {list(allowed)})")
    if d.get("text_card_out") not in (None, d.get("text_card")):
        problems.append(f"text_card_out={d['text_card_out']!r} differs from text_card (not supported)")
    gating = d.get("gating", "none")
    depformer_gating = d.get("depformer_gating", gating)
    for key, value in (("gating", gating), ("depformer_gating", depformer_gating)):
        if value not in ACTIVATIONS:
            problems.append(f"{key}={value!r}: the port's layers are gated with one of {ACTIVATIONS}")
    if not isinstance(d.get("depformer_dim_feedforward", 0), int | type(None)):
        problems.append("depformer_dim_feedforward: per-step widths (a list) are not supported")
    if problems:
        raise ValueError("kyutai LM kwargs: " + "; ".join(problems))

    def stack(dim: int, heads: int, layers: int, dff: int, kv_repeat: int, activation: str, **kw: Any):
        if heads % kv_repeat:
            raise ValueError(f"kyutai LM kwargs: num_heads {heads} is not a multiple of kv_repeat {kv_repeat}")
        return TransformerConfig(
            dim=dim, num_heads=heads, num_layers=layers, ffn_dim=2 * _kyutai_hidden(dim, dff),
            num_kv_heads_override=heads // kv_repeat if kv_repeat != 1 else None, activation=activation, **kw,
        )  # fmt: skip

    hidden_scale = d.get("hidden_scale", 4)
    kv_repeat = d.get("kv_repeat", 1)
    temporal = stack(
        d["dim"], d["num_heads"], d["num_layers"], int(hidden_scale * d["dim"]), kv_repeat, gating,
        rope=True, rope_theta=float(d.get("max_period", 10_000)), context=d.get("context"),
    )  # fmt: skip
    dd = d["depformer_dim"]
    depth = stack(
        dd, d["depformer_num_heads"], d.get("depformer_num_layers", d["num_layers"]),
        d.get("depformer_dim_feedforward") or int(hidden_scale * dd), d.get("depformer_kv_repeat", kv_repeat),
        depformer_gating, rope=False, context=None, num_codebooks=d["dep_q"], flexible=True,
    )  # fmt: skip
    return LMConfig(
        temporal=temporal, depth=depth, n_q=d["n_q"], dep_q=d["dep_q"], card=d["card"], text_card=d["text_card"],
        delays=tuple(d["delays"]), existing_text_padding_id=d.get("existing_text_padding_id", 3),
    )  # fmt: skip


def _hf_stack(h: Mapping[str, Any], where: str, **kw: Any) -> TransformerConfig:
    missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "ffn_dim") if k not in h]
    if missing:
        raise ValueError(f"HF config: {where} lacks {missing}")
    dim, heads = h["hidden_size"], h["num_attention_heads"]
    head_dim, kv_heads = h.get("head_dim") or dim // heads, h.get("num_key_value_heads") or heads
    return TransformerConfig(
        dim=dim, num_heads=heads, num_layers=h["num_hidden_layers"], ffn_dim=h["ffn_dim"],
        head_dim_override=head_dim if head_dim != dim // heads else None,
        num_kv_heads_override=kv_heads if kv_heads != heads else None,
        activation=h.get("hidden_act", "silu"), norm_eps=float(h.get("rms_norm_eps", 1e-8)), **kw,
    )  # fmt: skip


def from_hf_config(config: Mapping[str, Any]) -> LMConfig:
    """The LMConfig of an HF `MoshiConfig.to_dict()` (a `config.json` of MoshiForConditionalGeneration).

    HF has no delays or padding id: the delays are Moshi's (text and each stream's first codebook 0, other codebooks 1)
    and the text padding id kyutai's 3. The depth stack has no context window (kyutai's LMModel drops it).

    Raises:
        ValueError: keys missing, or depth fields that contradict the parent's.
    """
    d = dict(config)
    depth_cfg = d.get("depth_decoder_config")
    if not isinstance(depth_cfg, Mapping):
        raise ValueError("HF config: depth_decoder_config (a dict) is missing")
    card = d.get("audio_vocab_size") or (d.get("audio_encoder_config") or {}).get("codebook_size")
    missing = [k for k in ("vocab_size", "num_codebooks") if k not in d] + ([] if card else ["audio_vocab_size"])
    if missing:
        raise ValueError(f"HF config: missing {missing}")
    K = d["num_codebooks"]
    inherited = {"num_codebooks": K, "vocab_size": d["vocab_size"], "audio_vocab_size": card}
    inherited["input_size"] = d.get("hidden_size")
    clashes = [
        f"depth_decoder_config.{key}={depth_cfg[key]!r} but the parent says {want!r}"
        for key, want in inherited.items()
        if depth_cfg.get(key) is not None and depth_cfg[key] != want
    ]
    if clashes:
        raise ValueError("HF config: " + "; ".join(clashes))
    rope = d.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", d.get("rope_theta", 10_000.0)))
    temporal = _hf_stack(d, "the config", rope=True, rope_theta=theta, context=d.get("sliding_window"))
    depth = _hf_stack(depth_cfg, "depth_decoder_config", rope=False, context=None, num_codebooks=K, flexible=True)
    stream = (0,) + (1,) * (K - 1)
    return LMConfig(
        temporal=temporal, depth=depth, n_q=2 * K, dep_q=K, card=card, text_card=d["vocab_size"],
        delays=(0, *stream, *stream),
    )  # fmt: skip


def lm_config_to_dict(cfg: LMConfig) -> dict[str, Any]:
    """A JSON-ready dict of the LMConfig (inverse: `lm_config_from_dict`)."""
    d = dataclasses.asdict(cfg)
    d["delays"] = list(cfg.delays)
    return d


def lm_config_from_dict(d: Mapping[str, Any]) -> LMConfig:
    """Rebuilds an LMConfig from `lm_config_to_dict`'s output; unknown or missing fields raise ValueError."""
    try:
        fields = dict(d)
        temporal, depth = TransformerConfig(**fields.pop("temporal")), TransformerConfig(**fields.pop("depth"))
        return LMConfig(temporal=temporal, depth=depth, delays=tuple(fields.pop("delays")), **fields)
    except (KeyError, TypeError) as err:
        raise ValueError(f"not an LMConfig dict ({err}); keys: {sorted(d)}") from err


def config_kind(d: object) -> str:
    """Which kind of LM config a parsed JSON is: "kyutai" (LMModel kwargs), "hf" (MoshiConfig) or "lm_config" (ours).

    Raises:
        ValueError: none of them (or ambiguous), naming the keys each kind needs.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"LM config JSON must be an object, got {type(d).__name__}")
    kinds = []
    if "dim" in d and "n_q" in d:
        kinds.append("kyutai")
    if "depth_decoder_config" in d or ("hidden_size" in d and "num_codebooks" in d):
        kinds.append("hf")
    if "temporal" in d and "depth" in d:
        kinds.append("lm_config")
    if len(kinds) != 1:
        raise ValueError(
            f"cannot tell which LM config this is ({'ambiguous: ' + ', '.join(kinds) if kinds else 'none matches'}): "
            "kyutai LMModel kwargs have 'dim' and 'n_q' (moshi.models.loaders._lm_kwargs), an HF MoshiConfig has "
            "'depth_decoder_config' (or 'hidden_size' and 'num_codebooks'), a moshi_parity LMConfig dict has "
            f"'temporal' and 'depth'; got keys {sorted(d)[:20]}{' ...' if len(d) > 20 else ''}"
        )
    return kinds[0]


def lm_config_from_json(d: object) -> tuple[LMConfig, str]:
    """(LMConfig, kind) of a parsed config JSON of any kind `config_kind` recognizes."""
    kind = config_kind(d)
    assert isinstance(d, Mapping)
    if kind == "kyutai":
        return from_kyutai_kwargs(d), kind
    if kind == "hf":
        return from_hf_config(d), kind
    return lm_config_from_dict(d), kind
