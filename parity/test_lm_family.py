"""kyutai's LMModel family: every option the port implements drawn together (`strategies.lm_cases`: norms,
feed-forward blocks, grouped kv heads, positions, delays, ...), kyutai vs ref vs flax logits in both dtypes and
float32 streaming greedy tokens vs kyutai's LMGen. Each option family has its own file with fixed cases, a CLI
conversion and negative controls (parity/test_lm_norms.py, test_lm_ffn.py, test_lm_kv_heads.py, test_lm_positions.py,
...); this one proves they compose."""

from hypothesis import example, given, settings

from moshi_spec import LMConfig
from parity.harness import lm_options, strategies
from parity.harness.implementations import build

PAIRS = (("kyutai", "ref"), ("kyutai", "flax"))


@settings(max_examples=max(1, settings.default.max_examples // 8))  # ci 1, nightly 25: ~2 s each
@given(case=strategies.lm_cases())
@example(case=(LMConfig.tiny().with_norm("rms_norm"), "bfloat16"))  # computes in bf16 where rms_norm_f32 upcasts
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
