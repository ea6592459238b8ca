"""Framework-neutral description of a Moshi LM and its Mimi codec: config dataclasses, presets and delays.

Imports neither torch nor jax, so every implementation (and a TPU user with only jax) can depend on it.
"""

from moshi_spec.config import ACTIVATIONS, NORM_EPS, ROPE_LAYOUTS, ZERO_TOKEN, LMConfig, TransformerConfig
from moshi_spec.mimi import PAD_MODES, MimiConfig, SEANetConfig
from moshi_spec.validation import ConfigError, ConfigTypeError, Problem

__all__ = [
    "ACTIVATIONS",
    "NORM_EPS",
    "PAD_MODES",
    "ROPE_LAYOUTS",
    "ZERO_TOKEN",
    "ConfigError",
    "ConfigTypeError",
    "LMConfig",
    "MimiConfig",
    "Problem",
    "SEANetConfig",
    "TransformerConfig",
]
