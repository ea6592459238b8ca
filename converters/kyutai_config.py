"""LM configs from kyutai `LMModel` keyword arguments (`moshi.models.loaders._lm_kwargs`, a kyutai config.json): every
option of the family this port builds, read as LMModel builds it; every problem reported together, named by the
kwargs (converters/config_fields.py). converters/lm_config.py reads the other kinds and tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converters.config_fields import building, field_problems
from moshi_spec import kyutai
from moshi_spec.config import ACTIVATIONS, NORM_EPS, LMConfig, TransformerConfig

# What LMModel cannot build without: StreamingTransformer has no default num_layers or num_heads, and num_heads is an
# explicit LMModel argument, so the depformer never inherits it (depformer_num_heads); LMModel's default delays [0]
# fit only n_q = 0, which this port does not build.
KYUTAI_REQUIRED = ("num_layers", "depformer_num_heads", "delays")
KYUTAI_DEFAULTS: dict[str, Any] = {
    # what LMModel(**kwargs) builds for an absent key: LMModel.__init__'s defaults, then StreamingTransformer's
    # (max_period) and StreamingTransformerLayer's (gating, kv_repeat); the depformer_* ones default to these
    "dim": 128, "num_heads": 8, "n_q": 8, "dep_q": 8, "card": 1024, "text_card": 32000, "depformer_dim": 256,
    "hidden_scale": 4, "context": None, "existing_text_padding_id": 3, "max_period": 10_000, "gating": "none",
    "kv_repeat": 1,
}  # fmt: skip
KYUTAI_USED = frozenset(
    {*KYUTAI_REQUIRED, *KYUTAI_DEFAULTS}
    | {"depformer_dim_feedforward", "depformer_num_layers", "depformer_gating", "depformer_kv_repeat", "text_card_out"}
    | {"layer_scale", "depformer_layer_scale", "depformer_max_period", "positional_scale", "depformer_positional_scale"}
    | {"extra_heads_num_heads", "extra_heads_dim", "existing_text_end_padding_id"}
    | {"depformer_weights_per_step_schedule", "depformer_low_rank_embeddings"}
)
POSITIONAL_EMBEDDINGS = ("rope", "rope_concat", "sin", "sin_rope", "none")
"""kyutai StreamingTransformer's `positional_embedding` values (LMModel's `depformer_pos_emb` for the depth stack)."""
KYUTAI_SUPPORTED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    # key: (LMModel's default when absent, the values this port implements)
    "norm": ("layer_norm", tuple(NORM_EPS)),  # each kind with the eps kyutai fixes for it
    "positional_embedding": ("sin", POSITIONAL_EMBEDDINGS),
    "depformer_pos_emb": ("sin", POSITIONAL_EMBEDDINGS),
    **{k: (False, (True, False)) for k in "depformer_multi_linear depformer_weights_per_step".split()},
    "causal": (True, (True,)),
    "conditioners": (None, (None, {})),
    "fuser": (None, (None, {})),
    "depformer_norm": (None, (None, *NORM_EPS)),
    **{k: (False, (False, True)) for k in "norm_emb bias_proj demux_second_text_stream demux_second_stream".split()},
    **{k: (False, (False,)) for k in "cross_attention quantize lora skip_self_attn".split()},
}
KYUTAI_IGNORED = frozenset(
    # no effect on the weights or on this port: LMModel overrides depformer_context with None, depformer_causal is
    # deprecated (loaders drop it), and the rest is training or loading detail.
    "depformer_context depformer_causal gradient_checkpointing lora_rank lora_scaling dtype device".split()
    # kyutai config.json entries that loaders.CheckpointInfo pops before building the LM
    + "moshi_name mimi_name mimi_config_name tokenizer_name lora_name model_type lm_gen_config tts_config stt_config "
    "model_id".split()
)


KYUTAI_FIELDS = {
    **dict.fromkeys("dim num_heads num_layers n_q dep_q card text_card kv_repeat".split(), "int"),
    **dict.fromkeys("depformer_dim depformer_num_heads depformer_num_layers depformer_kv_repeat".split(), "int"),
    **dict.fromkeys("context text_card_out depformer_low_rank_embeddings".split(), "int?"),
    **dict.fromkeys("hidden_scale max_period depformer_max_period".split(), "num"),
    **dict.fromkeys("positional_scale depformer_positional_scale".split(), "num"),
    **dict.fromkeys("layer_scale depformer_layer_scale".split(), "num?"),
    "existing_text_padding_id": "int0",
    "existing_text_end_padding_id": "int0",
    "extra_heads_num_heads": "int0",
    "extra_heads_dim": "int",
    "delays": "ints",
}
KYUTAI_LM_NAMES = {k: k for k in "n_q dep_q card text_card delays existing_text_padding_id".split()}
KYUTAI_LM_NAMES["depth.num_codebooks"] = "dep_q"
KYUTAI_LM_NAMES["depformer_norm"] = "depformer_norm"
KYUTAI_LM_NAMES["norm_emb"] = "norm_emb"
KYUTAI_LM_NAMES["depth.gated"] = "depformer_gating"
KYUTAI_LM_NAMES |= {k: k for k in "bias_proj text_card_out extra_heads_dim existing_text_end_padding_id".split()}
KYUTAI_LM_NAMES |= {"extra_heads": "extra_heads_num_heads", "demux_second_text_stream": "demux_second_text_stream"}
KYUTAI_LM_NAMES["depth_schedule"] = "depformer_weights_per_step_schedule"
KYUTAI_LM_NAMES["depth_multi_linear"] = "depformer_multi_linear"
KYUTAI_LM_NAMES["depth_low_rank"] = "depformer_low_rank_embeddings"
KYUTAI_STACK_NAMES = {
    "temporal": {"dim": "dim", "num_heads": "num_heads", "num_layers": "num_layers", "ffn_dim": "hidden_scale",
                 "num_kv_heads_override": "kv_repeat", "activation": "gating", "rope_theta": "max_period",
                 "context": "context", "norm": "norm", "norm_eps": "norm", "gated": "gating",
                 "layer_scale": "layer_scale", "rope": "positional_embedding", "rope_concat": "positional_embedding",
                 "sin_embedding": "positional_embedding", "positional_scale": "positional_scale"},
    "depth": {"dim": "depformer_dim", "num_heads": "depformer_num_heads", "num_layers": "depformer_num_layers",
              "ffn_dim": "depformer_dim_feedforward", "num_kv_heads_override": "depformer_kv_repeat",
              "activation": "depformer_gating", "num_codebooks": "dep_q", "norm": "norm", "norm_eps": "norm",
              "gated": "depformer_gating", "layer_scale": "depformer_layer_scale", "rope": "depformer_pos_emb",
              "rope_concat": "depformer_pos_emb", "sin_embedding": "depformer_pos_emb",
              "rope_theta": "depformer_max_period", "positional_scale": "depformer_positional_scale",
              "ffn_dims": "depformer_dim_feedforward", "flexible": "depformer_weights_per_step"},
}  # fmt: skip


def _kyutai_size_problems(d: Mapping[str, Any]) -> list[str]:
    """kyutai's own ties between sizes (head_dim = dim / num_heads, even for rope; an even dim of at least 4 for the
    sinusoidal embedding; kv_repeat divides num_heads; a hidden width of at least 1: the gating's, or dim_feedforward
    itself for gating="none"), named by the kwargs that break them."""
    problems = []
    for names in KYUTAI_STACK_NAMES.values():
        dim_key, heads_key, kv_key = names["dim"], names["num_heads"], names["num_kv_heads_override"]
        dim, heads = d[dim_key], d[heads_key]
        kv = d.get(kv_key, d["kv_repeat"])
        pos_key = names["rope"]
        pos = d.get(pos_key, KYUTAI_SUPPORTED[pos_key][0])
        if dim % heads:
            problems.append(f"{heads_key}={heads} does not divide {dim_key}={dim} (kyutai's head_dim is the quotient)")
        elif "rope" in pos and (dim // heads) % 2:
            problems.append(
                f"{dim_key} / {heads_key} = {dim // heads} is odd: {pos_key}={pos!r} needs an even head_dim"
            )
        if "sin" in pos and (dim % 2 or dim < 4):
            problems.append(f"{pos_key}={pos!r} needs an even {dim_key} >= 4 (cos and sin halves), got {dim}")
        if heads % kv:
            problems.append(f"{heads_key}={heads} is not a multiple of {kv_key}={kv}")
    scale = d["hidden_scale"]
    dff = d.get("depformer_dim_feedforward")
    for dim_key, width, key in (("dim", int(scale * d["dim"]), "hidden_scale"),
                                ("depformer_dim", dff or int(scale * d["depformer_dim"]),
                                 "depformer_dim_feedforward" if dff else "hidden_scale")):  # fmt: skip
        plain = (d["gating"] if dim_key == "dim" else d.get("depformer_gating", d["gating"])) == "none"
        if (width if plain else kyutai.gating_hidden(d[dim_key], width)) < 1:
            problems.append(f"{key}={d.get(key, scale)!r} leaves the gating of {dim_key}={d[dim_key]} no hidden units")
    return problems


def _per_step_widths(d: dict[str, Any], problems: list[str]) -> tuple[int, ...] | None:
    """Reads a per-step depformer_dim_feedforward list (kyutai 0.2.13: one width per depformer weight set, dep_q of
    them without a schedule, max(schedule) + 1 with one) in d: equal widths become that one width; widths that differ
    are returned (the depth stack's ffn_dims), d keeping the first; a list of the wrong length or of non-widths, or
    one without depformer_weights_per_step, is appended to problems (and dropped)."""
    key, widths = "depformer_dim_feedforward", d.get("depformer_dim_feedforward")
    if not isinstance(widths, list):
        return None
    schedule = d.get("depformer_weights_per_step_schedule")
    sets, named = d.get("dep_q"), f"one per depformer step (dep_q={d.get('dep_q')!r})"
    if isinstance(schedule, list) and schedule and all(isinstance(i, int) for i in schedule):
        sets, named = max(schedule) + 1, f"one per weight set of depformer_weights_per_step_schedule={schedule}"
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        problems.append(f"{key}={widths!r} is not a positive integer, a list of them or null")
    elif not d.get("depformer_weights_per_step", False):
        problems.append(f"{key}={widths!r}: a list needs depformer_weights_per_step (kyutai asserts its length is 0)")
    elif isinstance(sets, int) and len(widths) != sets:
        problems.append(f"{key} has {len(widths)} widths, kyutai needs {named}")
    else:
        d[key] = widths[0]
        return tuple(widths) if len(set(widths)) > 1 else None
    del d[key]
    return None


def _schedule_problems(schedule: Any, per_step: Any, dep_q: Any) -> list[str]:
    """What kyutai LMModel asserts of depformer_weights_per_step_schedule: null, or dep_q weight set indices >= 0
    with depformer_weights_per_step (without it every layer asserts the schedule has 0 entries)."""
    key = "depformer_weights_per_step_schedule"
    if schedule is None:
        return []
    if not isinstance(schedule, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in schedule):
        return [f"{key}={schedule!r} is not a list of integers or null"]
    if any(i < 0 for i in schedule):
        return [f"{key}={schedule!r} has a negative weight set index"]
    if isinstance(dep_q, int) and len(schedule) != dep_q:
        return [f"{key} has {len(schedule)} entries, kyutai needs one per depformer step (dep_q={dep_q})"]
    if per_step is not True:
        return [f"{key}={schedule!r} needs depformer_weights_per_step=True (kyutai asserts it)"]
    return []


def _positions(kind: str, max_period: float, scale: float) -> dict[str, Any]:
    """The TransformerConfig fields of a kyutai positional_embedding (one of POSITIONAL_EMBEDDINGS; inverse:
    moshi_spec.kyutai.positional_embedding)."""
    return {"rope": "rope" in kind, "rope_concat": kind == "rope_concat", "sin_embedding": "sin" in kind,
            "rope_theta": float(max_period), "positional_scale": float(scale)}  # fmt: skip


def from_kyutai_kwargs(kwargs: Mapping[str, Any]) -> LMConfig:
    """The LMConfig of kyutai `LMModel(**kwargs)` (as in `moshi.models.loaders._lm_kwargs` or a kyutai config.json).

    An absent key means what LMModel makes of it (KYUTAI_DEFAULTS; depformer_* keys default to their temporal
    counterparts, as LMModel passes them on), never what Moshi 7B uses.

    Raises:
        ValueError: required keys missing, unknown keys, values of the wrong type, settings this port does not
            implement, or sizes kyutai cannot build (listed together, named by the kwargs).
    """
    where = "kyutai LM kwargs"
    problems = [f"missing required key {k!r}" for k in KYUTAI_REQUIRED if k not in kwargs]
    d = KYUTAI_DEFAULTS | dict(kwargs)
    unknown = sorted(set(d) - KYUTAI_USED - KYUTAI_IGNORED - set(KYUTAI_SUPPORTED))
    problems += [f"unknown key {k!r}" for k in unknown]
    problems += field_problems(d, KYUTAI_FIELDS)
    depth_widths = _per_step_widths(d, problems)
    problems += field_problems(d, {"depformer_dim_feedforward": "int?"})
    for key, (default, allowed) in KYUTAI_SUPPORTED.items():
        if d.get(key, default) not in allowed:
            problems.append(f"{key}={d.get(key, default)!r} is not supported (supported: {list(allowed)})")
    # moshi.models.loaders renames a config.json's demux_second_stream before LMModel reads it
    demux = d.get("demux_second_text_stream", d.get("demux_second_stream", False))
    if d.get("demux_second_stream", demux) != demux:
        problems.append(
            f"demux_second_stream={d['demux_second_stream']!r} contradicts demux_second_text_stream={demux!r} "
            "(loaders renames the first to the second)"
        )
    gating = d["gating"]
    depformer_gating = d.get("depformer_gating", gating)
    if gating not in (*ACTIVATIONS, "none"):
        problems.append(f"gating={gating!r}: the port's layers are gated with one of {ACTIVATIONS}, or plain ('none')")
    per_step = d.get("depformer_weights_per_step", False)
    schedule = d.get("depformer_weights_per_step_schedule")
    problems += _schedule_problems(schedule, per_step, d.get("dep_q"))
    if depformer_gating == "none" and per_step:
        named = "depformer_gating" if "depformer_gating" in d else "depformer_gating (gating's, inherited)"
        problems.append(
            f"{named}='none': kyutai's depformer has a weight set per step, which its plain FFN does not support "
            "(StreamingTransformerLayer asserts it); give depformer_gating one of " + str(ACTIVATIONS)
        )
    elif depformer_gating not in (*ACTIVATIONS, "none"):
        problems.append(f"depformer_gating={depformer_gating!r}: the port's layers are gated with one of {ACTIVATIONS}")
    if problems or (problems := _kyutai_size_problems(d)):
        raise ValueError(f"{where}: " + "; ".join(problems))

    def stack(name: str, dim: int, heads: int, layers: int, dff: int, kv_repeat: int, gating: str, **kw: Any):
        # gating="none": kyutai's plain FFN, linear1 (dff, dim) through StreamingTransformerLayer's default activation
        # (F.gelu, exact); a gated one's linear_in has twice the gating's hidden width (per weight set: ffn_dims)
        gated = gating != "none"
        ffn_dim = 2 * kyutai.gating_hidden(dim, dff) if gated else dff
        if kw.get("ffn_dims"):  # stored ffn_dim wide: the widest set's
            kw["ffn_dims"] = tuple(2 * kyutai.gating_hidden(dim, w) for w in kw["ffn_dims"])
            ffn_dim = max(kw["ffn_dims"])
            kw["ffn_dims"] = kw["ffn_dims"] if len(set(kw["ffn_dims"])) > 1 else None  # equal gatings: one width
        with building(f"{where} ({name} stack)", KYUTAI_STACK_NAMES[name]):
            return TransformerConfig(
                dim=dim, num_heads=heads, num_layers=layers, ffn_dim=ffn_dim,
                num_kv_heads_override=heads // kv_repeat if kv_repeat != 1 else None,
                activation=gating if gated else "gelu", gated=gated, **kw,
            )  # fmt: skip

    hidden_scale, kv_repeat, norm = d["hidden_scale"], d["kv_repeat"], d.get("norm", "layer_norm")
    scale = d.get("positional_scale", 1.0)
    temporal = stack(
        "temporal", d["dim"], d["num_heads"], d["num_layers"], int(hidden_scale * d["dim"]), kv_repeat, gating,
        **_positions(d.get("positional_embedding", "sin"), d["max_period"], scale),
        context=d["context"], norm=norm, layer_scale=d.get("layer_scale"),
    )  # fmt: skip
    dd = d["depformer_dim"]
    depth = stack(
        "depth", dd, d["depformer_num_heads"], d.get("depformer_num_layers", d["num_layers"]),
        d.get("depformer_dim_feedforward") or int(hidden_scale * dd), d.get("depformer_kv_repeat", kv_repeat),
        depformer_gating, context=None, norm=norm, flexible=per_step,
        # weights_per_step: a set per step, or per schedule entry; without it one set shared by every step
        num_codebooks=(max(schedule) + 1 if schedule else d["dep_q"]) if per_step else 1,
        # the depformer's positional_embedding is depformer_pos_emb; max_period and positional_scale are inherited
        **_positions(d.get("depformer_pos_emb", "sin"), d.get("depformer_max_period", d["max_period"]),
                     d.get("depformer_positional_scale", scale)),
        layer_scale=d.get("depformer_layer_scale", d.get("layer_scale")),  # LMModel passes layer_scale on
        ffn_dims=depth_widths,
    )  # fmt: skip
    with building(where, KYUTAI_LM_NAMES):
        return LMConfig(
            temporal=temporal, depth=depth, n_q=d["n_q"], dep_q=d["dep_q"], card=d["card"], text_card=d["text_card"],
            delays=tuple(d["delays"]), existing_text_padding_id=d["existing_text_padding_id"],
            depformer_norm=d.get("depformer_norm"), norm_emb=d.get("norm_emb", False),
            bias_proj=d.get("bias_proj", False), text_card_out=d.get("text_card_out"),
            extra_heads=d.get("extra_heads_num_heads", 0), extra_heads_dim=d.get("extra_heads_dim", 6),
            existing_text_end_padding_id=d.get("existing_text_end_padding_id", 0), demux_second_text_stream=demux,
            depth_schedule=None if schedule is None else tuple(schedule),
            depth_multi_linear=d.get("depformer_multi_linear", False),
            depth_low_rank=d.get("depformer_low_rank_embeddings"),
        )  # fmt: skip
