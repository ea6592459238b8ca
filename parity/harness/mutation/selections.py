"""The test selections several catalogue entries share: pytest node ids (or prefixes) of the fast tests that execute
the code an entry edits."""

RMSNORM = ("parity/test_rmsnorm.py::test_parity[ref->flax]",)
RMSNORM_HF_REF = ("parity/test_rmsnorm.py::test_parity[hf->ref]",)
ROPE_FLAX = (
    "parity/test_rope.py::test_to_flax",
    "parity/test_long_positions.py::test_rope_frequencies_round_alike",
    "parity/test_long_positions.py::test_rope",
)
ATTENTION_FLAX = ("parity/test_attention.py::test_parity[ref-flax[jit]-16]",)
ATTENTION_REF = ("parity/test_attention.py::test_parity[hf-ref-16]",)
MLP_FLAX = ("parity/test_gating_mlp.py::test_parity[ref->flax]",)
BF16_MATH = ("parity/test_precision.py::test_bf16_model_computes_float32_math[lm[xla]]",)
LM_FLAX = ("parity/test_lm.py::test_logits[ref->flax-float32]",)
LM_REF = ("parity/test_lm.py::test_logits[kyutai->ref-float32]",)
LM_NORMS = ("parity/test_lm_norms.py::test_layer_norm_logits_match_kyutai",)  # layer_norm, depformer_norm, norm_emb
LM_POSITIONS = (  # kyutai's sin_rope in both stacks, the sinusoidal embedding alone
    "parity/test_lm_positions.py::test_logits_match_kyutai[flax-sin_rope]",
    "parity/test_lm_positions.py::test_logits_match_kyutai[ref-sin_rope]",
    "parity/test_lm_positions.py::test_sin_embedding_matches_kyutai",
)
LM_HEADS_FLAX = ("parity/test_lm_heads.py::test_logits_match_kyutai[heads-flax]",)  # bias_proj, demux, extra heads
LM_HEADS_REF = ("parity/test_lm_heads.py::test_logits_match_kyutai[heads-ref]",)
LM_DEPTH_OPTIONS = (  # kyutai's schedule [2, 0, 1, 1], per-set widths, rank-8 embeddings, three input projections
    "parity/test_lm_depth_options.py::test_logits_match_kyutai[mixed-flax]",
    "parity/test_lm_depth_options.py::test_schedule_stream_tokens_match_lmgen",
)
GREEDY_STREAM = ("parity/test_streaming.py::test_greedy_tokens_match_lmgen[0-flax]",)
MOSAIC_INTERPRET = ("parity/test_pallas.py::test_mosaic_matches_xla_in_tpu_interpret_mode",)
STREAM_LAWS = ("parity/test_sampling.py::test_each_stream_draws_its_own_law_with_its_own_noise[sampled]",)
