"""ref <-> flax: same names, `weight` of a linear becomes a transposed `kernel`; same rope layout (no permutation).

torch linears store (..., out, in), Flax kernels (..., in, out); a stack keeps its leading codebook axis. Norm scales
and embedding tables keep their name and layout. Mimi's convolutions become Flax kernels too: Conv1d (out, in/g, K) ->
(K, in/g, out), ConvTranspose1d (in, out/g, K) -> (K, in, out/g) (models_flax/mimi/conv.py); its biases, LayerNorms,
LayerScales and codebooks keep their names and layouts.
"""

from __future__ import annotations

from converters import layers, lm, mimi  # noqa: F401  (registers the component kinds these tables name)
from converters.edges import register_pairs
from converters.rules import Pair


def _kernel(module: str) -> Pair:
    return Pair(f"{module}weight", f"{module}kernel", "transpose", "transpose")


def _same(key: str) -> Pair:
    return Pair(key, key)


def _conv(to_flax: str, from_flax: str) -> tuple[Pair, ...]:
    return (Pair("weight", "kernel", to_flax, from_flax), _same("bias"))


TABLE: dict[str, tuple[Pair, ...]] = {
    "flexible_linear": (_kernel(""),),
    "rmsnorm": (_same("weight"),),
    "gating_mlp": (_kernel("fc1."), _kernel("fc2.")),
    "attention": tuple(_kernel(f"{n}_proj.") for n in "qkvo"),
    "lm_top": (
        _same("embed_tokens.{c}.weight"),
        _same("text_embed_tokens.weight"),
        _kernel("lm_head."),
        _same("depth.text_embed_tokens.weight"),
        _same("depth.embed_tokens.{c}.weight"),
        _kernel("depth.embed_tokens.{c}.low_rank."),
        _kernel("depth.text_embed_tokens.low_rank."),
        _kernel("depth.input_projections."),
        _kernel("depth.lm_heads."),
        # kyutai's head options
        _same("lm_head.bias"),
        _same("depth.lm_heads.bias"),
        _kernel("extra_heads.{c}."),
        *(_kernel(f"{emb}text_embed_tokens.{o}.") for emb in ("", "depth.") for o in ("out1", "out2")),
    ),
    # Mimi (converters/mimi.py)
    "causal_conv1d": _conv("conv_to_flax", "conv_from_flax"),
    "causal_conv_transpose1d": _conv("convtr_to_flax", "convtr_from_flax"),
    "layer_norm": (_same("weight"), _same("bias")),
    "layer_scale": (_same("scale"),),
    "mimi_attention": tuple(_kernel(f"{n}_proj.") for n in "qkvo"),
    "plain_mlp": (_kernel("fc1."), _kernel("fc2.")),
    "vq_projection": (_kernel(""),),
    "codebook": (_same("embedding_sum"), _same("cluster_usage")),
}

register_pairs("ref", "flax", TABLE)
