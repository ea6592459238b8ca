"""Converters: bit-exact round trips between kyutai, hf, ref and flax; the rope permutation checked against the real
upstream modules (with a negative control); strict accounting (every problem listed, never a silent cast); module IO.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from converters import (
    COMPONENTS,
    ConversionError,
    convert,
    expected_shapes,
    find_path,
    flax_state,
    from_jax,
    from_torch,
    load_flax,
    load_torch,
    register,
    registry,
    to_jax,
    to_torch,
    torch_state,
    transforms,
)
from converters.registry import FunctionEdge, Pair, Rule, TableEdge, apply_rules
from moshi_spec.config import TransformerConfig

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
ROPES = {"norope": (False, "half"), "half": (True, "half"), "interleaved": (True, "interleaved")}
SHAPES = {"mha": {}, "gqa_hd8": {"head_dim_override": 8, "num_kv_heads_override": 2}}  # q_dim 32 != dim 16


def make_cfg(*, flexible: bool = False, rope: str = "interleaved", shape: str = "mha") -> TransformerConfig:
    use_rope, layout = ROPES[rope]
    return TransformerConfig(
        dim=16, num_heads=4, num_layers=1, ffn_dim=32, num_codebooks=3, flexible=flexible, rope=use_rope,
        rope_layout=layout, **SHAPES[shape],
    )  # fmt: skip


CONFIGS = [
    pytest.param(
        make_cfg(flexible=flexible, rope=rope, shape=shape), id=f"{'flex' if flexible else 'plain'}-{rope}-{shape}"
    )
    for flexible in (False, True)
    for rope in ROPES
    for shape in SHAPES
]


def random_state(fmt: str, component: str, cfg: TransformerConfig, dtype: str = "float32", *, prefixes=("",), seed=0):
    """Random arrays of exactly the expected shapes (wildcard dims of a flexible linear become 5 and 7)."""
    rng = np.random.default_rng(seed)
    state = {}
    for prefix in prefixes:
        for key, shape in expected_shapes(fmt, component, cfg).items():
            wild = iter((5, 7))
            dims = [next(wild) if d is None else d for d in shape]
            state[prefix + key] = rng.standard_normal(dims).astype(np.float32).astype(DTYPES[dtype])
    return state


def assert_bit_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert got[key].shape == want[key].shape, key
        assert np.ascontiguousarray(got[key]).tobytes() == np.ascontiguousarray(want[key]).tobytes(), key


# ----------------------------------------------------------------------------------------------------------------------
# Round trips

ROUND_TRIPS = [("hf", "ref"), ("ref", "flax"), ("kyutai", "hf"), ("hf", "flax"), ("kyutai", "flax"), ("flax", "kyutai")]


# kyutai has no standalone flexible linear (it uses per-step ModuleLists), so those combinations are not generated.
TRIPS = [(a, b, c) for a, b in ROUND_TRIPS for c in COMPONENTS if not (c == "flexible_linear" and "kyutai" in (a, b))]


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


def legacy(state: dict, cfg: TransformerConfig) -> dict:
    """Rewrites current kyutai attention names to the released checkpoints' fused, step-major ones."""
    out = {k: v for k, v in state.items() if ".in_projs." not in "." + k and ".out_projs." not in "." + k}
    for p in {k[: k.index("in_projs.")] for k in state if "in_projs." in k}:
        out[p + "in_proj_weight"] = np.concatenate([state[f"{p}in_projs.{c}.weight"] for c in range(cfg.weight_sets)])
        out[p + "out_proj.weight"] = np.concatenate([state[f"{p}out_projs.{c}.weight"] for c in range(cfg.weight_sets)])
    return out


@pytest.mark.parametrize("component", ["attention", "decoder_layer"])
@pytest.mark.parametrize("flexible", [False, True])
def test_legacy_names_give_the_same_hf_state(component, flexible):
    cfg = make_cfg(flexible=flexible)
    state = random_state("kyutai", component, cfg, "bfloat16", prefixes=("layers.0.", "layers.1."))
    old = legacy(state, cfg)
    assert any(k.endswith("in_proj_weight") for k in old)
    want = convert(state, src="kyutai", dst="hf", cfg=cfg, component=component)
    assert_bit_equal(convert(old, src="kyutai", dst="hf", cfg=cfg, component=component), want)


@pytest.mark.parametrize("weights_per_step", [0, 3])
def test_legacy_split_matches_kyutais_own_load_hook(weights_per_step):
    """kyutai's `_load_hook` reads legacy fused weights; our normalization must read them the same way."""
    from moshi.modules.transformer import StreamingMultiheadAttention

    cfg = make_cfg(flexible=weights_per_step > 0, rope="norope")
    modern = random_state("kyutai", "attention", cfg)
    attn = StreamingMultiheadAttention(embed_dim=16, num_heads=4, causal=True, weights_per_step=weights_per_step)
    attn.load_state_dict({k: to_torch(v) for k, v in legacy(modern, cfg).items()})
    assert_bit_equal(torch_state(attn), modern)


def test_legacy_and_current_names_together_are_refused():
    cfg = make_cfg()
    state = random_state("kyutai", "attention", cfg, prefixes=("self_attn.",))
    both = state | legacy(state, cfg)
    with pytest.raises(ConversionError, match=r"both legacy and current") as err:
        convert(both, src="kyutai", dst="hf", cfg=cfg, component="attention")
    assert "self_attn.in_proj_weight" in str(err.value) and "self_attn.in_projs.0.weight" in str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# Against the real upstream modules


def hf_config(cfg: TransformerConfig):
    from transformers.models.moshi.configuration_moshi import MoshiConfig

    config = MoshiConfig(
        hidden_size=cfg.dim, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        num_hidden_layers=1, ffn_dim=cfg.ffn_dim, audio_vocab_size=32, vocab_size=48,
        num_codebooks=cfg.num_codebooks, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip
    config._attn_implementation = "eager"
    return config


def hf_inputs(x):
    import torch

    B, T, _ = x.shape
    mask = torch.full((T, T), float("-inf")).triu(1).expand(B, 1, T, T)
    return {"attention_mask": mask, "position_ids": torch.arange(T).expand(B, T)}


def kyutai_attention(cfg: TransformerConfig):
    from moshi.modules.rope import RotaryEmbedding
    from moshi.modules.transformer import StreamingMultiheadAttention

    return StreamingMultiheadAttention(
        embed_dim=cfg.dim, num_heads=cfg.num_heads, causal=True, kv_repeat=cfg.num_heads // cfg.num_kv_heads,
        rope=RotaryEmbedding(interleave=True, max_period=10000.0) if cfg.rope else None,
        weights_per_step=cfg.weight_sets if cfg.flexible else 0,
    )  # fmt: skip


def kyutai_layer(cfg: TransformerConfig):
    from moshi.modules.rope import RotaryEmbedding
    from moshi.modules.transformer import StreamingTransformerLayer

    layer = StreamingTransformerLayer(
        d_model=cfg.dim, num_heads=cfg.num_heads, dim_feedforward=3 * cfg.hidden // 2, causal=True,
        norm="rms_norm_f32", gating="silu", kv_repeat=cfg.num_heads // cfg.num_kv_heads,
        rope=RotaryEmbedding(interleave=True, max_period=10000.0) if cfg.rope else None,
        weights_per_step=cfg.weight_sets if cfg.flexible else 0,
    )  # fmt: skip
    for norm in (layer.norm1, layer.norm2):  # alpha starts at ones: randomize so the mapping is exercised
        norm.alpha.data.uniform_(0.5, 1.5)
    return layer


def kyutai_to_hf_attention(kyutai, cfg: TransformerConfig, x):
    from transformers.models.moshi.modeling_moshi import MoshiAttention

    hf = MoshiAttention(hf_config(cfg), layer_idx=0, use_flexible_linear=cfg.flexible, use_rope=cfg.rope)
    load_torch(hf, convert(torch_state(kyutai), src="kyutai", dst="hf", cfg=cfg, component="attention"))
    return hf(x, **hf_inputs(x))[0]


KV_HEADS = [pytest.param(4, id="mha"), pytest.param(2, id="gqa")]


@pytest.mark.parametrize("kv_heads", KV_HEADS)
def test_kyutai_attention_converted_to_hf_computes_the_same(kv_heads, monkeypatch):
    import torch

    from parity.compare import assert_parity, check_parity

    torch.manual_seed(0)
    cfg = make_cfg().replace(num_kv_heads_override=kv_heads)
    kyutai = kyutai_attention(cfg)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want = kyutai(x, x, x)
        assert_parity(want, kyutai_to_hf_attention(kyutai, cfg, x), component="attention", pair=("kyutai", "hf"),
                      expected_dtype="float32", inputs={"x": x.shape})  # fmt: skip

        # Negative control: the same conversion without the interleaved -> half rope permutation.
        monkeypatch.setattr(transforms, "interleaved_to_half", lambda w, heads: w)
        passed, metrics, _ = check_parity(want, kyutai_to_hf_attention(kyutai, cfg, x), component="attention",
                                          pair=("kyutai", "hf"), expected_dtype="float32",
                                          control="no rope permutation")  # fmt: skip
    assert not passed and metrics.max_abs > 1e-2


@pytest.mark.parametrize("kv_heads", KV_HEADS)
def test_hf_attention_converted_to_kyutai_computes_the_same(kv_heads):
    import torch
    from transformers.models.moshi.modeling_moshi import MoshiAttention

    from parity.compare import assert_parity

    torch.manual_seed(1)
    cfg = make_cfg().replace(num_kv_heads_override=kv_heads)
    hf = MoshiAttention(hf_config(cfg), layer_idx=0, use_flexible_linear=False, use_rope=True)
    kyutai = kyutai_attention(cfg)
    load_torch(kyutai, convert(torch_state(hf), src="hf", dst="kyutai", cfg=cfg, component="attention"))
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert_parity(hf(x, **hf_inputs(x))[0], kyutai(x, x, x), component="attention", pair=("hf", "kyutai"),
                      expected_dtype="float32", inputs={"x": x.shape})  # fmt: skip


@pytest.mark.parametrize("flexible", [pytest.param(False, id="temporal"), pytest.param(True, id="depth")])
def test_kyutai_layer_converted_to_hf_computes_the_same(flexible):
    """Whole decoder layer: norms, fused attention, gating; depth: per-codebook weights stacked in codebook order."""
    import torch
    from transformers.models.moshi.modeling_moshi import MoshiDecoderLayer

    from parity.compare import assert_parity

    torch.manual_seed(2)
    cfg = make_cfg(flexible=flexible, rope="norope" if flexible else "interleaved")
    kyutai = kyutai_layer(cfg)
    hf = MoshiDecoderLayer(hf_config(cfg), layer_idx=0, use_flexible_linear=flexible, use_rope=cfg.rope)
    load_torch(hf, convert(torch_state(kyutai), src="kyutai", dst="hf", cfg=cfg, component="decoder_layer"))
    x = torch.randn(2, 3, 16)  # T = num_codebooks: position t uses codebook t's weights in both
    with torch.no_grad():
        assert_parity(kyutai(x), hf(x, **hf_inputs(x)), component="decoder_layer", pair=("kyutai", "hf"),
                      expected_dtype="float32", inputs={"x": x.shape})  # fmt: skip


def test_ref_to_flax_gating_computes_the_same():
    """The transpose to Flax kernels, checked by running a torch and an nnx gated MLP on the same input."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from parity.compare import assert_parity

    cfg = make_cfg()

    class TorchMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
            self.fc2 = torch.nn.Linear(cfg.hidden, cfg.dim, bias=False)

        def forward(self, x):
            gate, value = self.fc1(x).chunk(2, dim=-1)
            return self.fc2(torch.nn.functional.silu(gate) * value)

    class FlaxMLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(cfg.dim, cfg.ffn_dim, use_bias=False, rngs=rngs)
            self.fc2 = nnx.Linear(cfg.hidden, cfg.dim, use_bias=False, rngs=rngs)

        def __call__(self, x):
            gate, value = jnp.split(self.fc1(x), 2, axis=-1)
            return self.fc2(jax.nn.silu(gate) * value)

    torch.manual_seed(3)
    torch_mlp, flax_mlp = TorchMLP(), FlaxMLP(nnx.Rngs(0))
    load_flax(flax_mlp, convert(torch_state(torch_mlp), src="ref", dst="flax", cfg=cfg, component="gating_mlp"))
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    with torch.no_grad():
        want = torch_mlp(to_torch(x))
    with jax.default_matmul_precision("highest"):
        got = flax_mlp(to_jax(x))
    assert_parity(want, got, component="gating_mlp", pair=("ref", "flax"), expected_dtype="float32")


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

    monkeypatch.setitem(registry.EDGES, ("hf", "ref"), FunctionEdge(lossy, frozenset(COMPONENTS)))
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
# Module IO and arrays


def tiny_torch(dtype):
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3, bias=False, dtype=dtype)
            self.weight = torch.nn.Parameter(torch.randn(3, dtype=dtype))

    return Tiny()


def tiny_flax(dtype):
    import jax.numpy as jnp
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 3, use_bias=False, param_dtype=dtype, rngs=rngs)
            self.weight = nnx.Param(jnp.ones((3,), dtype))
            self.count = nnx.BatchStat(jnp.zeros(()))  # not a Param: neither read nor loaded

    return Tiny(nnx.Rngs(0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_module_state_round_trip(dtype):
    import torch

    module = tiny_torch(getattr(torch, dtype))
    state = random_state("hf", "rmsnorm", make_cfg(), dtype)["weight"]
    new = {"lin.weight": np.full((3, 4), 0.5, DTYPES[dtype]), "weight": state[:3]}
    load_torch(module, new)
    assert_bit_equal(torch_state(module), new)
    assert module.lin.weight.dtype == getattr(torch, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flax_module_state_round_trip(dtype):
    import jax.numpy as jnp

    module = tiny_flax(getattr(jnp, dtype))
    assert sorted(flax_state(module)) == ["lin.kernel", "weight"]
    assert flax_state(module)["lin.kernel"].shape == (4, 3)
    new = {"lin.kernel": np.full((4, 3), 0.25, DTYPES[dtype]), "weight": np.arange(3).astype(DTYPES[dtype])}
    load_flax(module, new)
    assert_bit_equal(flax_state(module), new)
    assert module.lin.kernel[...].dtype == DTYPES[dtype]


@pytest.mark.parametrize("kind", ["torch", "flax"])
def test_module_load_lists_every_problem_and_never_casts(kind):
    load, module, key = (
        (load_torch, tiny_torch(__import__("torch").float32), "lin.weight")
        if kind == "torch"
        else (load_flax, tiny_flax(np.float32), "lin.kernel")
    )
    before = torch_state(module) if kind == "torch" else flax_state(module)
    bad = {key: np.zeros((5, 5), np.float32), "extra": np.zeros(2, np.float32)}
    with pytest.raises(ConversionError, match=r"3 problem\(s\)") as err:
        load(module, bad)
    for fragment in (f"wrong shape {key}", "missing     weight: expected (3,)", "unexpected  extra"):
        assert fragment in str(err.value)
    cast = {k: v.astype(ml_dtypes.bfloat16) for k, v in before.items()}
    with pytest.raises(ConversionError, match=r"wrong dtype weight: module has float32, state has bfloat16"):
        load(module, cast)
    assert_bit_equal(torch_state(module) if kind == "torch" else flax_state(module), before)  # nothing written


def test_arrays_move_every_bfloat16_bit_pattern():
    import torch

    bits = np.arange(-(2**15), 2**15, dtype=np.int16)
    bf16 = bits.view(ml_dtypes.bfloat16)
    tensor = torch.from_numpy(bits.copy()).view(torch.bfloat16)
    assert np.array_equal(from_torch(tensor).view(np.int16), bits)
    assert torch.equal(to_torch(bf16).view(torch.int16), tensor.view(torch.int16))
    assert np.array_equal(from_jax(to_jax(bf16)).view(np.int16), bits)
    assert from_torch(tensor).dtype == ml_dtypes.bfloat16 and from_jax(to_jax(bf16)).dtype == ml_dtypes.bfloat16


def test_arrays_copy_and_refuse_silent_casts():
    import jax
    import torch

    tensor = torch.zeros(3)
    array = from_torch(tensor)
    tensor.add_(1.0)
    assert array.tolist() == [0.0, 0.0, 0.0]
    if not jax.config.jax_enable_x64:
        with pytest.raises(TypeError, match="float64 array as float32"):
            to_jax(np.zeros(2))
