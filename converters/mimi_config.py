"""Mimi configs from files: kyutai's `get_mimi` config dict (the layout of `moshi.models.loaders._mimi_config`, a
kyutai repository's `mimi_config_name` file) and our own MimiConfig dict (a record's `mimi_config`), and the kyutai
dict written back for kyutai's loader.

As for LM configs (converters/lm_config.py): every problem of a file is reported together, named as the file names it
(`transformer.d_model`, `seanet.pad_mode`, `quantizer.n_q`), an absent key means what kyutai builds for it (its
modules' defaults, not the released Mimi's), and a setting this port does not implement is refused by name. Plain
JSON: neither torch nor moshi is imported.

kyutai's dict has no `num_codebooks` (the codes `encode` emits are `get_mimi`'s argument, 8 by default): it reads as
min(8, n_q), and writing a config leaves it out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from converters.config_fields import building, dataclass_problems, differences, field_problems
from moshi_spec.config import TransformerConfig
from moshi_spec.mimi import MimiConfig, SEANetConfig

KYUTAI_NUM_CODEBOOKS = 8
"""`loaders.get_mimi`'s default num_codebooks (clipped to n_q when a config has fewer codebooks)."""
KYUTAI_MIMI_NORM_EPS = 1e-5
"""kyutai's Mimi transformer: `layer_norm` (nn.LayerNorm's eps 1e-5), plain GELU FFN, interleaved rope."""
KYUTAI_CODEBOOK_EPS = 1e-5
"""kyutai's EuclideanCodebook epsilon (the clamp of the cluster usage)."""

KYUTAI_TOP = ("sample_rate", "channels", "frame_rate", "seanet", "transformer", "quantizer")
"""Top-level keys of get_mimi's config dict; it reads every one of them."""
KYUTAI_TOP_FIELDS = {"sample_rate": "int", "channels": "int", "frame_rate": "num"}

# Each section: (defaults of the kyutai module for an absent key, field kinds, {key: (default, supported values)},
# keys with no effect on the weights or on this port). SEANet: SEANetEncoder / SEANetDecoder's signature.
SEANET_DEFAULTS: dict[str, Any] = {
    "channels": 1, "dimension": 128, "n_filters": 32, "n_residual_layers": 3, "ratios": [8, 5, 4, 2],
    "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_base": 2, "compress": 2,
    "pad_mode": "reflect",
}  # fmt: skip
SEANET_FIELDS = {
    **dict.fromkeys(
        "channels dimension n_filters n_residual_layers kernel_size last_kernel_size residual_kernel_size "
        "dilation_base compress".split(),
        "int",
    ),
    "ratios": "ints",
    "pad_mode": "str",
}
SEANET_SUPPORTED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "causal": (False, (True,)),
    "activation": ("ELU", ("ELU",)),
    "activation_params": ({"alpha": 1.0}, ({"alpha": 1.0},)),
    "norm": ("none", ("none",)),  # released weights are weight-norm folded: plain convolutions
    "true_skip": (True, (True,)),
    "final_activation": (None, (None,)),
    "final_activation_params": (None, (None,)),
    "trim_right_ratio": (1.0, (1.0,)),
    "mask_fn": (None, (None,)),
    "mask_position": (None, (None,)),
}
SEANET_IGNORED = frozenset({"norm_params", "disable_norm_outer_blocks"})  # no effect with norm "none"

# Transformer: ProjectedTransformer -> StreamingTransformer -> StreamingTransformerLayer.
TRANSFORMER_REQUIRED = ("d_model", "num_heads", "num_layers", "input_dimension", "output_dimensions")
TRANSFORMER_DEFAULTS: dict[str, Any] = {"dim_feedforward": 2048, "context": None, "max_period": 10_000}
TRANSFORMER_FIELDS = {
    **dict.fromkeys("d_model num_heads num_layers input_dimension".split(), "int"),
    "context": "int?",
    "max_period": "num",
    "layer_scale": "num",
}
TRANSFORMER_SUPPORTED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "conv_layout": (False, (True,)),
    "causal": (False, (True,)),
    "positional_embedding": ("sin", ("rope",)),
    "norm": ("layer_norm", ("layer_norm",)),
    "gating": ("none", ("none",)),
    "kv_repeat": (1, (1,)),
    "positional_scale": (1.0, (1.0,)),
    "weights_per_step": (0, (0,)),
    "weights_per_step_schedule": (None, (None,)),
    "cross_attention": (False, (False,)),
    "skip_self_attn": (False, (False,)),
    "quantize": (False, (False,)),
}
TRANSFORMER_IGNORED = frozenset({"betas", "checkpointing", "device", "dtype"})  # optimiser / training / placement

# Quantizer: SplitResidualVectorQuantizer -> ResidualVectorQuantizer.
QUANTIZER_DEFAULTS: dict[str, Any] = {
    "dimension": 128, "n_q": 8, "bins": 1024, "n_q_semantic": 1, "input_dimension": None, "output_dimension": None,
}  # fmt: skip
QUANTIZER_FIELDS = {
    **dict.fromkeys("dimension n_q bins n_q_semantic".split(), "int"),
    **dict.fromkeys("input_dimension output_dimension".split(), "int?"),
}
QUANTIZER_SUPPORTED: dict[str, tuple[Any, tuple[Any, ...]]] = {}
QUANTIZER_IGNORED = frozenset(  # training only: dropout of codebooks, EMA updates of the codebooks
    {"q_dropout", "no_quantization_rate", "decay", "threshold_usage_ratio", "replaced_usage_ratio"}
)

SECTIONS = {
    "seanet": (SEANET_DEFAULTS, SEANET_FIELDS, SEANET_SUPPORTED, SEANET_IGNORED, ()),
    "transformer": (TRANSFORMER_DEFAULTS, TRANSFORMER_FIELDS, TRANSFORMER_SUPPORTED, TRANSFORMER_IGNORED,
                    TRANSFORMER_REQUIRED),
    "quantizer": (QUANTIZER_DEFAULTS, QUANTIZER_FIELDS, QUANTIZER_SUPPORTED, QUANTIZER_IGNORED, ()),
}  # fmt: skip

KYUTAI_TRANSFORMER_NAMES = {
    "dim": "transformer.d_model", "num_heads": "transformer.num_heads", "num_layers": "transformer.num_layers",
    "ffn_dim": "transformer.dim_feedforward", "rope_theta": "transformer.max_period", "context": "transformer.context",
}  # fmt: skip
KYUTAI_MIMI_NAMES = {
    "sample_rate": "sample_rate", "frame_rate": "frame_rate", "layer_scale": "transformer.layer_scale",
    "codebook_dim": "quantizer.dimension", "bins": "quantizer.bins", "n_q": "quantizer.n_q",
    "n_q_semantic": "quantizer.n_q_semantic", "transformer.dim": "transformer.d_model",
    "num_codebooks": "quantizer.n_q (get_mimi's num_codebooks, min(8, n_q))",
}  # fmt: skip
WHERE = "kyutai Mimi config"


def _section_problems(name: str, raw: Any) -> tuple[dict[str, Any], list[str]]:
    """(the section with kyutai's defaults filled in, its problems named `{name}.{key}`)."""
    defaults, fields, supported, ignored, required = SECTIONS[name]
    if not isinstance(raw, Mapping):
        return {}, [f"{name}={raw!r} is not a JSON object"[:200]]
    d = defaults | dict(raw)
    at = f"{name}."
    problems = [f"{at}{key}: missing (required)" for key in required if key not in raw]
    unknown = sorted(set(d) - set(defaults) - set(fields) - set(supported) - ignored - set(required))
    problems += [f"{at}{key}: unknown key" for key in unknown]
    problems += field_problems(d, fields, where=at)
    for key, (default, allowed) in supported.items():
        if d.get(key, default) not in allowed:
            problems.append(f"{at}{key}={d.get(key, default)!r} is not supported (supported: {list(allowed)})")
    return d, problems


def from_kyutai_mimi_config(config: Mapping[str, Any]) -> MimiConfig:
    """The MimiConfig of kyutai `loaders.get_mimi(filename, config)` (the layout of `loaders._mimi_config`).

    Raises:
        ValueError: keys missing or unknown, values of the wrong type, settings this port does not implement, or sizes
            that do not fit together (listed together, named by the config's keys).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{WHERE}: got {type(config).__name__}, not a JSON object")
    problems = [f"missing required key {key!r}" for key in KYUTAI_TOP if key not in config]
    problems += [f"unknown key {key!r}" for key in sorted(set(config) - set(KYUTAI_TOP))]
    problems += field_problems(config, KYUTAI_TOP_FIELDS)
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        if name in config:
            sections[name], found = _section_problems(name, config[name])
            problems += found
    if problems:
        raise ValueError(f"{WHERE}: " + "; ".join(problems))
    s, t, q = sections["seanet"], sections["transformer"], sections["quantizer"]
    dim = s["dimension"]
    if config["channels"] != s["channels"]:
        problems.append(f"channels={config['channels']} differs from seanet.channels={s['channels']}")
    for key, value in (("transformer.d_model", t["d_model"]), ("transformer.input_dimension", t["input_dimension"])):
        if value != dim:  # kyutai would add projections this port does not have
            problems.append(f"{key}={value} differs from seanet.dimension={dim} (no projections in this port)")
    if t["output_dimensions"] != [dim]:
        problems.append(f"transformer.output_dimensions={t['output_dimensions']!r} is not [seanet.dimension] = [{dim}]")
    if "layer_scale" not in t or t["layer_scale"] is None:
        problems.append("transformer.layer_scale: missing or null (a Mimi without LayerScale is not supported)")
    if isinstance(t.get("dim_feedforward"), list):
        problems.append("transformer.dim_feedforward: per-step widths (a list) are not supported")
    else:
        problems += field_problems(t, {"dim_feedforward": "int"}, where="transformer.")
    for key in ("input_dimension", "output_dimension"):
        if q[key] not in (None, dim):
            problems.append(f"quantizer.{key}={q[key]} differs from seanet.dimension={dim}")
    ratios = s["ratios"]
    if ratios and all(r >= 1 for r in ratios):
        hop = 1
        for r in ratios:
            hop *= r
        if config["sample_rate"] == config["frame_rate"] * hop:
            problems.append(
                f"sample_rate / frame_rate = {config['sample_rate'] / config['frame_rate']:g} equals the SEANet hop "
                f"{hop}: kyutai builds no resampling then, which this port does not implement"
            )
    if problems:
        raise ValueError(f"{WHERE}: " + "; ".join(problems))

    seanet_fields = [f.name for f in dataclasses.fields(SEANetConfig)]
    errors: list[str] = []
    with _collecting(errors), building(f"{WHERE} (seanet)", {f: f"seanet.{f}" for f in seanet_fields}):
        seanet = SEANetConfig(**{f: tuple(s[f]) if f == "ratios" else s[f] for f in seanet_fields})
    with _collecting(errors), building(f"{WHERE} (transformer)", KYUTAI_TRANSFORMER_NAMES):
        transformer = TransformerConfig(
            dim=t["d_model"], num_heads=t["num_heads"], num_layers=t["num_layers"], ffn_dim=t["dim_feedforward"],
            activation="gelu", norm_eps=KYUTAI_MIMI_NORM_EPS, rope=True, rope_theta=float(t["max_period"]),
            rope_layout="interleaved", context=t["context"],
        )  # fmt: skip
    if errors:  # the sections' own problems, both of them, before the model's ties between them
        raise ValueError("; ".join(errors))
    with building(WHERE, KYUTAI_MIMI_NAMES):
        return MimiConfig(
            sample_rate=config["sample_rate"], frame_rate=float(config["frame_rate"]), seanet=seanet,
            transformer=transformer, layer_scale=float(t["layer_scale"]), codebook_dim=q["dimension"], bins=q["bins"],
            n_q=q["n_q"], n_q_semantic=q["n_q_semantic"], num_codebooks=min(KYUTAI_NUM_CODEBOOKS, q["n_q"]),
            codebook_eps=KYUTAI_CODEBOOK_EPS,
        )  # fmt: skip


@contextmanager
def _collecting(errors: list[str]) -> Iterator[None]:
    """Appends a ValueError raised inside to `errors` instead of raising it."""
    try:
        yield
    except ValueError as err:
        errors.append(str(err))


def to_kyutai_mimi_config(cfg: MimiConfig) -> dict[str, Any]:
    """kyutai's get_mimi config dict for cfg, in the layout of `loaders._mimi_config` (`n_q_semantic` only when not
    kyutai's default 1).

    Raises:
        ValueError: kyutai's Mimi cannot express cfg (its transformer's norm eps, activation, grouped kv heads or
            head width, its codebooks' eps), naming each field it would lose.
    """
    s, t = cfg.seanet, cfg.transformer
    written = {
        "sample_rate": cfg.sample_rate,
        "channels": s.channels,
        "frame_rate": cfg.frame_rate,
        "seanet": {
            "channels": s.channels, "dimension": s.dimension, "causal": True, "n_filters": s.n_filters,
            "n_residual_layers": s.n_residual_layers, "activation": "ELU", "compress": s.compress,
            "dilation_base": s.dilation_base, "disable_norm_outer_blocks": 0, "kernel_size": s.kernel_size,
            "residual_kernel_size": s.residual_kernel_size, "last_kernel_size": s.last_kernel_size, "norm": "none",
            "pad_mode": s.pad_mode, "ratios": list(s.ratios), "true_skip": True,
        },
        "quantizer": {
            "dimension": cfg.codebook_dim, "n_q": cfg.n_q, "bins": cfg.bins, "input_dimension": s.dimension,
            "output_dimension": s.dimension,
        } | ({"n_q_semantic": cfg.n_q_semantic} if cfg.n_q_semantic != 1 else {}),
        "transformer": {
            "d_model": t.dim, "num_heads": t.num_heads, "num_layers": t.num_layers, "causal": True,
            "layer_scale": cfg.layer_scale, "context": t.context, "conv_layout": True, "max_period": t.rope_theta,
            "gating": "none", "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": t.ffn_dim,
            "input_dimension": s.dimension, "output_dimensions": [s.dimension],
        },
    }  # fmt: skip
    back = from_kyutai_mimi_config(written).replace(num_codebooks=cfg.num_codebooks)
    lost = differences(mimi_config_to_dict(cfg), mimi_config_to_dict(back))
    if lost:
        raise ValueError("kyutai's get_mimi config cannot express this MimiConfig: " + "; ".join(lost))
    return written


def mimi_config_to_dict(cfg: MimiConfig) -> dict[str, Any]:
    """A JSON-ready dict of the MimiConfig (inverse: `mimi_config_from_dict`)."""
    d = dataclasses.asdict(cfg)
    d["seanet"]["ratios"] = list(cfg.seanet.ratios)
    return d


def mimi_config_from_dict(d: Any) -> MimiConfig:
    """Rebuilds a MimiConfig from `mimi_config_to_dict`'s output.

    Raises:
        ValueError: not a dict, unknown or missing fields, values of the wrong JSON type, or values the config refuses
            (each named by its dotted field, e.g. `seanet.ratios`, `transformer.dim`).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"MimiConfig dict: got {type(d).__name__}, not a JSON object")
    problems = dataclass_problems(d, MimiConfig, where="")
    if problems:
        raise ValueError("MimiConfig dict: " + "; ".join(problems))
    fields = dict(d)
    nested: dict[str, Any] = {}
    if "seanet" in fields:
        seanet = dict(fields.pop("seanet"))
        if "ratios" in seanet:
            seanet["ratios"] = tuple(seanet["ratios"])
        with building("MimiConfig dict (seanet)", {f: f"seanet.{f}" for f in seanet}):
            nested["seanet"] = SEANetConfig(**seanet)
    if "transformer" in fields:
        transformer = fields.pop("transformer")
        with building("MimiConfig dict (transformer)", {f: f"transformer.{f}" for f in transformer}):
            nested["transformer"] = TransformerConfig(**transformer)
    with building("MimiConfig dict", {}):
        return MimiConfig(**nested, **fields)


def mimi_config_kind(d: object) -> str | None:
    """Which kind of Mimi config a parsed JSON is: "kyutai_mimi" (get_mimi's dict: `seanet` and `quantizer`),
    "mimi_config" (ours: `seanet` and `codebook_dim`), "hf_mimi" (an HF MimiConfig, `model_type` "mimi"), or None
    (no Mimi config)."""
    if not isinstance(d, Mapping):
        return None
    if d.get("model_type") == "mimi":
        return "hf_mimi"
    if "seanet" in d and "quantizer" in d:
        return "kyutai_mimi"
    if "seanet" in d and "codebook_dim" in d:
        return "mimi_config"
    return None


def mimi_config_from_json(d: object) -> tuple[MimiConfig, str]:
    """(MimiConfig, kind) of a parsed Mimi config JSON of a kind `mimi_config_kind` recognizes.

    Raises:
        ValueError: no Mimi config, or the config's problems.
    """
    kind = mimi_config_kind(d)
    if kind == "kyutai_mimi":
        assert isinstance(d, Mapping)
        return from_kyutai_mimi_config(d), kind
    if kind == "mimi_config":
        return mimi_config_from_dict(d), kind
    if kind == "hf_mimi":
        from converters.mimi_hf_config import from_hf_mimi_config  # it imports this module

        assert isinstance(d, Mapping)
        return from_hf_mimi_config(d), kind
    raise ValueError("not a Mimi config: kyutai's get_mimi config has 'seanet' and 'quantizer', a moshi_parity "
                     "MimiConfig dict 'seanet' and 'codebook_dim'")  # fmt: skip
