"""kyutai's LMModel family: every option the port implements drawn together (`strategies.lm_cases`: norms,
feed-forward blocks, grouped kv heads, positions, delays, ...), kyutai vs ref vs flax logits in both dtypes and
float32 streaming greedy tokens vs kyutai's LMGen. Each option family has its own file with fixed cases, a CLI
conversion and negative controls (parity/test_lm_norms.py, test_lm_ffn.py, test_lm_kv_heads.py, test_lm_positions.py,
...); this one proves they compose, on drawn models and on the model kyutai's own unit tests build."""

from functools import cache

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings

from converters import lora as lora_map
from converters.lm_config import from_kyutai_kwargs
from moshi_spec import LMConfig
from moshi_spec.training import LoRAConfig, TrainConfig
from parity.harness import lm_options, strategies
from parity.harness.implementations import build
from parity.harness.training import (
    add_matching_lora,
    codes_batch,
    compare_parameters,
    flat,
    lora_tensors,
    make_pair,
    to_flax,
)

PAIRS = (("kyutai", "ref"), ("kyutai", "flax"))
# demuxed text embeddings over rank-8 depth tables: the depth text embedding's out1 / out2 map r -> depth.dim, and
# kyutai creates its `low_rank` linear but never applies it
DEMUX_LOW_RANK = LMConfig.tiny().replace(demux_second_text_stream=True, depth_low_rank=8)


@settings(max_examples=max(1, settings.default.max_examples // 8))  # ci 1, nightly 25: ~2 s each
@given(case=strategies.lm_cases())
@example(case=(LMConfig.tiny().with_norm("rms_norm"), "bfloat16"))  # computes in bf16 where rms_norm_f32 upcasts
@example(case=(DEMUX_LOW_RANK, "float32"))
def test_logits_over_drawn_options(case):
    """kyutai -> ref and -> flax logits (masks exactly, values within the policy) for drawn options and dtype."""
    cfg, dtype = case
    models = build("lm", cfg, dtype, impls=("kyutai", "ref", "flax"))
    codes = lm_options.codes(cfg)
    runs = {impl: models.run(impl, {"codes": codes}) for impl in ("kyutai", "ref", "flax")}
    for pair in PAIRS:
        lm_options.compare(cfg, runs[pair[0]], runs[pair[1]], pair, dtype)


@settings(max_examples=max(1, settings.default.max_examples // 8))  # ci 1, nightly 25: ~3 s each
@given(case=strategies.lm_cases(streaming=True))
def test_stream_tokens_over_drawn_options(case):
    """float32 greedy streaming of the Flax LM, token for token against kyutai's LMGen, for drawn options."""
    cfg, _ = case
    lm_options.assert_stream_tokens_match_lmgen(build("lm", cfg, "float32", impls=("kyutai", "flax")))


# The model kyutai's own unit tests build (kyutai-labs/moshi, moshi/tests/test_lm.py `_get_lm`): n_q == dep_q (no user
# audio), delays of every size, a one-head temporal stack with a plain FFN (LMModel's default gating) of
# hidden_scale 1, layer norms and sinusoidal positions in both stacks (LMModel's defaults), a context of 4, and a
# depformer with a silu gating, weights shared by schedule [0, 1, 1] and rank-8 embeddings.
KYUTAI_UNIT_TEST = {
    "delays": [0, 1, 2, 4], "n_q": 3, "dep_q": 3, "card": 32, "text_card": 48, "dim": 16, "num_layers": 2,
    "num_heads": 1, "hidden_scale": 1, "depformer_dim": 16, "depformer_multi_linear": True,
    "depformer_weights_per_step": True, "depformer_weights_per_step_schedule": [0, 1, 1],
    "depformer_low_rank_embeddings": 8, "depformer_num_heads": 1, "depformer_gating": "silu", "context": 4,
}  # fmt: skip


@cache
def _unit_test_runs():
    """kyutai's unit-test model read from its kwargs, built in kyutai and flax (float32), and kyutai's logits."""
    cfg = from_kyutai_kwargs(KYUTAI_UNIT_TEST)
    models = build("lm", cfg, "float32", impls=("kyutai", "flax"))
    return models, models.run("kyutai", {"codes": lm_options.codes(cfg)})


def test_kyutai_unit_test_model_reads_as_kyutai_builds_it():
    """Its kwargs read as the options kyutai builds (LMModel's defaults where the kwargs are silent), the harness's
    kyutai model (built from the kwargs written back) has exactly the parameters of `LMModel(**kwargs)`."""
    from moshi.models.lm import LMModel

    cfg = from_kyutai_kwargs(KYUTAI_UNIT_TEST)
    t, d = cfg.temporal, cfg.depth
    assert (t.norm, t.gated, t.sin_embedding, t.rope, d.sin_embedding, d.rope) == ("layer_norm", False, True, False,
                                                                                     True, False)  # fmt: skip
    assert (cfg.depth_schedule, cfg.depth_low_rank, d.num_codebooks, cfg.n_q - cfg.dep_q) == ((0, 1, 1), 8, 2, 0)
    own = {k: tuple(v.shape) for k, v in LMModel(**KYUTAI_UNIT_TEST).state_dict().items()}
    assert own == {k: v.shape for k, v in _unit_test_runs()[0].states["kyutai"].items()}


def test_kyutai_unit_test_model_converts_and_matches(tmp_path):
    """A checkpoint of it with its kwargs as --config converts with the CLI; the Flax LM computes kyutai's logits."""
    models, expected = _unit_test_runs()
    cand = lm_options.cli_converted_logits(models, KYUTAI_UNIT_TEST, tmp_path)
    lm_options.compare(models.cfg, expected, cand, ("kyutai", "flax"), "float32")


def test_kyutai_unit_test_model_streams_like_lmgen():
    """float32 greedy streaming, token for token against kyutai's LMGen (no user audio)."""
    lm_options.assert_stream_tokens_match_lmgen(_unit_test_runs()[0])


def test_demux_low_rank_parameter_count():
    """LMConfig.num_params counts kyutai's parameters of demuxed rank-8 depth text embeddings (its unused low_rank
    linear included)."""
    models = build("lm", DEMUX_LOW_RANK, "float32", impls=("kyutai",))
    assert sum(v.size for v in models.states["kyutai"].values()) == DEMUX_LOW_RANK.num_params()


# kyutai's LoRA wraps every nn.Linear: with these options also the plain FFN's linear1 / linear2, the extra heads, the
# demuxed text embeddings' out1 / out2, the low-rank projections, one shared depth input projection and, under a
# schedule, two depth weight sets for three codebooks (the rope_concat q / k rows of B unpermuted)
LORA_OPTIONS = LMConfig.tiny().replace(
    temporal=LMConfig.tiny().temporal.replace(gated=False, activation="gelu", ffn_dim=40, rope_concat=True),
    depth=LMConfig.tiny().depth.replace(num_codebooks=3),
    depth_schedule=(0, 1, 2, 2),
    depth_multi_linear=False,
    depth_low_rank=8,
    demux_second_text_stream=True,
    extra_heads=2,
)


@cache
def _lora_runs():
    """LORA_OPTIONS in kyutai and flax (float32) with matching random adapters, and kyutai's logits."""
    models = build("lm", LORA_OPTIONS, "float32", impls=("kyutai", "flax"))
    add_matching_lora(models.module("kyutai"), models.module("flax"), LORA_OPTIONS, LoRAConfig(rank=4))
    return models, models.run("kyutai", {"codes": lm_options.codes(LORA_OPTIONS)})


def test_lora_adapters_of_every_linear_convert_and_match():
    """kyutai's adapters (B random) convert to ours (converters.lora), which compute kyutai's LoRA model's logits, and
    convert back bit for bit."""
    models, expected = _lora_runs()
    kyutai_adapters = lora_tensors(models.module("kyutai"))
    named = {s.kyutai[0] for s in lora_map.sites(LORA_OPTIONS)}
    assert named >= {"transformer.layers.0.linear1", "extra_heads.1", "depformer_text_emb.out2", "depformer_in.0"}
    back = lora_map.flax_to_kyutai(lora_map.kyutai_to_flax(kyutai_adapters, LORA_OPTIONS), LORA_OPTIONS)
    assert set(back) == set(kyutai_adapters)
    assert all(np.array_equal(back[k], kyutai_adapters[k]) for k in back)
    cand = models.run("flax", {"codes": lm_options.codes(LORA_OPTIONS)})
    lm_options.compare(LORA_OPTIONS, expected, cand, ("kyutai", "flax"), "float32")


def test_negative_control_lora_extra_heads_swapped():
    """Our extra heads' adapters loaded crosswise fail the extra heads' logits."""
    models, expected = _lora_runs()
    flax = models.module("flax")
    heads = flax.extra_heads
    a0, a1 = heads[0].lora.b[...], heads[1].lora.b[...]
    heads[0].lora.b[...], heads[1].lora.b[...] = a1, a0
    try:
        cand = models.run("flax", {"codes": lm_options.codes(LORA_OPTIONS)})
    finally:
        heads[0].lora.b[...], heads[1].lora.b[...] = a0, a1
    lm_options.assert_control_fails(LORA_OPTIONS, expected, cand, control="lora_extra_heads_swapped", components=())


def test_lora_refuses_per_set_widths_that_differ():
    cfg = LMConfig.tiny().replace(depth=LMConfig.tiny().depth.replace(ffn_dims=(32, 24, 32, 16)))
    with pytest.raises(lora_map.LoRAConversionError, match=r"per-set widths that differ .* not supported"):
        lora_map.sites(cfg)


@pytest.mark.parametrize("mode", ("full", "lora"))
def test_training_gradients_match_kyutai(mode):
    """The recipe's gradients on the model with every linear option, kyutai's (in its trainer) against ours; what no
    loss reaches (the extra heads, the demuxed depth text embedding's unused low_rank linear) trains on neither side:
    kyutai's AdamW skips a parameter without a gradient, ours leaves it frozen."""
    pair = make_pair(LORA_OPTIONS, TrainConfig(mode=mode, lora=LoRAConfig(rank=4), total_steps=10))
    codes = codes_batch(LORA_OPTIONS, 1, 2, 12, seed=0)
    flax = flat(pair.flax.gradients(pair.flax.init(), jnp.asarray(codes)))
    assert not [k for k in flax if k.startswith(("extra_heads.", "depth.text_embed_tokens.low_rank."))]
    torch_grads = pair.torch.gradients(torch.from_numpy(codes.astype(np.int64)))
    assert not [n for n in torch_grads if n.startswith(("extra_heads.", "depformer_text_emb.low_rank."))]
    ref = to_flax({n: g.numpy() for n, g in torch_grads.items()}, pair, set(flax))
    compare_parameters(ref, flax, pair, component="train_grad")
