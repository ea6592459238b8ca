"""LM configs from upstream files: kyutai LMModel keyword arguments (read by converters/kyutai_config.py), HF
MoshiConfig dicts, and our own LMConfig dicts.

Every problem in a file (missing keys, unknown keys, values of the wrong type, settings the port cannot run, sizes
that do not fit together) is reported together, each named as the file names it (converters/config_fields.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from converters.config_fields import building, dataclass_problems, field_problems
from converters.kyutai_config import from_kyutai_kwargs
from moshi_spec.config import LMConfig, TransformerConfig

UNBOUNDED = 2**31 - 1
"""HF's sliding_window (an int in MoshiConfig) for a stack without a context window; read back as None."""

HF_STACK_FIELDS = {
    **dict.fromkeys("hidden_size num_attention_heads num_hidden_layers ffn_dim".split(), "int"),
    **dict.fromkeys("head_dim num_key_value_heads".split(), "int?"),
    "hidden_act": "str",
    "rms_norm_eps": "num0",
}
HF_FIELDS = HF_STACK_FIELDS | dict.fromkeys("vocab_size num_codebooks".split(), "int")
HF_FIELDS |= {"audio_vocab_size": "int?", "sliding_window": "int?", "rope_theta": "num"}
HF_WINDOWS = {"": 3000, "depth_decoder_config.": 8}
"""MoshiConfig's and MoshiDepthConfig's sliding_window when the file has none (transformers 4.45 to 5.x alike)."""
HF_LM_NAMES = {"text_card": "vocab_size", "card": "audio_vocab_size", "depth.num_codebooks": "num_codebooks"}
HF_LM_NAMES |= dict.fromkeys(("n_q", "dep_q", "delays"), "num_codebooks")


def _hf_names(at: str, theta_key: str) -> dict[str, str]:
    """TransformerConfig field -> key of the HF config (`at`: "" or "depth_decoder_config.")."""
    names = {"dim": "hidden_size", "num_heads": "num_attention_heads", "num_layers": "num_hidden_layers",
             "ffn_dim": "ffn_dim", "head_dim_override": "head_dim", "num_kv_heads_override": "num_key_value_heads",
             "activation": "hidden_act", "norm_eps": "rms_norm_eps"}  # fmt: skip
    return {field: at + key for field, key in names.items()} | {
        "rope_theta": theta_key, "context": "sliding_window", "num_codebooks": "num_codebooks",
    }  # fmt: skip


def hf_rope(d: Mapping[str, Any]) -> tuple[float, str, list[str]]:
    """(rope theta, the key it is read from, problems) of an HF config, read as transformers 5 reads every layout
    (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`): a non-empty `rope_scaling` (4.x's name, there beside a
    top-level `rope_theta`) replaces `rope_parameters` (5.x); a theta neither holds is the top-level `rope_theta`, else
    10000. Only the default rope type is this port's: a scaled one (`linear`, `dynamic`, ...) is refused."""
    key = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    rope = d.get(key) or {}
    if not isinstance(rope, Mapping):
        return 0.0, key, [f"{key}={rope!r} is not a JSON object"]
    problems = field_problems(rope, {"rope_theta": "num"}, where=f"{key}.")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"{key}.rope_type={rope_type!r} is not supported (only the default, unscaled rope)")
    if "rope_theta" in rope:
        return rope["rope_theta"], f"{key}.rope_theta", problems
    return d.get("rope_theta", 10_000.0), "rope_theta", problems


def _hf_stack(h: Mapping[str, Any], at: str, *, theta_key: str = "rope_theta", **kw: Any) -> TransformerConfig:
    """One stack of an HF config (`at`: "" for the temporal one, "depth_decoder_config." for the depth one)."""
    missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "ffn_dim") if k not in h]
    if missing:
        raise ValueError(f"HF config: {at or 'the config '}lacks {missing}")
    dim, heads = h["hidden_size"], h["num_attention_heads"]
    head_dim, kv_heads = h.get("head_dim") or dim // heads, h.get("num_key_value_heads") or heads
    problems = []
    if dim % heads:  # HF's MoshiAttention refuses it even when head_dim is given
        problems.append(f"{at}num_attention_heads={heads} does not divide {at}hidden_size={dim}")
    elif kw["rope"] and head_dim % 2:
        named = f"{at}head_dim" if h.get("head_dim") else f"{at}hidden_size // {at}num_attention_heads"
        problems.append(f"{named} = {head_dim} is odd: rope needs an even head_dim")
    if heads % kv_heads:
        problems.append(f"{at}num_attention_heads={heads} is not a multiple of {at}num_key_value_heads={kv_heads}")
    if problems:
        raise ValueError("HF config: " + "; ".join(problems))
    with building(f"HF config {at or 'temporal stack'}".rstrip("."), _hf_names(at, theta_key)):
        return TransformerConfig(
            dim=dim, num_heads=heads, num_layers=h["num_hidden_layers"], ffn_dim=h["ffn_dim"],
            head_dim_override=head_dim if head_dim * heads != dim else None,
            num_kv_heads_override=kv_heads if kv_heads != heads else None,
            activation=h.get("hidden_act", "silu"), norm_eps=float(h.get("rms_norm_eps", 1e-8)), **kw,
        )  # fmt: skip


def from_hf_config(config: Mapping[str, Any]) -> LMConfig:
    """The LMConfig of an HF `MoshiConfig.to_dict()` (a `config.json` of MoshiForConditionalGeneration).

    Every layout transformers wrote reads as transformers 5 reads it: rope theta as `hf_rope` says; a
    `head_dim` or `num_key_value_heads` absent or null is derived; an absent `sliding_window` is MoshiConfig's 3000,
    a null one (4.x's "no window") or one of UNBOUNDED or more is none; the depth config may leave out the fields its
    parent sets (audio_vocab_size, input_size, vocab_size, num_codebooks).

    HF has no delays or padding id: the delays are Moshi's (text and each stream's first codebook 0, other codebooks 1)
    and the text padding id kyutai's 3. The depth stack has no context window (kyutai's LMModel drops it): a depth
    sliding_window shorter than its num_codebooks steps (HF's depth cache would drop keys) is refused.

    Raises:
        ValueError: keys missing, values of the wrong type, depth fields that contradict the parent's, or sizes that do
            not fit together (named by the config's keys).
    """
    d = dict(config)
    depth_cfg, mimi = d.get("depth_decoder_config"), d.get("audio_encoder_config")
    if not isinstance(depth_cfg, Mapping):
        raise ValueError("HF config: depth_decoder_config (a dict) is missing")
    at = "depth_decoder_config."
    problems = field_problems(d, HF_FIELDS)
    problems += field_problems(depth_cfg, HF_STACK_FIELDS | {"sliding_window": "int?"}, where=at)
    theta, theta_key, rope_problems = hf_rope(d)
    problems += rope_problems
    if not isinstance(mimi or {}, Mapping):
        problems.append(f"audio_encoder_config={mimi!r} is not a JSON object")
    elif not problems:
        problems += field_problems(mimi or {}, {"codebook_size": "int"}, where="audio_encoder_config.")
    card = d.get("audio_vocab_size") or (mimi or {}).get("codebook_size")
    missing = [k for k in ("vocab_size", "num_codebooks") if k not in d] + ([] if card else ["audio_vocab_size"])
    if missing or problems:
        raise ValueError("HF config: " + "; ".join([*problems, *([f"missing {missing}"] if missing else [])]))
    K = d["num_codebooks"]
    inherited = {"num_codebooks": K, "vocab_size": d["vocab_size"], "audio_vocab_size": card}
    inherited["input_size"] = d.get("hidden_size")
    clashes = [
        f"depth_decoder_config.{key}={depth_cfg[key]!r} but the parent says {want!r}"
        for key, want in inherited.items()
        if depth_cfg.get(key) is not None and depth_cfg[key] != want
    ]
    depth_window = depth_cfg.get("sliding_window", HF_WINDOWS[at])
    if depth_window is not None and depth_window < K:
        clashes.append(
            f"{at}sliding_window={depth_window} is shorter than num_codebooks={K} (HF's depth cache would drop the "
            "first codebooks' keys; the depth stack here sees every step)"
        )
    if clashes:
        raise ValueError("HF config: " + "; ".join(clashes))
    window = d.get("sliding_window", HF_WINDOWS[""])
    context = None if window is not None and window >= UNBOUNDED else window
    temporal = _hf_stack(d, "", theta_key=theta_key, rope=True, rope_theta=float(theta), context=context)
    depth = _hf_stack(depth_cfg, at, rope=False, context=None, num_codebooks=K, flexible=True)
    stream = (0,) + (1,) * (K - 1)
    with building("HF config", HF_LM_NAMES):
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
    """Rebuilds an LMConfig from `lm_config_to_dict`'s output.

    Raises:
        ValueError: not a dict, unknown or missing fields, values of the wrong JSON type, or values the config refuses
            (each named by its dotted field, e.g. `temporal.dim`).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"LMConfig dict: got {type(d).__name__}, not a JSON object")
    problems = dataclass_problems(d, LMConfig, where="")
    if problems:
        raise ValueError("LMConfig dict: " + "; ".join(problems))
    fields = dict(d)
    stacks = {}
    for name in ("temporal", "depth"):
        stack = dict(fields.pop(name))
        if isinstance(stack.get("ffn_dims"), list):  # JSON has no tuples
            stack["ffn_dims"] = tuple(stack["ffn_dims"])
        with building(f"LMConfig dict ({name})", {f: f"{name}.{f}" for f in stack}):
            stacks[name] = TransformerConfig(**stack)
    if isinstance(fields.get("depth_schedule"), list):  # JSON has no tuples
        fields["depth_schedule"] = tuple(fields["depth_schedule"])
    with building("LMConfig dict", {}):
        return LMConfig(**stacks, delays=tuple(fields.pop("delays")), **fields)


def config_kind(d: object) -> str:
    """Which kind of LM config a parsed JSON is: "kyutai" (LMModel kwargs), "hf" (MoshiConfig) or "lm_config" (ours).

    Raises:
        ValueError: none of them (or ambiguous), naming the keys each kind needs.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"LM config JSON must be an object, got {type(d).__name__}")
    kinds = []
    if "num_layers" in d or ("dim" in d and "n_q" in d):  # num_layers: the one key LMModel kwargs always hold
        kinds.append("kyutai")
    if "depth_decoder_config" in d or ("hidden_size" in d and "num_codebooks" in d):
        kinds.append("hf")
    if "temporal" in d and "depth" in d:
        kinds.append("lm_config")
    if len(kinds) != 1:
        raise ValueError(
            f"cannot tell which LM config this is ({'ambiguous: ' + ', '.join(kinds) if kinds else 'none matches'}): "
            "kyutai LMModel kwargs have 'num_layers' (moshi.models.loaders._lm_kwargs), an HF MoshiConfig has "
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
