"""The converter entries of the mutation catalogue (catalogue.py): planted bugs in `converters/`, the key maps, layouts
and the config readers, each with the tests that should catch it."""

from __future__ import annotations

from parity.harness.mutation.edit import Mutation
from parity.harness.mutation.selections import ATTENTION_REF

CONVERTERS: tuple[Mutation, ...] = (
    Mutation(
        "conv_transpose_reverses_all_axes",
        "converters/transforms.py",
        '"transpose": _each(lambda x, cfg: x.swapaxes(-1, -2)),',
        '"transpose": _each(lambda x, cfg: x.T),',
        "transposed weight",
        (
            "parity/test_converters_tables.py::test_flax_kernels_are_transposed_and_stacks_keep_their_axis",
            "parity/test_converters_upstream.py::test_ref_to_flax_gating_computes_the_same",
        ),
        "numpy's .T reverses every axis, so a stacked (W, out, in) weight becomes (in, out, W)",
    ),
    Mutation(
        "conv_ref_flax_kernel_not_transposed",
        "converters/ref_flax.py",
        'return Pair(f"{module}weight", f"{module}kernel", "transpose", "transpose")',
        'return Pair(f"{module}weight", f"{module}kernel")',
        "transposed weight",
        ("parity/test_converters_upstream.py::test_ref_to_flax_gating_computes_the_same",),
        "torch (out, in) weights copied into Flax (in, out) kernels without a transpose",
    ),
    Mutation(
        "conv_interleaved_to_half_inverted",
        "converters/transforms.py",
        "return w.reshape(*lead, heads, hd // 2, 2, inp).swapaxes(-3, -2).reshape(w.shape)",
        "return w.reshape(*lead, heads, 2, hd // 2, inp).swapaxes(-3, -2).reshape(w.shape)",
        "converter permutation",
        (
            "parity/test_converters_tables.py::test_rope_permutation_moves_rows_as_specified",
            "parity/test_converters_upstream.py::test_kyutai_attention_converted_to_hf_computes_the_same[mha]",
        ),
        "the rope row permutation kyutai -> HF applies the inverse permutation",
    ),
    Mutation(
        "conv_rope_concat_permuted",
        "converters/transforms.py",
        "if cfg.rope and not cfg.rope_concat:  # kyutai's `rope` pairs",
        "if cfg.rope:  # kyutai's `rope` pairs",
        "converter permutation",
        ("parity/test_lm_positions.py::test_cli_converts_a_checkpoint[rope_concat]",),
        "kyutai's rope_concat q/k rows (already half-split) permuted as if interleaved",
    ),
    Mutation(
        "conv_k_permuted_with_q_heads",
        "converters/transforms.py",
        "return half_to_interleaved(w, cfg.num_kv_heads) if _ref_interleaved(cfg) else w",
        "return half_to_interleaved(w, cfg.num_heads) if _ref_interleaved(cfg) else w",
        "converter permutation",
        ("parity/test_converters_tables.py::test_kyutai_rows_reach_ref_in_ref_layout", *ATTENTION_REF),
        "k rows are permuted per query head instead of per key/value head (grouped heads)",
    ),
    Mutation(
        "conv_v_permuted_like_k",
        "converters/hf_ref.py",
        'Pair("v_proj.linear.weight", "v_proj.weight"),',
        'Pair("v_proj.linear.weight", "v_proj.weight", "k_half_to_layout", "k_layout_to_half"),',
        "converter permutation",
        ATTENTION_REF,
        "v rows get the rope permutation of k (v is never rotated)",
    ),
    Mutation(
        "conv_kyutai_norms_swapped",
        "converters/formats.py",
        '"norm1": "norm1.",\n            "norm2": "norm2.",',
        '"norm1": "norm2.",\n            "norm2": "norm1.",',
        "converter key map",
        ("parity/test_decoder_layer.py::test_kyutai_to_hf",),
        "kyutai's norm1 / norm2 mapped onto HF's post-attention / input norms",
    ),
    Mutation(
        "conv_fused_k_v_swapped",
        "converters/transforms.py",
        "q, k, v = w[:Q], w[Q : Q + KV], w[Q + KV :]",
        "q, v, k = w[:Q], w[Q : Q + KV], w[Q + KV :]",
        "converter key map",
        ("parity/test_converters_upstream.py::test_kyutai_attention_converted_to_hf_computes_the_same[mha]",),
        "kyutai's fused in_proj rows read as [q; v; k]",
    ),
    Mutation(
        "conv_legacy_split_codebook_major",
        "converters/transforms.py",
        "return [list(w.reshape(cfg.weight_sets, -1, *w.shape[1:]))]",
        "return [list(w.reshape(-1, cfg.weight_sets, *w.shape[1:]).swapaxes(0, 1))]",
        "converter permutation",
        # test_legacy_split_matches_kyutais_own_load_hook checks the tests' own fusing helper against kyutai's load
        # hook and never runs split_steps: listed alone, it let this mutant survive the first full run.
        (
            "parity/test_converters_tables.py::test_legacy_names_give_the_same_hf_state",
            "parity/test_lm_converters.py::test_legacy_fused_names_give_the_same_params",
        ),
        "released fused weights split codebook-interleaved instead of step-major",
    ),
    Mutation(
        "conv_codebooks_sorted_as_strings",
        "converters/rules.py",
        "entries.sort()",
        "entries.sort(key=lambda entry: entry[1])",
        "converter key map",
        # Only a config with 10 or more codebooks tells the orders apart: the tiny configs' conversions survive it, the
        # 7B key/shape conversion (placeholders, n_q = 16) catches it through the rules' index check.
        (
            "parity/test_converters_tables.py::test_kyutai_flexible_weights_stack_in_codebook_order",
            "parity/test_lm_converters.py::test_round_trip_through_every_format_is_bit_exact[float32]",
            "parity/test_lm_converters.py::test_7b_shapes_validate_and_convert_without_allocating",
        ),
        "per-codebook keys gathered in string order (emb.10 before emb.2) instead of index order",
    ),
    Mutation(
        "conv_bf16_through_float32",
        "converters/arrays.py",
        "return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()",
        "return t.float().numpy().astype(ml_dtypes.bfloat16)",
        "dtype round trip",
        ("parity/test_converters_upstream.py::test_arrays_move_every_bfloat16_bit_pattern",),
        "bf16 weights moved through float32 (NaN payloads and signalling bits are not kept)",
    ),
    Mutation(
        "conv_hf_mimi_frame_rate_derived",
        "converters/mimi_hf_config.py",
        'frame_rate = config.get("frame_rate", config.get("_frame_rate"))',
        'frame_rate = config.get("frame_rate")',
        "config reader",
        ("parity/test_mimi_hf_config.py::test_written_config_reads_back_through_transformers[stride_4]",),
        "the frame rate transformers' own to_dict writes (`_frame_rate`) not read: HF's derivation assumes a "
        "downsampling stride of 2",
    ),
    Mutation(
        "conv_hf_mimi_kv_heads_written_as_heads",
        "converters/mimi_hf_config.py",
        '"num_key_value_heads": t.num_kv_heads,',
        '"num_key_value_heads": t.num_heads,',
        "config reader",
        ("parity/test_mimi_hf_config.py::test_written_config_reads_back_through_transformers[kv_heads]",),
        "an HF Mimi config.json written with as many kv heads as query heads (grouped kv heads lost)",
    ),
    Mutation(
        "conv_hf_mimi_default_pad_mode",
        "converters/mimi_hf_config.py",
        '"use_causal_conv": True, "pad_mode": "constant",',
        '"use_causal_conv": True, "pad_mode": "replicate",',
        "config reader",
        ("parity/test_mimi_hf_config.py::test_hf_defaults_are_the_released_mimi",),
        "an HF Mimi config that leaves pad_mode out read with the wrong default padding",
    ),
)
