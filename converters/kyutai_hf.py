"""kyutai <-> hf: kyutai's fused, per-codebook ModuleLists with interleaved rope <-> HF's split, stacked, half-split.

- attention: `in_projs.{c}.weight` rows [q; k; v] -> q/k/v_proj.linear.weight, q and k permuted from interleaved to
  half-split rope per head when cfg.rope (never v; never the depth transformer, which has no rope), stacked over the
  codebooks to (W, out, in) when cfg.flexible; `out_projs.{c}.weight` -> o_proj.linear.weight likewise.
- gating_mlp: `linear_in/linear_out` -> fc1/fc2; flexible: the ModuleList's `{c}.linear_in/out` stacked, sets of
  widths that differ (cfg.ffn_dims, kyutai's per-step depformer_dim_feedforward) zero-padded to ffn_dim (each half of
  fc1) and unpadded back (nonzero padding refused).
- rmsnorm: `alpha` (1, 1, D) -> `weight` (D,).
- layer_norm (the layer-norm kinds' norms, norm_emb's and Mimi's): weight and bias kept. HF's Moshi has no layer norm,
  no embedding norm and no depth output norm (depformer_norm): for such a model this format is a hop on the way to
  ref, and an HF checkpoint of it is refused by its config writer (converters/upstream_config.to_hf_config).
- lm_top: embeddings renamed, per-codebook `depformer_in.{c}` / `linears.{c}` stacked into
  `depth_decoder.input_projections` (Ki, Dd, D) / `depth_decoder.lm_heads` (K, V, Dd); low-rank depth embeddings'
  `low_rank.` linears keep their name (HF has none: a hop, as for layer norms). kyutai's head options (the heads'
  biases, extra heads, the text embeddings' demux linears) travel under HF-like names HF's Moshi has not: a hop only.
Released checkpoints' legacy fused names are normalized before this edge runs (see formats.KYUTAI.legacy); hf -> kyutai
emits the current names. kyutai has no standalone flexible linear (it uses ModuleLists of nn.Linear).

The same edge carries the Mimi codec's leaves (converters/mimi_hf.py: its rows, registered here with the LM's, one
edge per ordered pair of formats).
"""

from __future__ import annotations

from converters import layers, lm  # noqa: F401  (registers the component kinds and conditions these tables name)
from converters.edges import register_pairs
from converters.mimi_hf import TABLE as MIMI_TABLE
from converters.rules import Pair

TABLE: dict[str, tuple[Pair, ...]] = {
    "rmsnorm": (Pair("alpha", "weight", "alpha_to_weight", "weight_to_alpha"),),
    "gating_mlp": (
        Pair("linear_in.weight", "fc1.weight", when="plain"),
        Pair("linear_out.weight", "fc2.weight", when="plain"),
        Pair("{c}.linear_in.weight", "fc1.weight", "stack_fc1", "unstack_fc1", when="flexible"),
        Pair("{c}.linear_out.weight", "fc2.weight", "stack_fc2", "unstack_fc2", when="flexible"),
    ),
    "attention": (
        Pair(
            "in_projs.{c}.weight",
            ("q_proj.linear.weight", "k_proj.linear.weight", "v_proj.linear.weight"),
            "unfuse_qkv",
            "fuse_qkv",
        ),
        Pair("out_projs.0.weight", "o_proj.linear.weight", when="plain"),
        Pair("out_projs.{c}.weight", "o_proj.linear.weight", "stack", "unstack", when="flexible"),
    ),
    "lm_top": (
        Pair("emb.{c}.weight", "embed_tokens.{c}.weight"),
        Pair("text_emb.weight", "decoder.model.embed_tokens.weight"),
        Pair("text_linear.weight", "decoder.lm_head.weight"),
        Pair("depformer_in.{c}.weight", "depth_decoder.input_projections.weight", "stack", "unstack"),
        Pair("depformer_emb.{c}.weight", "depth_decoder.embed_tokens.{c}.weight"),
        Pair("depformer_text_emb.weight", "depth_decoder.text_embed_tokens.weight"),
        # depformer_low_rank_embeddings: HF has none (a hop only, refused at the ends: formats.hf_refuses)
        Pair("depformer_emb.{c}.low_rank.weight", "depth_decoder.embed_tokens.{c}.low_rank.weight"),
        Pair("depformer_text_emb.low_rank.weight", "depth_decoder.text_embed_tokens.low_rank.weight"),
        Pair("linears.{c}.weight", "depth_decoder.lm_heads.weight", "stack", "unstack"),
        # kyutai's head options, which HF has not: keys of the hop to ref only (formats.hf_refuses)
        Pair("text_linear.bias", "decoder.lm_head.bias"),
        Pair("linears.{c}.bias", "depth_decoder.lm_heads.bias", "stack", "unstack"),
        Pair("extra_heads.{c}.weight", "decoder.extra_heads.{c}.weight"),
        *(Pair(f"text_emb.{o}.weight", f"decoder.model.embed_tokens.{o}.weight") for o in ("out1", "out2")),
        *(
            Pair(f"depformer_text_emb.{o}.weight", f"depth_decoder.text_embed_tokens.{o}.weight")
            for o in ("out1", "out2")
        ),
    ),
}

if TABLE.keys() & MIMI_TABLE.keys():
    raise ValueError(f"kyutai <-> hf: the LM and Mimi tables share kinds {sorted(TABLE.keys() & MIMI_TABLE.keys())}")
register_pairs("kyutai", "hf", TABLE | MIMI_TABLE)
