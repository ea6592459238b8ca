"""The config dataclasses reject every value that cannot work, at construction, naming the field and the value.

One row per class of bad value (wrong type, out of range, inconsistent with another field), each built through
`replace` from a valid config; then every valid config the tree builds still constructs, and one error lists all of a
config's problems.
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.lm_config import lm_config_from_dict, lm_config_to_dict
from moshi_spec import ConfigError, ConfigTypeError, LMConfig, TransformerConfig
from parity.harness.converter_cases import CONFIGS
from parity.harness.strategies import configs

PLAIN = TransformerConfig(dim=32, num_heads=4, num_layers=1, ffn_dim=64)
TINY = LMConfig.tiny()
TYPE, VALUE = TypeError, ValueError

# (field, bad value, error class, message fragment): the fragment names the field and shows the value. Each row failed
# on main (accepted, a crash such as "'>' not supported", or other words) except the three marked, whose words are kept.
TRANSFORMER = [
    ("dim", "64", TYPE, "dim must be an int, got '64' (str)"),
    ("dim", 32.0, TYPE, "dim must be an int, got 32.0 (float)"),
    ("num_layers", True, TYPE, "num_layers must be an int, got True (bool)"),
    ("ffn_dim", np.int64(64), TYPE, "ffn_dim must be an int, got np.int64(64) (numpy.int64); convert with int()"),
    ("head_dim_override", 8.0, TYPE, "head_dim_override must be an int or None, got 8.0 (float)"),
    ("context", "8", TYPE, "context must be an int or None, got '8' (str)"),
    ("norm_eps", "1e-8", TYPE, "norm_eps must be a float, got '1e-8' (str)"),
    ("rope_theta", np.float32(500), TYPE, "rope_theta must be a float, got np.float32(500.0) (numpy.float32); conv"),
    ("rope", 1, TYPE, "rope must be a bool, got 1 (int)"),
    ("flexible", "yes", TYPE, "flexible must be a bool, got 'yes' (str)"),
    ("activation", None, TYPE, "unknown activation None; known: ('silu'"),
    ("rope_layout", 0, TYPE, "unknown rope_layout 0; known: ('half', 'interleaved')"),
    ("norm", "layernorm", VALUE, "unknown norm 'layernorm'; known: ('rms_norm', 'rms_norm_f32', 'layer_norm'"),
    ("num_layers", 0, VALUE, "num_layers must be >= 1, got 0"),
    ("num_codebooks", -3, VALUE, "num_codebooks must be >= 1, got -3"),
    ("head_dim_override", 0, VALUE, "head_dim_override must be >= 1 or None, got 0"),
    ("head_dim_override", -4, VALUE, "head_dim_override must be >= 1 or None, got -4"),
    ("num_kv_heads_override", 0, VALUE, "num_kv_heads_override must be >= 1 or None, got 0"),
    ("context", 0, VALUE, "context must be >= 1 or None, got 0"),
    ("norm_eps", -1e-6, VALUE, "norm_eps must be >= 0, got -1e-06"),  # main: the same words, no .problems
    ("norm_eps", math.nan, VALUE, "norm_eps must be finite, got nan"),
    ("rope_theta", 1.0, VALUE, "rope_theta must be > 1, got 1.0"),
    ("rope_theta", math.inf, VALUE, "rope_theta must be finite, got inf"),
    ("gated", 0, TYPE, "gated must be a bool, got 0 (int)"),
    ("layer_scale", "0.1", TYPE, "layer_scale must be a float, got '0.1' (str)"),
    ("layer_scale", math.inf, VALUE, "layer_scale must be finite, got inf"),
    (
        "ffn_dim",
        63,
        VALUE,
        "ffn_dim must be even (gate and value halves), got 63",
    ),  # main: the same words, no .problems
    ("num_heads", 5, VALUE, "dim 32 is not divisible by num_heads 5 (head_dim would be 6.4)"),
    ("num_heads", 64, VALUE, "dim 32 is not divisible by num_heads 64 (head_dim would be 0.5)"),
    ("num_heads", 32, VALUE, "rope needs an even head_dim, got 1 (dim 32 // num_heads 32)"),
    ("head_dim_override", 5, VALUE, "rope needs an even head_dim, got 5 (head_dim_override 5)"),
    ("num_kv_heads_override", 3, VALUE, "num_heads 4 is not a multiple of num_kv_heads_override 3"),
    ("num_kv_heads_override", 8, VALUE, "num_heads 4 is not a multiple of num_kv_heads_override 8"),
]

LM = [
    ("n_q", "8", TYPE, "n_q must be an int, got '8' (str)"),
    ("card", 32.0, TYPE, "card must be an int, got 32.0 (float)"),
    ("depformer_norm", "rms", VALUE, "unknown depformer_norm 'rms'; known: ('rms_norm', 'rms_norm_f32'"),
    ("norm_emb", 1, TYPE, "norm_emb must be a bool, got 1 (int)"),
    ("delays", [0] * 9, TYPE, "delays must be a tuple of ints, got [0, 0, 0, 0, 0, 0, 0, 0, 0] (list)"),
    ("delays", (0, 0, 1.0, 1, 1, 0, 1, 1, 1), TYPE, "delays[2] must be an int, got 1.0 (float)"),
    ("temporal", {"dim": 32}, TYPE, "temporal must be a TransformerConfig, got {'dim': 32} (dict)"),
    ("text_card", -5, VALUE, "text_card must be >= 1, got -5"),
    ("card", 0, VALUE, "card must be >= 1, got 0"),
    ("dep_q", 0, VALUE, "dep_q must be >= 1, got 0"),
    ("delays", (0, 0, -1, 1, 1, 0, 1, 1, 1), VALUE, "delays[2] must be >= 0, got -1"),
    ("delays", (0, 0, 1, 1, 1, 0, 1, 1), VALUE, "delays has 8 entries (0, 0, 1, 1, 1, 0, 1, 1), expected 1 + n_q = 9"),
    ("n_q", 9, VALUE, "delays has 9 entries (0, 0, 1, 1, 1, 0, 1, 1, 1), expected 1 + n_q = 10"),
    ("dep_q", 9, VALUE, "dep_q 9 exceeds n_q 8"),  # main: the same words, no .problems
    ("dep_q", 3, VALUE, "depth.num_codebooks 4 must equal dep_q 3"),
    ("existing_text_padding_id", -1, VALUE, "existing_text_padding_id must be >= 0, got -1"),
    ("existing_text_padding_id", 48, VALUE, "existing_text_padding_id must be a text token (< text_card 48), got 48"),
    ("depth", TINY.depth.replace(flexible=False), VALUE, "depth.num_codebooks must be 1 when depth.flexible is False"),
    ("depth_schedule", (0, 1, 1), VALUE, "depth_schedule has 3 entries (0, 1, 1), expected one weight set per"),
    ("depth_schedule", (0, 1, 2, 0), VALUE, "depth.num_codebooks 4 must equal max(depth_schedule (0, 1, 2, 0)) + 1"),
    ("depth_low_rank", 0, VALUE, "depth_low_rank must be >= 1 or None, got 0"),
    ("temporal", TINY.depth, VALUE, "temporal.flexible must be False (the LM runs its temporal layers without"),
    ("depth", TINY.depth.replace(gated=False), VALUE, "depth.gated must be True: kyutai's depformer (a weight set per"),
]


def expect_problem(base, field: str, value, error: type[Exception], fragment: str) -> None:
    """base.replace(field=value) raises `error` whose message holds `fragment`: one problem, its field named there."""
    with pytest.raises(error) as info:
        base.replace(**{field: value})
    assert fragment in str(info.value), str(info.value)
    assert isinstance(info.value, ConfigError)
    (problem,) = info.value.problems
    assert problem.field in fragment and problem.wrong_type == (error is TYPE)
    assert str(info.value).startswith(f"{type(base).__name__}: ")


@pytest.mark.parametrize(("field", "value", "error", "fragment"), TRANSFORMER, ids=[row[3][:40] for row in TRANSFORMER])
def test_transformer_config_rejects(field, value, error, fragment):
    expect_problem(PLAIN, field, value, error, fragment)


@pytest.mark.parametrize(("field", "value", "error", "fragment"), LM, ids=[row[3][:40] for row in LM])
def test_lm_config_rejects(field, value, error, fragment):
    expect_problem(TINY, field, value, error, fragment)


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        TransformerConfig(dim="64", num_heads=0, num_layers=1.5, ffn_dim=63, norm_eps=-1.0, context=0, rope=None)
    fields = [p.field for p in info.value.problems]
    assert sorted(fields) == sorted(["dim", "num_heads", "num_layers", "ffn_dim", "norm_eps", "context", "rope"])
    assert str(info.value).startswith("TransformerConfig: 7 problems: ")
    assert not isinstance(info.value, TypeError)  # a TypeError only when every problem is a wrong type
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # crosses processes (xdist, remote adapters)
    with pytest.raises(ConfigTypeError, match=r"2 problems: n_q must be an int.*; card must be an int"):
        TINY.replace(n_q=8.0, card="32")
    with pytest.raises(ConfigError) as info:
        TINY.replace(card=0, text_card=0, delays=(0, -1, -2), dep_q=3)
    message = str(info.value)
    for fragment in ("card must be >= 1, got 0", "text_card must be >= 1", "delays[1] must be >= 0, got -1",
                     "delays[2] must be >= 0, got -2", "depth.num_codebooks 4 must equal dep_q 3"):  # fmt: skip
        assert fragment in message, message


def test_rules_between_fields_skip_fields_that_are_already_bad():
    """dim 30 / 4 heads is one problem (not also an odd floored head_dim); a bad dep_q is not compared to depth."""
    with pytest.raises(ConfigError) as info:
        PLAIN.replace(dim=30)
    assert [p.field for p in info.value.problems] == ["num_heads"]
    with pytest.raises(ConfigError) as info:
        TINY.replace(dep_q="4")
    assert [p.field for p in info.value.problems] == ["dep_q"]


def test_float_fields_take_ints_and_store_floats():
    cfg = PLAIN.replace(norm_eps=0, rope_theta=np.float64(500))
    assert type(cfg.norm_eps) is float and type(cfg.rope_theta) is float and cfg.rope_theta == 500.0
    assert cfg == PLAIN.replace(norm_eps=0.0, rope_theta=500.0)


def test_norm_eps_follows_the_kind_unless_given():
    """kyutai fixes the eps per norm kind: a config takes the kind's unless it names another (HF's is free; kyutai
    refuses it, converters/upstream_config.kyutai_norm_problem), and a new kind brings its eps along."""
    assert (PLAIN.norm, PLAIN.norm_eps) == ("rms_norm_f32", 1e-8)
    assert PLAIN.replace(norm="layer_norm").norm_eps == 1e-5
    assert PLAIN.replace(norm="layer_norm").replace(norm="layer_norm_f32").norm_eps == 1e-8
    assert PLAIN.replace(norm_eps=1e-6).replace(norm="layer_norm").norm_eps == 1e-6  # a chosen eps stays
    assert TINY.with_norm("rms_norm").depth.norm_eps == 1e-5
    assert TINY.with_norm("layer_norm").num_params() == TINY.num_params() + 32 * 5 + 16 * 4  # a bias per norm
    out = TINY.replace(depformer_norm="layer_norm_f32").depth_out_norm  # kyutai's depformer_norms: the kind's eps
    assert (out.norm, out.norm_eps, out.dim) == ("layer_norm_f32", 1e-8, 16) and TINY.depth_out_norm is None


def test_plain_mlp_width_and_layer_scales():
    """A plain MLP (kyutai gating="none") has hidden == ffn_dim, odd widths included; layer scales (kyutai's
    layer_scale) add two (D,) scales per layer to num_params; both default to Moshi-7B's (gated, none)."""
    assert (PLAIN.gated, PLAIN.layer_scale) == (True, None)
    plain = PLAIN.replace(gated=False, ffn_dim=81, activation="gelu")
    assert plain.hidden == 81 and PLAIN.replace(ffn_dim=82).hidden == 41
    scaled = PLAIN.replace(layer_scale=1e-4)
    assert scaled.layer_scale == 1e-4 and scaled.num_params() - PLAIN.num_params() == 2 * PLAIN.dim * PLAIN.num_layers


def test_presets_and_tree_configs_construct():
    for cfg in (LMConfig.tiny(), LMConfig.tiny(context=None), LMConfig.small(), LMConfig.moshi_7b()):
        assert lm_config_from_dict(json.loads(json.dumps(lm_config_to_dict(cfg)))) == cfg  # as the CLI writes, reads
    assert {LMConfig.preset(name) for name in ("tiny", "small", "moshi_7b")}
    assert all(isinstance(param.values[0], TransformerConfig) for param in CONFIGS)
    # head_dim != dim / heads, grouped kv heads, no rope with an odd derived head_dim
    PLAIN.replace(num_heads=2, head_dim_override=4, num_kv_heads_override=1, dim=16)
    PLAIN.replace(num_heads=32, rope=False, flexible=True, num_codebooks=8)


@settings(max_examples=60)
@given(st.one_of(configs(), configs(kyutai=True), configs(flexible=True, rope=True)))
def test_every_drawn_config_constructs(cfg):
    assert cfg.replace() == cfg and cfg.q_dim == cfg.num_heads * cfg.head_dim
