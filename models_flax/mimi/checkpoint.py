"""Build a ready-to-call Flax Mimi from a checkpoint directory written by `python -m converters ... --dst flax` with a
Mimi config (`--preset mimi`, `--preset mimi_tiny`, a kyutai get_mimi config): the directory's record holds component
"mimi" and the MimiConfig as `mimi_config`, `params/` the Orbax checkpoint. Loading is the LM's
(`models_flax.checkpoint.load_checkpoint`): the same record, key/shape, dtype and value checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from flax import nnx

from models_flax.checkpoint import load_checkpoint
from models_flax.mimi.model import MimiModel


def from_checkpoint(path: str | Path, *, dtype: object = None, precision: jax.lax.PrecisionLike = None) -> MimiModel:
    """The MimiModel stored at `path`, with its parameters (codebooks included) loaded bit for bit.

    Args:
        path: an OUT directory of `python -m converters --dst flax` holding a Mimi.
        dtype: compute and parameter dtype. None: the checkpoint's own, which must be one dtype, float32 or bfloat16.
            A dtype that differs from the stored one casts the weights, because it was asked for.
        precision: matmul and convolution precision passed to the model.

    Raises:
        As `models_flax.checkpoint.load_checkpoint` (an LM directory: a ValueError naming models_flax.from_checkpoint).
    """

    def build(cfg: Any, dt: Any) -> MimiModel:
        return MimiModel(cfg, dtype=dt, param_dtype=dt, precision=precision, rngs=nnx.Rngs(0))

    return load_checkpoint(path, component="mimi", build=build, dtype=dtype)
