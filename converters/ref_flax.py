"""ref <-> flax: same names, `weight` of a linear becomes a transposed `kernel`; same rope layout (no permutation).

torch linears store (..., out, in), Flax kernels (..., in, out); a stack keeps its leading codebook axis. Norm scales
and embedding tables keep their name and layout.
"""

from __future__ import annotations

from converters import layers, lm  # noqa: F401  (registers the component kinds these tables name)
from converters.edges import register_pairs
from converters.rules import Pair


def _kernel(module: str) -> Pair:
    return Pair(f"{module}weight", f"{module}kernel", "transpose", "transpose")


def _same(key: str) -> Pair:
    return Pair(key, key)


TABLE: dict[str, tuple[Pair, ...]] = {
    "flexible_linear": (_kernel(""),),
    "rmsnorm": (_same("weight"),),
    "gating_mlp": (_kernel("fc1."), _kernel("fc2.")),
    "attention": tuple(_kernel(f"{n}_proj.") for n in "qkvo"),
    "lm_top": (
        _same("embed_tokens.{c}.weight"),
        _same("text_embed_tokens.weight"),
        _same("norm.weight"),
        _kernel("lm_head."),
        _same("depth.text_embed_tokens.weight"),
        _same("depth.embed_tokens.{c}.weight"),
        _kernel("depth.input_projections."),
        _kernel("depth.lm_heads."),
    ),
}

register_pairs("ref", "flax", TABLE)
