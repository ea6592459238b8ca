"""Weight converters between the formats "kyutai", "hf", "ref" and "flax" (see registry.py for the rules' grammar).

Importing the package registers every edge: kyutai <-> hf <-> ref <-> flax. Whole-LM conversion (`convert_lm`, the LM
configs of upstream files) is in lm.py, checkpoint files (safetensors, Orbax) in checkpoint.py, the CLI in cli.py.
"""

from converters import hf_ref, kyutai_hf, ref_flax  # noqa: F401  (registers the edges)
from converters.arrays import from_jax, from_torch, to_jax, to_torch
from converters.lm import (
    check_lm_state,
    convert_lm,
    convert_lm_shapes,
    expected_lm_shapes,
    find_lm_path,
    from_hf_config,
    from_kyutai_kwargs,
    lm_config_from_dict,
    lm_config_from_json,
    lm_config_to_dict,
    validate_lm_shapes,
)
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
    "check_lm_state",
    "convert",
    "convert_lm",
    "convert_lm_shapes",
    "expected_lm_shapes",
    "expected_shapes",
    "find_lm_path",
    "find_path",
    "flax_state",
    "from_hf_config",
    "from_jax",
    "from_kyutai_kwargs",
    "from_torch",
    "lm_config_from_dict",
    "lm_config_from_json",
    "lm_config_to_dict",
    "load_flax",
    "load_torch",
    "register",
    "register_pairs",
    "to_jax",
    "to_torch",
    "torch_state",
    "validate_lm_shapes",
]
