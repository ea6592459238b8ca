"""hf <-> ref: the refactored PyTorch keeps HF's names minus MoshiLinear's `.linear` level, in cfg.rope_layout.

HF always lays q/k rows out for the half-split rope; ref uses cfg.rope_layout, so when rope is on and the layout is
interleaved, q and k rows are permuted per head (k with the kv head count). Everything else is copied; the LM's
top-level modules drop HF's `decoder.model.` / `depth_decoder.` nesting.
"""

from __future__ import annotations

from converters import layers, lm, mimi  # noqa: F401  (registers the component kinds these tables name)
from converters.edges import register_pairs
from converters.rules import Pair

TABLE: dict[str, tuple[Pair, ...]] = {
    "flexible_linear": (Pair("weight", "weight"),),
    "rmsnorm": (Pair("weight", "weight"),),
    "layer_norm": (Pair("weight", "weight"), Pair("bias", "bias")),
    "gating_mlp": (Pair("fc1.weight", "fc1.weight"), Pair("fc2.weight", "fc2.weight")),
    "plain_mlp": (Pair("fc1.weight", "fc1.weight"), Pair("fc2.weight", "fc2.weight")),
    "layer_scale": (Pair("scale", "scale"),),
    "attention": (
        Pair("q_proj.linear.weight", "q_proj.weight", "q_half_to_layout", "q_layout_to_half"),
        Pair("k_proj.linear.weight", "k_proj.weight", "k_half_to_layout", "k_layout_to_half"),
        Pair("v_proj.linear.weight", "v_proj.weight"),
        Pair("o_proj.linear.weight", "o_proj.weight"),
    ),
    "lm_top": (
        Pair("embed_tokens.{c}.weight", "embed_tokens.{c}.weight"),
        Pair("decoder.model.embed_tokens.weight", "text_embed_tokens.weight"),
        Pair("decoder.lm_head.weight", "lm_head.weight"),
        Pair("depth_decoder.text_embed_tokens.weight", "depth.text_embed_tokens.weight"),
        Pair("depth_decoder.embed_tokens.{c}.weight", "depth.embed_tokens.{c}.weight"),
        Pair("depth_decoder.embed_tokens.{c}.low_rank.weight", "depth.embed_tokens.{c}.low_rank.weight"),
        Pair("depth_decoder.text_embed_tokens.low_rank.weight", "depth.text_embed_tokens.low_rank.weight"),
        Pair("depth_decoder.input_projections.weight", "depth.input_projections.weight"),
        Pair("depth_decoder.lm_heads.weight", "depth.lm_heads.weight"),
        # kyutai's head options (the hop from kyutai: HF's Moshi has none of them)
        Pair("decoder.lm_head.bias", "lm_head.bias"),
        Pair("depth_decoder.lm_heads.bias", "depth.lm_heads.bias"),
        Pair("decoder.extra_heads.{c}.weight", "extra_heads.{c}.weight"),
        *(Pair(f"decoder.model.embed_tokens.{o}.weight", f"text_embed_tokens.{o}.weight") for o in ("out1", "out2")),
        *(
            Pair(f"depth_decoder.text_embed_tokens.{o}.weight", f"depth.text_embed_tokens.{o}.weight")
            for o in ("out1", "out2")
        ),
    ),
}

register_pairs("hf", "ref", TABLE)
