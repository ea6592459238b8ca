"""Converters on their own: bit-exact round trips between kyutai, hf, ref and flax (prefixes kept, instances apart,
shortest paths); the layouts the tables produce; kyutai's legacy names; strict accounting (every problem listed, never a
silent cast) with registry, path and component errors; the engine taking any component kind and config (a throwaway
codec-like kind registered here) and knowing no config type.

Checks against the real kyutai and HF modules are in test_converters_upstream.py; shared cases in converter_cases.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from converters import (
    Component,
    ConversionError,
    Format,
    convert,
    convert_shapes,
    expected_shapes,
    find_path,
    register,
    register_component,
    register_condition,
    register_format,
    register_pairs,
    register_transform,
    registry,
    rules,
    to_torch,
    transforms,
)
from converters.edges import FunctionEdge, TableEdge
from converters.layers import LAYER_COMPONENTS
from converters.rules import Pair, Rule, apply_rules
from parity.harness.converter_cases import (
    CONFIGS,
    DTYPES,
    ROPES,
    SHAPES,
    assert_bit_equal,
    legacy,
    make_cfg,
    random_state,
)

# ----------------------------------------------------------------------------------------------------------------------
# Round trips

ROUND_TRIPS = [("hf", "ref"), ("ref", "flax"), ("kyutai", "hf"), ("hf", "flax"), ("kyutai", "flax"), ("flax", "kyutai")]


# kyutai has no standalone flexible linear (it uses per-step ModuleLists), so those combinations are not generated.
TRIPS = [
    (a, b, c) for a, b in ROUND_TRIPS for c in LAYER_COMPONENTS if not (c == "flexible_linear" and "kyutai" in (a, b))
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize(("src", "dst", "component"), TRIPS, ids=[f"{a}-{b}-{a}-{c}" for a, b, c in TRIPS])
def test_round_trip_is_bit_exact(src, dst, component, cfg, dtype):
    state = random_state(src, component, cfg, dtype)
    there = convert(state, src=src, dst=dst, cfg=cfg, component=component)
    assert {v.dtype for v in there.values()} == {DTYPES[dtype]}
    assert_bit_equal(convert(there, src=dst, dst=src, cfg=cfg, component=component), state)


@pytest.mark.parametrize("component", ["decoder_layer", "attention"])
def test_prefixes_are_kept_and_instances_stay_apart(component):
    cfg = make_cfg(flexible=True, rope="interleaved")
    prefixes = ("model.layers.0.", "model.layers.1.")
    state = random_state("kyutai", component, cfg, prefixes=prefixes)
    whole = convert(state, src="kyutai", dst="flax", cfg=cfg, component=component)
    for prefix in prefixes:
        one = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        alone = convert(one, src="kyutai", dst="flax", cfg=cfg, component=component)
        assert_bit_equal({k[len(prefix) :]: v for k, v in whole.items() if k.startswith(prefix)}, alone)
    assert len(whole) == 2 * len(expected_shapes("flax", component, cfg))


def test_paths_are_shortest_through_registered_edges():
    assert find_path("hf", "flax", "attention") == ["hf", "ref", "flax"]
    assert find_path("kyutai", "flax", "decoder_layer") == ["kyutai", "hf", "ref", "flax"]
    assert find_path("flax", "kyutai", "rmsnorm") == ["flax", "ref", "hf", "kyutai"]
    cfg = make_cfg(rope="interleaved")
    state = random_state("hf", "decoder_layer", cfg)
    via_ref = convert(convert(state, src="hf", dst="ref", cfg=cfg, component="decoder_layer"), src="ref", dst="flax",
                      cfg=cfg, component="decoder_layer")  # fmt: skip
    assert_bit_equal(convert(state, src="hf", dst="flax", cfg=cfg, component="decoder_layer"), via_ref)


def test_same_format_validates_and_copies():
    cfg = make_cfg()
    state = random_state("hf", "attention", cfg)
    out = convert(state, src="hf", dst="hf", cfg=cfg, component="attention")
    assert out is not state
    assert_bit_equal(out, state)


# ----------------------------------------------------------------------------------------------------------------------
# The layouts themselves


def test_rope_permutation_moves_rows_as_specified():
    w = np.arange(16, dtype=np.float32).reshape(16, 1)  # 2 heads of head_dim 8
    half = transforms.interleaved_to_half(w, 2)[:, 0]
    assert half.tolist() == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]
    assert np.array_equal(transforms.half_to_interleaved(transforms.interleaved_to_half(w, 2), 2), w)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rope", ROPES)
def test_kyutai_rows_reach_ref_in_ref_layout(rope, shape):
    """kyutai is interleaved; ref holds cfg.rope_layout: interleaved ref rows are kyutai's rows untouched."""
    cfg = make_cfg(rope=rope, shape=shape)
    state = random_state("kyutai", "attention", cfg)
    ref = convert(state, src="kyutai", dst="ref", cfg=cfg, component="attention")
    fused = state["in_projs.0.weight"]
    q, k, v = np.split(fused, [cfg.q_dim, cfg.q_dim + cfg.kv_dim])
    if rope != "half":  # no rope, or interleaved on both sides: rows untouched
        expected = {"q": q, "k": k}
    else:
        expected = {"q": transforms.interleaved_to_half(q, 4), "k": transforms.interleaved_to_half(k, cfg.num_kv_heads)}
    assert np.array_equal(ref["q_proj.weight"], expected["q"])
    assert np.array_equal(ref["k_proj.weight"], expected["k"])
    assert np.array_equal(ref["v_proj.weight"], v)
    assert np.array_equal(ref["o_proj.weight"], state["out_projs.0.weight"])


def test_flax_kernels_are_transposed_and_stacks_keep_their_axis():
    cfg = make_cfg(flexible=True)
    state = random_state("ref", "gating_mlp", cfg)
    flax = convert(state, src="ref", dst="flax", cfg=cfg, component="gating_mlp")
    assert np.array_equal(flax["fc1.kernel"][1], state["fc1.weight"][1].T)
    flex = convert(
        random_state("hf", "flexible_linear", cfg), src="hf", dst="flax", cfg=cfg, component="flexible_linear"
    )
    assert flex["kernel"].shape == (3, 7, 5)


def test_kyutai_flexible_weights_stack_in_codebook_order():
    cfg = make_cfg(flexible=True, rope="norope")
    state = random_state("kyutai", "decoder_layer", cfg)
    hf = convert(state, src="kyutai", dst="hf", cfg=cfg, component="decoder_layer")
    for c in range(3):
        assert np.array_equal(hf["mlp.fc1.weight"][c], state[f"gating.{c}.linear_in.weight"])
        assert np.array_equal(hf["self_attn.o_proj.linear.weight"][c], state[f"self_attn.out_projs.{c}.weight"])
        assert np.array_equal(hf["self_attn.v_proj.linear.weight"][c], state[f"self_attn.in_projs.{c}.weight"][32:])
    assert np.array_equal(hf["input_layernorm.weight"], state["norm1.alpha"][0, 0])


# ----------------------------------------------------------------------------------------------------------------------
# kyutai legacy names


@pytest.mark.parametrize("component", ["attention", "decoder_layer"])
@pytest.mark.parametrize("flexible", [False, True])
def test_legacy_names_give_the_same_hf_state(component, flexible):
    cfg = make_cfg(flexible=flexible)
    state = random_state("kyutai", component, cfg, "bfloat16", prefixes=("layers.0.", "layers.1."))
    old = legacy(state, cfg)
    assert any(k.endswith("in_proj_weight") for k in old)
    want = convert(state, src="kyutai", dst="hf", cfg=cfg, component=component)
    assert_bit_equal(convert(old, src="kyutai", dst="hf", cfg=cfg, component=component), want)


def test_legacy_and_current_names_together_are_refused():
    cfg = make_cfg()
    state = random_state("kyutai", "attention", cfg, prefixes=("self_attn.",))
    both = state | legacy(state, cfg)
    with pytest.raises(ConversionError, match=r"both legacy and current") as err:
        convert(both, src="kyutai", dst="hf", cfg=cfg, component="attention")
    assert "self_attn.in_proj_weight" in str(err.value) and "self_attn.in_projs.0.weight" in str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# Strict accounting


def hf_layer_state(cfg=None):
    return random_state("hf", "decoder_layer", cfg or make_cfg(), prefixes=("layers.0.",))


def conversion_error(state, src="hf", dst="ref", component="decoder_layer", cfg=None) -> str:
    with pytest.raises(ConversionError) as err:
        convert(state, src=src, dst=dst, cfg=cfg or make_cfg(), component=component)
    return str(err.value)


def test_missing_key_is_named_with_its_expected_shape():
    state = hf_layer_state()
    del state["layers.0.self_attn.q_proj.linear.weight"]
    message = conversion_error(state)
    assert "missing     layers.0.self_attn.q_proj.linear.weight: expected (16, 16), got nothing" in message


def test_unexpected_key_is_named_with_its_shape():
    state = hf_layer_state() | {"layers.0.self_attn.q_proj.linear.bias": np.zeros(16, np.float32)}
    message = conversion_error(state)
    assert "unexpected  layers.0.self_attn.q_proj.linear.bias: expected nothing, got (16,)" in message


def test_wrong_shape_is_named_with_both_shapes():
    state = hf_layer_state()
    state["layers.0.self_attn.k_proj.linear.weight"] = np.zeros((8, 16), np.float32)
    message = conversion_error(state, dst="flax")
    assert "wrong shape layers.0.self_attn.k_proj.linear.weight: expected (16, 16), got (8, 16)" in message


def test_all_problems_are_reported_together():
    state = hf_layer_state()
    del state["layers.0.mlp.fc1.weight"]
    state["layers.0.mlp.fc2.weight"] = np.zeros((16, 15), np.float32)
    state["layers.0.mlp.fc3.weight"] = np.zeros((2, 2), np.float32)
    state["layers.0.input_layernorm.weight"] = from_torch_like(state["layers.0.input_layernorm.weight"])
    message = conversion_error(state, dst="kyutai")
    assert "4 problem(s)" in message
    assert "missing     layers.0.mlp.fc1.weight: expected (32, 16)" in message
    assert "wrong shape layers.0.mlp.fc2.weight: expected (16, 16), got (16, 15)" in message
    assert "unexpected  layers.0.mlp.fc3.weight: expected nothing, got (2, 2)" in message
    assert "not numpy   layers.0.input_layernorm.weight: got torch.Tensor" in message


def from_torch_like(array):
    """A torch tensor where a numpy array belongs: refused, never converted silently."""
    return to_torch(array)


def test_kyutai_codebook_gap_is_a_missing_key():
    cfg = make_cfg(flexible=True)
    state = random_state("kyutai", "attention", cfg)
    del state["in_projs.1.weight"]
    with pytest.raises(ConversionError, match=r"missing +in_projs\.1\.weight: expected \(48, 16\)"):
        convert(state, src="kyutai", dst="hf", cfg=cfg, component="attention")


def test_mixed_dtypes_in_a_fused_weight_are_refused():
    cfg = make_cfg()
    state = random_state("hf", "attention", cfg)
    state["k_proj.linear.weight"] = state["k_proj.linear.weight"].astype(ml_dtypes.bfloat16)
    with pytest.raises(ConversionError, match=r"mix dtypes \['bfloat16', 'float32'\]"):
        convert(state, src="hf", dst="kyutai", cfg=cfg, component="attention")


def test_edge_output_is_checked(monkeypatch):
    def lossy(state, *, cfg, component):
        return {k.replace(".linear", ""): v for k, v in state.items() if "o_proj" not in k}

    monkeypatch.setitem(registry.EDGES, ("hf", "ref"), FunctionEdge(lossy, frozenset(LAYER_COMPONENTS)))
    message = conversion_error(random_state("hf", "attention", make_cfg()), component="attention")
    assert "output of edge hf->ref" in message and "missing     o_proj.weight: expected (16, 16)" in message


def test_key_no_rule_claims_is_an_error():
    edge = TableEdge("hf", "ref", {"gating_mlp": (Rule("fc1.weight", "fc1.weight"),)})
    with pytest.raises(ConversionError, match=r"matched by no rule: \['mlp\.fc2\.weight'\]"):
        edge(random_state("hf", "gating_mlp", make_cfg(), prefixes=("mlp.",)), cfg=make_cfg(), component="gating_mlp")


def test_key_claimed_by_two_rules_is_an_error():
    rules = (Rule("fc{c}.weight", "a{c}.weight"), Rule("fc1.weight", "b.weight"))
    with pytest.raises(ConversionError, match=r"fc1\.weight claimed by two rules"):
        apply_rules({"fc1.weight": np.zeros(1)}, rules, make_cfg(), where="test")


def test_bad_tables_fail_when_declared():
    with pytest.raises(ValueError, match="unknown transform 'rotate'"):
        Pair("a", "b", "rotate")
    with pytest.raises(ValueError, match="unknown condition"):
        Rule("a", "b", when="sometimes")
    with pytest.raises(ValueError, match="placeholder"):
        Rule("a.{layer}", "b")
    with pytest.raises(ValueError, match="already registered"):
        register("hf", "ref", {})


def test_no_path_names_the_formats_and_the_edges(monkeypatch):
    monkeypatch.setattr(registry, "EDGES", {("kyutai", "hf"): registry.EDGES[("kyutai", "hf")]})
    with pytest.raises(ValueError, match=r"no converter path from 'kyutai' to 'flax'.*kyutai->hf"):
        convert(
            random_state("kyutai", "rmsnorm", cfg := make_cfg()), src="kyutai", dst="flax", cfg=cfg, component="rmsnorm"
        )


def test_unknown_or_missing_components_are_refused():
    with pytest.raises(ValueError, match="'kyutai' has no component 'flexible_linear'"):
        convert({}, src="kyutai", dst="hf", cfg=make_cfg(), component="flexible_linear")
    with pytest.raises(ValueError, match="unknown format 'mlx'"):
        convert({}, src="mlx", dst="hf", cfg=make_cfg(), component="rmsnorm")
    with pytest.raises(ValueError, match="unknown component 'rope'"):
        expected_shapes("hf", "rope", make_cfg())


# ----------------------------------------------------------------------------------------------------------------------
# Any component kind, any config: a throwaway codec-like kind registered here


@dataclass(frozen=True, kw_only=True)
class ToyCodecConfig:
    """A codec-like config: nothing the layer kinds read (no dim, no flexible), yet the same engine converts it."""

    channels: int = 4
    kernel_size: int = 3
    num_quantizers: int = 3
    codebook_size: int = 5
    bias: bool = True


def toy_shapes(fmt, cfg: ToyCodecConfig):
    """A conv (torch (out, in, k), Flax (k, in, out)), codebooks (a list in torch layout, stacked in Flax), a bias."""
    C, N, Q = cfg.channels, cfg.codebook_size, cfg.num_quantizers
    conv = (cfg.kernel_size, C, C) if fmt.transposed else (C, C, cfg.kernel_size)
    codebooks = {"codebooks": (Q, N, C)} if fmt.transposed else {f"quantizer.{q}.embedding": (N, C) for q in range(Q)}
    return {f"conv.{fmt.kernel}": conv} | codebooks | ({"bias": (C,)} if cfg.bias else {})


@pytest.fixture
def toy_codec(monkeypatch):
    """Two formats, one component kind, one two-way table, a condition and a transform; gone after the test."""
    for module, name in (
        (registry, "FORMATS"),
        (registry, "COMPONENTS"),
        (registry, "EDGES"),
        (rules, "CONDITIONS"),
        (transforms, "TRANSFORMS"),
    ):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    register_format(Format(name="toy_torch"))
    register_format(Format(name="toy_flax", kernel="kernel", transposed=True))
    register_condition("biased", lambda cfg: cfg.bias)
    register_transform("reverse_axes", lambda inputs, cfg: [[x.transpose(2, 1, 0) for x in inputs[0]]])
    register_component(Component(name="toy_codec", shapes=toy_shapes))
    table = (
        Pair("conv.weight", "conv.kernel", "reverse_axes", "reverse_axes"),
        Pair("quantizer.{c}.embedding", "codebooks", "stack", "unstack"),
        Pair("bias", "bias", when="biased"),
    )
    register_pairs("toy_torch", "toy_flax", {"toy_codec": table})


def toy_state(cfg: ToyCodecConfig, dtype: str, prefixes=("encoder.", "decoder.")):
    rng = np.random.default_rng(1)
    shapes = toy_shapes(registry.get_format("toy_torch"), cfg)
    return {
        p + k: rng.standard_normal(s).astype(np.float32).astype(DTYPES[dtype])
        for p in prefixes
        for k, s in shapes.items()
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_a_new_component_kind_round_trips_bit_exact(toy_codec, dtype, bias):
    cfg = ToyCodecConfig(bias=bias)
    state = toy_state(cfg, dtype)
    assert find_path("toy_torch", "toy_flax", "toy_codec") == ["toy_torch", "toy_flax"]
    calls = []
    flax = convert(state, src="toy_torch", dst="toy_flax", cfg=cfg, component="toy_codec", progress=calls.append)
    assert calls == [len(state) // 2] * 2  # one block per instance
    assert sorted(flax) == sorted(
        p + k for p in ("encoder.", "decoder.") for k in expected_shapes("toy_flax", "toy_codec", cfg)
    )
    assert np.array_equal(flax["decoder.conv.kernel"], state["decoder.conv.weight"].transpose(2, 1, 0))
    assert np.array_equal(flax["encoder.codebooks"][2], state["encoder.quantizer.2.embedding"])
    assert {v.dtype for v in flax.values()} == {DTYPES[dtype]}
    assert_bit_equal(convert(flax, src="toy_flax", dst="toy_torch", cfg=cfg, component="toy_codec"), state)
    shapes = {k: v.shape for k, v in state.items()}
    assert convert_shapes(shapes, src="toy_torch", dst="toy_flax", cfg=cfg, component="toy_codec") == {
        k: v.shape for k, v in flax.items()
    }


def test_a_new_component_kind_is_strictly_accounted(toy_codec):
    cfg = ToyCodecConfig(bias=False)
    state = toy_state(ToyCodecConfig(bias=True), "float32", prefixes=("",))  # a bias this config does not have
    del state["quantizer.1.embedding"]
    state["conv.weight"] = np.zeros((4, 4, 2), np.float32)
    with pytest.raises(ConversionError, match=r"3 problem\(s\)") as err:
        convert(state, src="toy_torch", dst="toy_flax", cfg=cfg, component="toy_codec")
    for line in (
        "missing     quantizer.1.embedding: expected (5, 4), got nothing",
        "wrong shape conv.weight: expected (4, 4, 3), got (4, 4, 2)",
        "unexpected  bias: expected nothing, got (4,)",
    ):
        assert line in str(err.value)
    with pytest.raises(ValueError, match="no converter path from 'toy_torch' to 'hf'"):
        convert(state, src="toy_torch", dst="hf", cfg=cfg, component="toy_codec")
    with pytest.raises(ValueError, match="format 'toy_flax' has no component 'attention'"):
        expected_shapes("toy_flax", "attention", make_cfg())


ENGINE = ("accounting", "rules", "transforms", "registry", "edges", "engine", "formats")


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_knows_no_config_type(module):
    """Configs are opaque to the engine: no moshi_spec import, no config class named."""
    tree = ast.parse((Path(registry.__file__).parent / f"{module}.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("moshi_spec")]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"TransformerConfig", "LMConfig"}
