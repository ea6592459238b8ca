"""kyutai <-> ref, direct, for the Mimi codec's leaves (the LM goes kyutai <-> hf <-> ref: this edge has no LM kind).

The component kinds (converters/mimi.py) already place every leaf under its kyutai key (SEANet's Sequential indices,
the wrapper modules' `conv.conv.` / `convtr.convtr.`, `transformer.layers.`, `rvq_first` / `rvq_rest`,
`vq.layers.{k}._codebook.`), so the tables only say what changes inside a leaf:
- convolutions: the wrapper prefix goes, weights keep torch's layout;
- attention: `in_projs.0.weight` rows [q; k; v] split into q/k/v_proj with NO rope permutation (our Mimi keeps
  kyutai's interleaved layout), `out_projs.0` -> o_proj;
- MLP: kyutai's `linear1` / `linear2` (in the layer itself) -> mlp.fc1 / fc2;
- quantizer projections: 1x1 convolutions (out, in, 1) -> linears (out, in);
- codebooks: `embedding_sum` and `cluster_usage` kept; `_initialized` must be 1 (an untrained codebook is refused,
  naming its key) and is dropped; ref -> kyutai writes 1.0.
LayerNorm and LayerScale keep their names.
"""

from __future__ import annotations

from converters import mimi  # noqa: F401  (registers the component kinds these tables name)
from converters.edges import register_pairs
from converters.rules import Pair


def _wrapped(wrapper: str) -> tuple[Pair, ...]:
    return (Pair(f"{wrapper}weight", "weight"), Pair(f"{wrapper}bias", "bias"))


def _same(*keys: str) -> tuple[Pair, ...]:
    return tuple(Pair(key, key) for key in keys)


TABLE: dict[str, tuple[Pair, ...]] = {
    "causal_conv1d": _wrapped("conv.conv."),
    "causal_conv_transpose1d": _wrapped("convtr.convtr."),
    "layer_norm": _same("weight", "bias"),
    "layer_scale": _same("scale"),
    "mimi_attention": (
        Pair("in_projs.0.weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight"), "split_qkv", "join_qkv"),
        Pair("out_projs.0.weight", "o_proj.weight"),
    ),
    "plain_mlp": (Pair("linear1.weight", "fc1.weight"), Pair("linear2.weight", "fc2.weight")),
    "vq_projection": (Pair("weight", "weight", "conv1x1_to_linear", "linear_to_conv1x1"),),
    "codebook": (
        Pair(("_initialized", "cluster_usage"), "cluster_usage", "drop_initialized", "add_initialized"),
        Pair("embedding_sum", "embedding_sum"),
    ),
}

register_pairs("kyutai", "ref", TABLE)
