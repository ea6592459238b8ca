"""Weight converters between the formats "kyutai", "hf", "ref" and "flax" (see registry.py for the rules' grammar).

Importing the package registers every edge: kyutai <-> hf <-> ref <-> flax.
"""

from converters import hf_ref, kyutai_hf, ref_flax  # noqa: F401  (registers the edges)
from converters.arrays import from_jax, from_torch, to_jax, to_torch
from converters.modules import flax_state, load_flax, load_torch, torch_state
from converters.registry import EDGES, Pair, Rule, convert, find_path, register, register_pairs
from converters.shapes import COMPONENTS, FORMATS, ConversionError, expected_shapes

__all__ = [
    "COMPONENTS",
    "EDGES",
    "FORMATS",
    "ConversionError",
    "Pair",
    "Rule",
    "convert",
    "expected_shapes",
    "find_path",
    "flax_state",
    "from_jax",
    "from_torch",
    "load_flax",
    "load_torch",
    "register",
    "register_pairs",
    "to_jax",
    "to_torch",
    "torch_state",
]
