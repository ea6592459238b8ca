"""The feed-forward options of kyutai's LMModel: `gating="none"` (the plain FFN, linear1 -> exact gelu -> linear2),
`hidden_scale` values other than 4 (non-integer ones: dim_feedforward = int(hidden_scale * dim), the gating's hidden
width 2 * dff // 3, or 21 * dim // 8 at exactly 4 * dim), `depformer_dim_feedforward` (an int, or kyutai 0.2.13's
per-step list when its widths are equal) and `layer_scale` / `depformer_layer_scale` (a learnt per-channel scale on
each residual update): kyutai vs ref vs flax logits over drawn options and dtypes; for a model with all of them,
streaming greedy tokens vs LMGen, a CLI conversion from kyutai kwargs and negative controls (layer scales left out or
swapped, the plain FFN's gelu for silu, the 21/8 hidden width for the 2/3 one). HF has none of them: the harness and
the converters refuse it, naming the option."""

from functools import cache

import pytest
from hypothesis import example, given, settings
from jax.sharding import PartitionSpec as P

from converters import ConversionError, convert
from converters.lm_config import from_kyutai_kwargs
from converters.upstream_config import to_kyutai_kwargs
from moshi_spec import LMConfig, kyutai
from parity.harness import adapters, lm_options, strategies
from parity.harness.implementations import build
from parity.harness.placement import rule_specs

TINY = LMConfig.tiny()
# the temporal stack plain (gating="none", hidden_scale 2.5: dim_feedforward 80) with layer scales; the depth stack
# gated (depformer_gating="silu") with depformer_dim_feedforward 40 (gating hidden 26) and its own layer scales
FFN = TINY.replace(
    temporal=TINY.temporal.replace(gated=False, activation="gelu", ffn_dim=80, layer_scale=0.1),
    depth=TINY.depth.replace(ffn_dim=2 * kyutai.gating_hidden(16, 40), layer_scale=0.01),
)
PAIRS = (("kyutai", "ref"), ("kyutai", "flax"))


@settings(max_examples=max(1, settings.default.max_examples // 8))  # ci 1, nightly 25: ~2 s each
@given(cfg=strategies.ffn_options(TINY))
@example(cfg=TINY.replace(temporal=TINY.temporal.replace(ffn_dim=2 * kyutai.gating_hidden(32, 132), layer_scale=1.0)))
def test_logits_over_ffn_options(cfg):
    """kyutai -> ref and -> flax float32 logits (masks exactly, values within the policy) for drawn feed-forward
    options; the example: a gated temporal stack at hidden_scale 4.125 (dff 132, no 21/8 rule) with layer scales."""
    models = build("lm", cfg, "float32", impls=("kyutai", "ref", "flax"))
    runs = {impl: models.run(impl, {"codes": lm_options.codes(cfg)}) for impl in ("kyutai", "ref", "flax")}
    for pair in PAIRS:
        lm_options.compare(cfg, runs[pair[0]], runs[pair[1]], pair, "float32")


@cache
def _ffn_runs():
    """The float32 FFN LM in kyutai and flax, and kyutai's logits (shared by the checks below)."""
    models = build("lm", FFN, "float32", impls=("kyutai", "flax"))
    return models, models.run("kyutai", {"codes": lm_options.codes(FFN)})


def test_ffn_logits_match_kyutai():
    models, expected = _ffn_runs()
    cand = models.run("flax", {"codes": lm_options.codes(FFN)})
    lm_options.compare(FFN, expected, cand, ("kyutai", "flax"), "float32")


def test_ffn_stream_tokens_match_lmgen():
    """float32 greedy streaming, token for token against kyutai's LMGen."""
    lm_options.assert_stream_tokens_match_lmgen(_ffn_runs()[0])


def test_cli_converts_an_ffn_checkpoint(tmp_path):
    """A kyutai checkpoint with its LMModel kwargs (gating="none", hidden_scale=2.5, a per-step
    depformer_dim_feedforward list, layer_scale, depformer_layer_scale) as --config converts with the CLI; the Flax LM
    loaded from the output computes kyutai's logits."""
    models, expected = _ffn_runs()
    kwargs = to_kyutai_kwargs(FFN)
    assert (kwargs["gating"], kwargs["hidden_scale"], kwargs["depformer_gating"]) == ("none", 2.5, "silu")
    assert (kwargs["layer_scale"], kwargs["depformer_layer_scale"]) == (0.1, 0.01)
    assert kyutai.gating_hidden(16, kwargs["depformer_dim_feedforward"]) == kyutai.gating_hidden(16, 40)
    kwargs["depformer_dim_feedforward"] = [40] * FFN.dep_q  # kyutai 0.2.13's per-step form, equal widths
    cand = lm_options.cli_converted_logits(models, kwargs, tmp_path)
    lm_options.compare(FFN, expected, cand, ("kyutai", "flax"), "float32")


def test_ffn_parameter_count():
    """LMConfig.num_params counts the plain FFN's widths and the layer scales as kyutai lays them out."""
    models, _ = _ffn_runs()
    assert sum(v.size for v in models.states["kyutai"].values()) == FFN.num_params()


def test_layer_scales_have_a_sharding_rule():
    """Every parameter matches one sharding rule; the layer scales are replicated, the plain FFN split like the
    gated one (on fsdp 2: the depth gating's hidden width, 26, does not split in 4, which param_specs refuses)."""
    models, _ = _ffn_runs()
    flat = rule_specs(models.module("flax"), {"dp": 1, "fsdp": 2})
    for name in ("layers.1.self_attn_layer_scale.scale", "depth.layers.0.mlp_layer_scale.scale"):
        assert flat[name] == P(None), name
    assert (flat["layers.0.mlp.fc1.kernel"], flat["layers.0.mlp.fc2.kernel"]) == (P(None, "fsdp"), P("fsdp", None))


def test_kyutai_kwargs_refused_naming_the_option():
    """What kyutai cannot build, or the port does not, is refused by the kwargs reader, naming the key."""
    kwargs = to_kyutai_kwargs(FFN)
    with pytest.raises(ValueError, match=r"depformer_gating \(gating's, inherited\)='none'"):
        from_kyutai_kwargs({k: v for k, v in kwargs.items() if k != "depformer_gating"})
    widths = from_kyutai_kwargs(kwargs | {"depformer_dim_feedforward": [40, 40, 40, 48]}).depth.ffn_dims
    assert widths == (52, 52, 52, 64)  # per-step widths that differ: parity/test_lm_depth_options.py
    with pytest.raises(ValueError, match=r"depformer_dim_feedforward has 2 widths, kyutai needs one per depformer"):
        from_kyutai_kwargs(kwargs | {"depformer_dim_feedforward": [40, 40]})
    with pytest.raises(ValueError, match=r"layer_scale='0.1' is not a number or null"):
        from_kyutai_kwargs(kwargs | {"layer_scale": "0.1"})
    with pytest.raises(ValueError, match=r"kyutai's plain FFN \(gating='none'\) applies exact gelu"):
        to_kyutai_kwargs(FFN.replace(temporal=FFN.temporal.replace(activation="silu")))


def test_hf_refuses_ffn_options():
    """HF's Moshi has only the gated MLP and no layer scale: the harness cannot build such a model and converting to
    hf is refused, naming the option (hf stays a hop: kyutai -> flax above)."""
    with pytest.raises(ValueError, match=r"HF's Moshi has only the gated MLP .* \(gating='none'\)"):
        build("lm", FFN, "float32", impls=("hf",))
    with pytest.raises(ValueError, match=r"HF's Moshi has no layer scale \(layer_scale=0.01\)"):
        build("lm", TINY.replace(depth=FFN.depth), "float32", impls=("hf",))
    models, _ = _ffn_runs()
    with pytest.raises(ValueError, match=r"convert kyutai->hf \(lm\): .* gating='none' \(temporal stack\)"):
        convert(models.states["kyutai"], src="kyutai", dst="hf", cfg=FFN, component="lm")
    cfg = TINY.replace(depth=FFN.depth)
    with pytest.raises(ValueError, match=r"no layer scale: layer_scale=0.01 \(depth stack\) cannot be converted"):
        state = build("lm", cfg, "float32", impls=("kyutai",)).states["kyutai"]
        convert(state, src="kyutai", dst="hf", cfg=cfg, component="lm")


# Negative controls: layer scales left out or swapped between the attention and the MLP, and the plain FFN with silu
# for gelu, each fail the float32 logits; a gated width from the 2/3 rule where kyutai takes 21/8 fails the shapes.


def _run(impl: str, cfg: LMConfig, state: dict):
    """`impl`'s LM for cfg loaded with `state` (in its format), run on the FFN model's codes."""
    adapter = adapters.adapter(impl)
    built = adapter.build("lm", cfg, dtype="float32", init=False)
    adapter.load(built, state)
    return adapter.run(built, {"codes": lm_options.codes(FFN)})


def _ref_state(models):
    return convert(models.states["kyutai"], src="kyutai", dst="ref", cfg=FFN, component="lm")


def _layer_scale_ignored(models):
    """ref built without layer scales (their weights left out): a port that drops kyutai's LayerScale."""
    plain = {k: v for k, v in _ref_state(models).items() if "_layer_scale." not in k}
    no_scale = {name: getattr(FFN, name).replace(layer_scale=None) for name in ("temporal", "depth")}
    return "ref", _run("ref", FFN.replace(**no_scale), plain)


def _layer_scales_swapped(models):
    """ref with the attention's scale on the MLP's update and the other way round."""
    state = _ref_state(models)
    swap = {"self_attn_layer_scale": "mlp_layer_scale", "mlp_layer_scale": "self_attn_layer_scale"}
    moved = {}
    for key, value in state.items():
        for a, b in swap.items():
            if f".{a}." in key:
                moved[key.replace(f".{a}.", f".{b}.")] = value
    return "ref", _run("ref", FFN, state | moved)


def _plain_ffn_silu(models):
    """flax with the plain FFN's activation silu (the gated stacks' default) for kyutai's exact gelu."""
    return "flax", _run("flax", FFN.replace(temporal=FFN.temporal.replace(activation="silu")), models.states["flax"])


# the bug -> the logits it must disturb
CONTROLS = {
    _layer_scale_ignored: "text_logits",
    _layer_scales_swapped: "text_logits",
    _plain_ffn_silu: "text_logits",
}


@pytest.mark.parametrize("control", CONTROLS, ids=lm_options.control_name)
def test_negative_control(control):
    models, expected = _ffn_runs()
    impl, cand = control(models)
    lm_options.assert_control_fails(FFN, expected, cand, control=lm_options.control_name(control),
                                    components=(CONTROLS[control],), impl=impl)  # fmt: skip


def test_negative_control_hidden_width_off():
    """A gated width read with the 2/3 rule where kyutai takes 21/8 (dim_feedforward == 4 * dim) does not fit
    kyutai's weights: the strict key and shape accounting names them."""
    cfg = TINY.replace(temporal=TINY.temporal.replace(ffn_dim=2 * kyutai.gating_hidden(32, 128)))
    state = build("lm", cfg, "float32", impls=("kyutai",)).states["kyutai"]
    wrong = cfg.replace(temporal=cfg.temporal.replace(ffn_dim=2 * (2 * 128 // 3)))  # 170, not 2 * 84 = 168
    with pytest.raises(ConversionError, match=r"transformer\.layers\.0\.gating\.linear_in\.weight"):
        convert(state, src="kyutai", dst="ref", cfg=wrong, component="lm")
