"""The catalogue of planted porting bugs: one `Mutation` per bug, a source-level edit of models_flax, models_ref or
converters and the fast tests that should catch it.

Each entry names the exact snippet it replaces (which must occur exactly once in its file: `parity/test_mutation.py`
checks every entry against the current source, so the catalogue cannot rot silently), the replacement, the class of
porting bug it stands for and the pytest arguments of the relevant tests (node ids; the fast subset that executes the
edited code, not the whole suite). A mutant that survives tests which do run its code is the suite's blind spot: it
stays in the catalogue and in the report until a test catches it. (The first full run had two survivors whose lists
missed the existing test that catches them: see the comments at conv_legacy_split_codebook_major, whose listed test
never ran the edited code, and conv_codebooks_sorted_as_strings, which only a config of 10 or more codebooks exposes.)

Loss mutations are not in it yet (the recipe's loss landed after the catalogue was measured); the weighting bugs of
parity/test_loss.py's negative controls stand in for them.
"""

from __future__ import annotations

from parity.harness.mutation.edit import Mutation, MutationError

__all__ = ["CATALOGUE", "Mutation", "MutationError"]

# Test selections shared by several entries.
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
GREEDY_STREAM = ("parity/test_streaming.py::test_greedy_tokens_match_lmgen[0-flax]",)
MOSAIC_INTERPRET = ("parity/test_pallas.py::test_mosaic_matches_xla_in_tpu_interpret_mode",)
STREAM_LAWS = ("parity/test_sampling.py::test_each_stream_draws_its_own_law_with_its_own_noise[sampled]",)

FLAX: tuple[Mutation, ...] = (
    Mutation(
        "flax_norm_eps_hardcoded",
        "models_flax/norm.py",
        "keepdims=True) + self.eps)",
        "keepdims=True) + 1e-5)",
        "eps",
        RMSNORM,
        "RMSNorm adds the common default 1e-5 instead of the config's eps",
    ),
    Mutation(
        "flax_norm_scale_in_bf16",
        "models_flax/norm.py",
        "return (y * self.weight[...].astype(jnp.float32)).astype(x.dtype)",
        "return y.astype(x.dtype) * self.weight[...].astype(x.dtype)",
        "bf16 island dropped",
        RMSNORM + BF16_MATH,
        "the normalized activations are rounded to bf16 before the scale is applied",
    ),
    Mutation(
        "flax_rope_rotation_reversed",
        "models_flax/rope.py",
        "(xr * cos - xi * sin).astype(x.dtype), (xr * sin + xi * cos).astype(x.dtype)",
        "(xr * cos + xi * sin).astype(x.dtype), (xi * cos - xr * sin).astype(x.dtype)",
        "rope sign",
        ROPE_FLAX,
        "rope rotates by -angle (the sign of sin flipped)",
    ),
    Mutation(
        "flax_rope_hf_frequencies",
        "models_flax/rope.py",
        "return jnp.exp(jnp.arange(head_dim // 2, dtype=jnp.float32) * jnp.float32(-math.log(theta) * 2 / head_dim))",
        "return jnp.float32(theta) ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)",
        "rope frequencies",
        ROPE_FLAX,
        "HF's theta^(-2i/D) instead of kyutai's exp(-2i log(theta)/D): equal in exact arithmetic, not in float32",
    ),
    Mutation(
        "flax_mask_window_inclusive",
        "models_flax/attention.py",
        "mask = mask & (delta < context)",
        "mask = mask & (delta <= context)",
        "mask off by one",
        ATTENTION_FLAX,
        "the context window lets a query see context + 1 keys",
    ),
    Mutation(
        "flax_mask_empty_slots_visible",
        "models_flax/attention.py",
        "mask = (k_pos[:, None, :] >= 0) & (delta >= 0)",
        "mask = delta >= 0",
        "cache index",
        ("parity/test_attention.py::test_cache_step_equals_full[flax]",),
        "empty cache slots (position -1) are not masked out",
    ),
    Mutation(
        "flax_scores_in_bf16",
        "models_flax/attention.py",
        "scores.append(jnp.where(mask[:, None, None], block, jnp.finfo(jnp.float32).min))",
        "scores.append(jnp.where(mask[:, None, None], block.astype(q.dtype), jnp.finfo(q.dtype).min))",
        "bf16 island dropped",
        ATTENTION_FLAX + BF16_MATH,
        "attention scores and softmax in the activations' dtype (bf16) instead of float32",
    ),
    Mutation(
        "flax_gate_value_swapped",
        "models_flax/mlp.py",
        "gate, value = h[..., : self.hidden], h[..., self.hidden :]",
        "value, gate = h[..., : self.hidden], h[..., self.hidden :]",
        "gate/up swapped",
        MLP_FLAX,
        "the gate is taken from the second half of fc1's output",
    ),
    Mutation(
        "flax_activation_in_bf16",
        "models_flax/mlp.py",
        "gated = self.activation(gate.astype(jnp.float32)).astype(gate.dtype) * value",
        "gated = self.activation(gate) * value",
        "bf16 island dropped",
        MLP_FLAX + BF16_MATH,
        "the MLP activation is evaluated in bf16 (torch evaluates it in float32 and rounds once)",
    ),
    Mutation(
        "flax_einsum_precision_dropped",
        "models_flax/linear.py",
        "return jnp.einsum(equation, a, b, precision=precision, preferred_element_type=jnp.float32)",
        "return jnp.einsum(equation, a, b, preferred_element_type=jnp.float32)",
        "precision dropped",
        ("parity/test_precision.py::test_layer_dots_carry_the_precision",),
        "the projections ignore the model's precision (TF32 / bf16 passes on an accelerator)",
    ),
    Mutation(
        "flax_cache_slot_shifted",
        "models_flax/cache.py",
        "slots = positions % self.capacity\n        rows",
        "slots = (positions + 1) % self.capacity\n        rows",
        "cache index",
        ("parity/test_attention.py::test_cache_step_equals_full[flax]",),
        "the ring cache writes position p to slot p + 1, evicting a key still inside the window",
    ),
    Mutation(
        "flax_delay_one_extra_step",
        "models_flax/delays.py",
        "jnp.full((codes.shape[0], d), initial[k], codes.dtype), line[:, :-d]]",
        "jnp.full((codes.shape[0], d + 1), initial[k], codes.dtype), line[:, : -d - 1]]",
        "delay off by one",
        ("parity/test_lm_masks.py::test_delay_pattern_matches_kyutai[flax-tiny]",),
        "a delayed stream is shifted one step too far",
    ),
    Mutation(
        "flax_audio_mask_wrong_sentinel",
        "models_flax/lm.py",
        "audio_mask = audio_mask & (codes[:, 1 : 1 + cfg.dep_q] != -1)",
        "audio_mask = audio_mask & (codes[:, 1 : 1 + cfg.dep_q] != -2)",
        "zero token",
        LM_FLAX,
        "the audio mask tests the ungenerated sentinel (-2) instead of the zero token (-1)",
    ),
    Mutation(
        "flax_embedding_zero_token_row0",
        "models_flax/embedding.py",
        "return jnp.where((ids >= 0)[..., None], rows, fill[..., None])",
        "return jnp.where((ids >= -1)[..., None], rows, fill[..., None])",
        "zero token",
        LM_FLAX + GREEDY_STREAM,
        "the zero token (-1) embeds as row 0 of the table (clamped) instead of a zero vector",
    ),
    Mutation(
        "flax_depth_teacher_forcing_shift",
        "models_flax/lm.py",
        "depth_tokens = targets[:, : cfg.dep_q]",
        "depth_tokens = inputs[:, : cfg.dep_q]",
        "stream routing",
        LM_FLAX,
        "the depth transformer is teacher-forced with the previous frame's tokens",
    ),
    Mutation(
        "flax_layer_post_norm",
        "models_flax/layer.py",
        "x = x + self.mlp(self.post_attention_layernorm(x), layer_idx=layer_idx)",
        "x = self.post_attention_layernorm(x + self.mlp(x, layer_idx=layer_idx))",
        "residual/norm wiring",
        ("parity/test_decoder_layer.py::test_parity[ref-flax-16]",),
        "the MLP block is post-norm instead of pre-norm",
    ),
    Mutation(
        "flax_stream_initial_until_delay_exclusive",
        "models_flax/streaming.py",
        "jnp.where(offsets[:, None] <= delays[None], initial",
        "jnp.where(offsets[:, None] < delays[None], initial",
        "delay off by one",
        GREEDY_STREAM,
        "a delayed stream's initial token is fed one step too few",
    ),
    Mutation(
        "flax_stream_text_sampled_as_audio",
        "models_flax/streaming.py",
        "text = sample(text_logits, keys[0], text_sampler)",
        "text = sample(text_logits, keys[0], audio_sampler)",
        "sampler routing",
        STREAM_LAWS,
        "the text token is drawn with the audio sampler's temperature and top-k",
    ),
    Mutation(
        "flax_stream_codebooks_share_noise",
        "models_flax/streaming.py",
        "token = sample(logits, keys[1 + codebook], audio_sampler)",
        "token = sample(logits, keys[1], audio_sampler)",
        "sampler routing",
        STREAM_LAWS,
        "every audio codebook draws with the same key",
    ),
    Mutation(
        "flax_race_multiplies_noise",
        "models_flax/sampling.py",
        "choice = jnp.argmax(top / noise, axis=-1)",
        "choice = jnp.argmax(top * noise, axis=-1)",
        "sampler",
        ("parity/test_sampling.py::test_sampling_matches_kyutai_given_its_noise",),
        "the exponential race multiplies by the noise instead of dividing",
    ),
    Mutation(
        "mosaic_prefetch_index_off_by_one",
        "models_flax/kernels/mosaic.py",
        "hi = ranges_ref[2 * (b * row_blocks + i) + 1]",
        "hi = ranges_ref[2 * (b * row_blocks + i) + 2]",
        "TPU scalar prefetch",
        MOSAIC_INTERPRET,
        "the TPU kernel reads its row block's live-range end from the next entry of the scalar-prefetched ranges",
    ),
    Mutation(
        "mosaic_accumulator_in_bf16",
        "models_flax/kernels/mosaic.py",
        "pltpu.VMEM((block_q, head_dim), jnp.float32),",
        "pltpu.VMEM((block_q, head_dim), jnp.bfloat16),",
        "kernel precision",
        ("parity/test_precision.py::test_kernels_keep_float32_scores_and_state",),
        "the TPU kernel keeps its online-softmax accumulator in bf16 VMEM scratch between key blocks",
    ),
    Mutation(
        "mosaic_position_block_breaks_tiling",
        "models_flax/kernels/mosaic.py",
        "pl.BlockSpec((None, SUBLANES, block_k),",
        "pl.BlockSpec((None, 1, block_k),",
        "TPU tiling",
        ("parity/test_lowering.py::test_kernel_lowers",),
        "key positions in 1-row blocks: both interpreters run them, Mosaic's (8, 128) tiling refuses them",
    ),
)

REF: tuple[Mutation, ...] = (
    Mutation(
        "ref_norm_eps_outside_sqrt",
        "models_ref/norm.py",
        "y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)",
        "y = x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)",
        "eps",
        RMSNORM_HF_REF,
        "eps added outside the square root (LayerNorm habits)",
    ),
    Mutation(
        "ref_rope_first_row_positions",
        "models_ref/rope.py",
        "angles = positions.float()[..., None, None]",
        "angles = positions[:1].float()[..., None, None]",
        "per-row positions",
        ("parity/test_rope.py::test_hf_half_split[hf->ref]", "parity/test_rope.py::test_kyutai_to_ref"),
        "every batch row is rotated with the first row's positions",
    ),
    Mutation(
        "ref_mask_window_inclusive",
        "models_ref/attention.py",
        "mask = mask & (delta < context)",
        "mask = mask & (delta <= context)",
        "mask off by one",
        ATTENTION_REF,
        "the context window lets a query see context + 1 keys",
    ),
    Mutation(
        "ref_scores_in_input_dtype",
        "models_ref/attention.py",
        'torch.einsum("btkgd,bskd->bkgts", q.float(), k.float())',
        'torch.einsum("btkgd,bskd->bkgts", q, k).float()',
        "bf16 island dropped",
        ATTENTION_REF + ATTENTION_FLAX,
        "q.k computed in bf16 and only then widened",
    ),
    Mutation(
        "ref_kv_heads_tiled",
        "models_ref/attention.py",
        "q = q.unflatten(2, (k.shape[2], groups))",
        "q = q.unflatten(2, (groups, k.shape[2])).transpose(2, 3)",
        "kv head grouping",
        ATTENTION_REF,
        "query head h uses key/value head h % Hkv (tile) instead of h // groups (repeat)",
    ),
    Mutation(
        "ref_flexible_weight_transposed",
        "models_ref/linear.py",
        'torch.einsum("bsi,soi->bso"',
        'torch.einsum("bsi,sio->bso"',
        "transposed weight",
        ("parity/test_flexible_linear.py::test_parity[hf->ref-none]",),
        "per-codebook weights read as (in, out) instead of torch's (out, in)",
    ),
    Mutation(
        "ref_cache_positions_shifted",
        "models_ref/cache.py",
        "pos[rows, slots] = k, v, positions.long()",
        "pos[rows, slots] = k, v, positions.long() - 1",
        "cache index",
        ("parity/test_attention.py::test_cache_step_equals_full[ref]",),
        "cached keys are recorded one position early",
    ),
    Mutation(
        "ref_initial_token_one_step",
        "models_ref/delays.py",
        "out[:, k, :d] = initial[k]",
        "out[:, k, :1] = initial[k]",
        "delay off by one",
        ("parity/test_lm_masks.py::test_delay_pattern_matches_kyutai[ref-spread]",),
        "a stream delayed by d > 1 gets its initial token for one step only",
    ),
    Mutation(
        "ref_depth_projections_reversed",
        "models_ref/lm.py",
        "layer_idx=torch.arange(steps))",
        "layer_idx=torch.arange(steps).flip(0))",
        "codebook indexing",
        LM_REF,
        "the depth transformer's input projections are applied in reverse codebook order",
    ),
    Mutation(
        "ref_layer_shared_norm",
        "models_ref/layer.py",
        "x = x + self.mlp(self.post_attention_layernorm(x), layer_idx=layer_idx)",
        "x = x + self.mlp(self.input_layernorm(x), layer_idx=layer_idx)",
        "residual/norm wiring",
        ("parity/test_decoder_layer.py::test_parity[hf-ref-16]",),
        "the MLP block reuses the attention block's norm",
    ),
    Mutation(
        "ref_text_mask_wrong_sentinel",
        "models_ref/lm.py",
        "text_mask &= codes[:, :1] != -1",
        "text_mask &= codes[:, :1] != -2",
        "zero token",
        LM_REF,
        "the text mask tests the ungenerated sentinel (-2) instead of the zero token (-1)",
    ),
)

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
        'children={"norm1": "norm1.", "norm2": "norm2.",',
        'children={"norm1": "norm2.", "norm2": "norm1.",',
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
)

CATALOGUE: tuple[Mutation, ...] = FLAX + REF + CONVERTERS
"""Every planted bug; ids are unique (parity/test_mutation.py)."""
