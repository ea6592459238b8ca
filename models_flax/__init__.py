"""Flax NNX port of Moshi. Imports jax and flax only (never torch), so a TPU/GPU user needs nothing else.

Every module mirrors `models_ref` name for name; constructors take the config plus keyword-only `dtype` (compute),
`param_dtype` (storage) and `precision` (matmuls), and calls are keyword-only after the main input.
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
]
