"""hf <-> ref: the refactored PyTorch keeps HF's names minus MoshiLinear's `.linear` level, in cfg.rope_layout.

HF always lays q/k rows out for the half-split rope; ref uses cfg.rope_layout, so when rope is on and the layout is
interleaved, q and k rows are permuted per head (k with the kv head count). Everything else is copied.
"""

from __future__ import annotations

from converters.registry import Pair, register_pairs

TABLE: dict[str, tuple[Pair, ...]] = {
    "flexible_linear": (Pair("weight", "weight"),),
    "rmsnorm": (Pair("weight", "weight"),),
    "gating_mlp": (Pair("fc1.weight", "fc1.weight"), Pair("fc2.weight", "fc2.weight")),
    "attention": (
        Pair("q_proj.linear.weight", "q_proj.weight", "q_half_to_layout", "q_layout_to_half"),
        Pair("k_proj.linear.weight", "k_proj.weight", "k_half_to_layout", "k_layout_to_half"),
        Pair("v_proj.linear.weight", "v_proj.weight"),
        Pair("o_proj.linear.weight", "o_proj.weight"),
    ),
}

register_pairs("hf", "ref", TABLE)
