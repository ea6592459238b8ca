"""Refactored PyTorch Moshi: clean, typed, one concept per file, mirroring `models_flax` name for name.

Only our own code lives here: the upstream modules (HF transformers, kyutai moshi) are built and run by the harness's
adapters (parity/harness/adapters/hf.py, kyutai.py), imported from the installed packages.
"""

from models_ref.attention import Attention
from models_ref.cache import KVCache
from models_ref.layer import DecoderLayer
from models_ref.linear import FlexibleLinear
from models_ref.mlp import GatingMLP
from models_ref.norm import RMSNorm
from models_ref.rope import RotaryEmbedding

__all__ = ["Attention", "DecoderLayer", "FlexibleLinear", "GatingMLP", "KVCache", "RMSNorm", "RotaryEmbedding"]
