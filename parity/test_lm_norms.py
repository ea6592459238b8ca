"""The norm kinds of kyutai's LMModel (`norm=`: rms_norm, rms_norm_f32, layer_norm, layer_norm_f32, each with the eps
kyutai fixes for it) in the temporal and depth layers and the final norm, `depformer_norm=` (a norm per codebook on
the depth output) and `norm_emb` (a layer norm in every embedding); for a model with all three (the kinds are also
drawn by `strategies.lm_cases`, parity/test_lm_family.py): logits and streaming greedy tokens vs kyutai, a CLI
conversion from kyutai kwargs and negative controls (the layer norm's eps, its bias, the depformer norms' codebook
order, the embedding norms ignored). HF has none of them: the harness and the CLI refuse it."""

import json
from functools import cache

import pytest
from jax.sharding import PartitionSpec as P
from safetensors.numpy import save_file

from converters import convert
from converters.cli import main as cli_main
from converters.upstream_config import to_kyutai_kwargs
from moshi_spec import LMConfig
from parity.harness import adapters, lm_options
from parity.harness.implementations import build
from parity.harness.placement import rule_specs

# layer norms (eps 1e-5) in both stacks and the final norm, a layer norm per codebook on the depth output (kyutai's
# depformer_norm="layer_norm_f32", eps 1e-8) and one in every embedding (norm_emb)
LAYER_NORM = LMConfig.tiny().with_norm("layer_norm").replace(depformer_norm="layer_norm_f32", norm_emb=True)
PAIRS = (("kyutai", "ref"), ("kyutai", "flax"))


@cache
def _layer_norm_runs():
    """The float32 layer-norm LM in kyutai and flax, and kyutai's logits (shared by the checks below)."""
    models = build("lm", LAYER_NORM, "float32", impls=("kyutai", "flax"))
    return models, models.run("kyutai", {"codes": lm_options.codes(LAYER_NORM)})


def test_layer_norm_logits_match_kyutai():
    models, expected = _layer_norm_runs()
    cand = models.run("flax", {"codes": lm_options.codes(LAYER_NORM)})
    lm_options.compare(LAYER_NORM, expected, cand, ("kyutai", "flax"), "float32")


def test_layer_norm_stream_tokens_match_lmgen():
    """float32 greedy streaming, token for token against kyutai's LMGen."""
    lm_options.assert_stream_tokens_match_lmgen(_layer_norm_runs()[0])


def test_cli_converts_a_layer_norm_checkpoint(tmp_path):
    """A kyutai checkpoint with its LMModel kwargs (norm="layer_norm", depformer_norm="layer_norm_f32",
    norm_emb=True) as --config converts with the CLI; the Flax LM loaded from the output computes kyutai's logits."""
    models, expected = _layer_norm_runs()
    kwargs = to_kyutai_kwargs(LAYER_NORM)
    assert (kwargs["norm"], kwargs["depformer_norm"], kwargs["norm_emb"]) == ("layer_norm", "layer_norm_f32", True)
    cand = lm_options.cli_converted_logits(models, kwargs, tmp_path)
    lm_options.compare(LAYER_NORM, expected, cand, ("kyutai", "flax"), "float32")


def test_layer_norm_parameter_count():
    """kyutai's layer norms have a weight and a bias: LMConfig.num_params counts them as kyutai lays them out."""
    models, _ = _layer_norm_runs()
    assert sum(v.size for v in models.states["kyutai"].values()) == LAYER_NORM.num_params()


def test_norms_have_a_sharding_rule():
    """Every parameter of the model matches one sharding rule; every norm's (weight and bias) is replicated."""
    models, _ = _layer_norm_runs()
    flat = rule_specs(models.module("flax"), {"dp": 1, "fsdp": 4})
    norms = {name: spec for name, spec in flat.items() if "norm" in name}
    for name in ("norm.bias", "layers.1.post_attention_layernorm.bias", "depth.out_norms.3.bias",
                 "embed_tokens.7.norm.bias", "depth.text_embed_tokens.norm.weight"):  # fmt: skip
        assert norms[name] == P(None), name
    assert all(spec == P(None) for spec in norms.values()), norms


def test_hf_refuses_layer_norms(tmp_path, capsys):
    """HF's Moshi has only MoshiRMSNorm, no depth output norm and no embedding norm: the harness cannot build the
    model, and the CLI refuses an HF output, naming the option."""
    with pytest.raises(ValueError, match=r"MoshiRMSNorm computed in float32 .* 'layer_norm'"):
        build("lm", LMConfig.tiny().with_norm("layer_norm"), "float32", impls=("hf",))
    with pytest.raises(ValueError, match=r"HF's depth decoder has no output norm \(depformer_norm='layer_norm_f32'\)"):
        build("lm", LAYER_NORM, "float32", impls=("hf",))
    with pytest.raises(ValueError, match=r"HF's Moshi embeddings have no norm \(norm_emb=True\)"):
        build("lm", LMConfig.tiny().replace(norm_emb=True), "float32", impls=("hf",))
    models, _ = _layer_norm_runs()
    (tmp_path / "config.json").write_text(json.dumps(to_kyutai_kwargs(LAYER_NORM)))
    save_file(models.states["kyutai"], str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    args = ["--no-progress", "--src", "kyutai", "--dst", "hf", "--config", str(tmp_path / "config.json")]
    assert cli_main([*args, str(tmp_path / "model.safetensors"), str(tmp_path / "hf")]) == 1
    assert "cannot be converted to hf" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason="kyutai's LayerNormF32 in bfloat16: mixed dtypes on CPU")
def test_kyutai_cannot_run_layer_norm_f32_in_bfloat16():
    """LMModel(...).to(bfloat16) makes LayerNormF32's weights bfloat16; it feeds them a float32 input, which torch's
    CPU layer_norm refuses. The port's bfloat16 layer_norm_f32 has no upstream to match."""
    cfg = LMConfig.tiny().with_norm("layer_norm_f32")
    build("lm", cfg, "bfloat16", impls=("kyutai",)).run("kyutai", {"codes": lm_options.codes(cfg)})


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="kyutai's forward feeds depformer_norms 2-D inputs")
def test_kyutai_forward_cannot_run_an_rms_depformer_norm():
    """LMModel.forward applies depformer_norms[c] to depformer_output[:, c], a (B * T, D) tensor; kyutai's RMSNorm
    asserts 3-D inputs (nn.LayerNorm takes any rank), so only the layer-norm kinds run there. LMGen's step passes
    (B, 1, D) and runs every kind; the port runs every kind in both."""
    cfg = LMConfig.tiny().replace(depformer_norm="rms_norm")
    build("lm", cfg, "float32", impls=("kyutai",)).run("kyutai", {"codes": lm_options.codes(cfg)})


# Negative controls: a layer norm ported with the other kind's eps or without its bias, depformer norms applied to the
# wrong codebooks, and embeddings without their norm each fail the float32 logits.


def _run(impl: str, cfg: LMConfig, state: dict):
    """`impl`'s LM for cfg loaded with `state` (in its format), run on the shared codes."""
    adapter = adapters.adapter(impl)
    built = adapter.build("lm", cfg, dtype="float32", init=False)
    adapter.load(built, state)
    return adapter.run(built, {"codes": lm_options.codes(LAYER_NORM)})


def _bias_dropped(models):
    """ref with every layer norm's bias left at zero (a port that keeps an RMSNorm-style scale only)."""
    state = convert(models.states["kyutai"], src="kyutai", dst="ref", cfg=LAYER_NORM, component="lm")
    return "ref", _run("ref", LAYER_NORM, {k: v * 0 if k.endswith("norm.bias") else v for k, v in state.items()})


def _depformer_norms_reversed(models):
    """ref with codebook c's output norm applied to codebook dep_q - 1 - c."""
    state = convert(models.states["kyutai"], src="kyutai", dst="ref", cfg=LAYER_NORM, component="lm")
    k = LAYER_NORM.dep_q
    moved = {
        f"depth.out_norms.{c}.{p}": state[f"depth.out_norms.{k - 1 - c}.{p}"]
        for c in range(k)
        for p in ("weight", "bias")
    }
    return "ref", _run("ref", LAYER_NORM, state | moved)


def _norm_emb_ignored(models):
    """ref built without norm_emb (its embeddings' norms left out)."""
    state = convert(models.states["kyutai"], src="kyutai", dst="ref", cfg=LAYER_NORM, component="lm")
    plain = {k: v for k, v in state.items() if "embed_tokens" not in k or ".norm." not in k}
    return "ref", _run("ref", LAYER_NORM.replace(norm_emb=False), plain)


# the bug -> the logits it must disturb
CONTROLS = {
    _bias_dropped: "text_logits",
    _depformer_norms_reversed: "audio_logits",
    _norm_emb_ignored: "text_logits",
}


@pytest.mark.parametrize("control", CONTROLS, ids=lm_options.control_name)
def test_negative_control(control):
    models, expected = _layer_norm_runs()
    impl, cand = control(models)
    lm_options.assert_control_fails(LAYER_NORM, expected, cand, control=lm_options.control_name(control),
                                    components=(CONTROLS[control],), impl=impl)  # fmt: skip


def test_negative_control_wrong_eps():
    """flax with eps 1e-8 (layer_norm_f32's) for layer_norm's 1e-5, loaded with the same weights, fails. The model has
    no norm_emb: normalized embeddings (variance ~1) would hide the eps, raw ones (variance ~1/D) show it."""
    cfg = LAYER_NORM.replace(norm_emb=False)
    models = build("lm", cfg, "float32", impls=("kyutai", "flax"))
    expected = models.run("kyutai", {"codes": lm_options.codes(cfg)})
    wrong = {name: getattr(cfg, name).replace(norm_eps=1e-8) for name in ("temporal", "depth")}
    cand = _run("flax", cfg.replace(**wrong), models.states["flax"])
    lm_options.assert_control_fails(cfg, expected, cand, control="wrong_eps", components=("text_logits",))


def test_converting_to_hf_names_the_option():
    """converters.convert refuses an hf end for weights HF has no place for (hf stays a hop: kyutai -> flax above)."""
    models, _ = _layer_norm_runs()
    with pytest.raises(ValueError, match=r"convert kyutai->hf \(lm\): HF's Moshi embeddings have no norm"):
        convert(models.states["kyutai"], src="kyutai", dst="hf", cfg=LAYER_NORM, component="lm")
    cfg = LMConfig.tiny().with_norm("layer_norm")
    state = build("lm", cfg, "float32", impls=("kyutai",)).states["kyutai"]
    with pytest.raises(ValueError, match=r"HF's Moshi has only RMSNorm: norm='layer_norm' \(temporal stack\)"):
        convert(state, src="kyutai", dst="hf", cfg=cfg, component="lm")
