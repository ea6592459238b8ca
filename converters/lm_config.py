"""LM configs from upstream files: kyutai LMModel keyword arguments, HF MoshiConfig dicts, and our own LMConfig dicts.

Every problem in a file (missing keys, unknown keys, settings the port cannot run) is reported together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from moshi_spec import kyutai
from moshi_spec.config import ACTIVATIONS, LMConfig, TransformerConfig

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
            dim=dim, num_heads=heads, num_layers=layers, ffn_dim=2 * kyutai.gating_hidden(dim, dff),
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
