"""Weight converters between the formats "kyutai", "hf", "ref" and "flax": one engine for every component kind.

    convert(state, src="kyutai", dst="flax", cfg=lm_cfg, component="lm", progress=None)

Importing the package registers the formats (formats.py: one descriptor each), the component kinds (layers.py: the
layers and the decoder layer; lm.py: the whole LM; mimi.py: the Mimi codec, `component="mimi"`) and the edges
kyutai <-> hf <-> ref <-> flax (kyutai <-> hf carries Mimi's rows too, mimi_hf.py), plus kyutai <-> ref for Mimi
(kyutai_ref.py; tables of rules, rules.py). The engine (engine.py, registry.py) finds the shortest path for any kind
and checks every key with one accounting function (accounting.py), in a state's own names, released checkpoints'
legacy ones included (legacy.py); checkpoint files are in checkpoint.py, module IO in modules.py. The CLI (cli.py)
reads IN (inputs.py), holds weights to one rule of dtypes and values (values.py) and writes OUT atomically
(outdir.py); LM configs are read from upstream files in lm_config.py (each field checked and named as the file names
it, config_fields.py) and written for the upstream loaders in upstream_config.py.
"""

from converters import formats, hf_ref, kyutai_hf, kyutai_ref, layers, lm, mimi, mimi_hf, ref_flax  # noqa: F401  (registers all)
from converters.accounting import ConversionError, account
from converters.arrays import from_jax, from_torch, to_jax, to_torch
from converters.edges import FunctionEdge, TableEdge, register, register_pairs
from converters.engine import convert, convert_shapes, validate_shapes
from converters.formats import Format, LMSpelling, MimiSpelling
from converters.legacy import normalize
from converters.lm_config import (
    config_kind,
    from_hf_config,
    from_kyutai_kwargs,
    lm_config_from_dict,
    lm_config_from_json,
    lm_config_to_dict,
)
from converters.modules import flax_state, load_flax, load_torch, torch_state
from converters.registry import (
    COMPONENTS,
    EDGES,
    FORMATS,
    Component,
    Part,
    check_state,
    expected_shapes,
    find_path,
    register_component,
    register_format,
)
from converters.rules import Pair, Rule, register_condition
from converters.transforms import register_transform
from converters.upstream_config import to_hf_config, to_kyutai_kwargs, upstream_config

__all__ = [
    "COMPONENTS",
    "EDGES",
    "FORMATS",
    "Component",
    "ConversionError",
    "Format",
    "FunctionEdge",
    "LMSpelling",
    "MimiSpelling",
    "Pair",
    "Part",
    "Rule",
    "TableEdge",
    "account",
    "check_state",
    "config_kind",
    "convert",
    "convert_shapes",
    "expected_shapes",
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
    "normalize",
    "register",
    "register_component",
    "register_condition",
    "register_format",
    "register_pairs",
    "register_transform",
    "to_hf_config",
    "to_jax",
    "to_kyutai_kwargs",
    "to_torch",
    "torch_state",
    "upstream_config",
    "validate_shapes",
]
