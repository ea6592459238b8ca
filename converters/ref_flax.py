"""ref <-> flax: same names, `weight` of a linear becomes a transposed `kernel`; same rope layout (no permutation).

torch linears store (..., out, in), Flax kernels (..., in, out); a flexible stack keeps its leading codebook axis.
"""

from __future__ import annotations

from converters.registry import Pair, register_pairs

TABLE: dict[str, tuple[Pair, ...]] = {
    "flexible_linear": (Pair("weight", "kernel", "transpose", "transpose"),),
    "rmsnorm": (Pair("weight", "weight"),),
    "gating_mlp": (
        Pair("fc1.weight", "fc1.kernel", "transpose", "transpose"),
        Pair("fc2.weight", "fc2.kernel", "transpose", "transpose"),
    ),
    "attention": tuple(Pair(f"{n}_proj.weight", f"{n}_proj.kernel", "transpose", "transpose") for n in "qkvo"),
}

register_pairs("ref", "flax", TABLE)
