"""Flax NNX port of Moshi. Imports jax and flax only (never torch), so a TPU/GPU user needs nothing else.

Every module mirrors `models_ref` name for name; constructors take the config plus keyword-only `dtype` (compute),
`param_dtype` (storage) and `precision` (matmuls), and calls are keyword-only after the main input.

`models_flax.from_checkpoint(path)` loads a converted checkpoint; it is imported on first use, and reads the files
through `converters` only when called, so `import models_flax` imports neither torch nor the converters.
"""

from models_flax.attention import Attention
from models_flax.cache import KVCache
from models_flax.checks import checked_jit
from models_flax.layer import DecoderLayer
from models_flax.linear import FlexibleLinear, Linear
from models_flax.mlp import GatingMLP
from models_flax.norm import RMSNorm
from models_flax.rope import RotaryEmbedding

__all__ = [
    "Attention",
    "DecoderLayer",
    "FlexibleLinear",
    "GatingMLP",
    "KVCache",
    "Linear",
    "RMSNorm",
    "RotaryEmbedding",
    "checked_jit",
    "from_checkpoint",
]


def __getattr__(name: str) -> object:
    if name == "from_checkpoint":  # lazily: models_flax.checkpoint is the converters' side of the model
        from models_flax.checkpoint import from_checkpoint

        return from_checkpoint
    raise AttributeError(f"module 'models_flax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"from_checkpoint"})
