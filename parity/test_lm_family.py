"""kyutai's LMModel family: every option the port implements drawn together (`strategies.lm_cases`: norms,
feed-forward blocks, grouped kv heads, positions, delays, ...), kyutai vs ref vs flax logits in both dtypes and
float32 streaming greedy tokens vs kyutai's LMGen. Each option family has its own file with fixed cases, a CLI
conversion and negative controls (parity/test_lm_norms.py, test_lm_ffn.py, test_lm_kv_heads.py, test_lm_positions.py,
...); this one proves they compose, on drawn models and on the model kyutai's own unit tests build."""

from functools import cache

from hypothesis import example, given, settings

from converters.lm_config import from_kyutai_kwargs
from moshi_spec import LMConfig
from parity.harness import lm_options, strategies
from parity.harness.implementations import build

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
