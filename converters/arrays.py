"""Bit-exact array exchange between numpy (the converters' currency) and torch / jax.

A state is a flat `dict[str, np.ndarray]`; bfloat16 lives in numpy as `ml_dtypes.bfloat16`. torch and jax are imported
inside the functions so that `converters` imports where only one framework (or neither) is installed. No function here
changes a dtype: where a framework would silently cast (torch has no bf16 numpy bridge; jax without x64 turns float64
into float32), the bits are moved by hand or a TypeError is raised.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
"""The floating dtypes converted checkpoints are cast to on request, by name."""


def from_torch(tensor: Any) -> np.ndarray:
    """Copies a torch tensor (any device, grad or not) into a numpy array with the same dtype, shape and bits.

    bfloat16 travels as its int16 bit pattern and comes back as `ml_dtypes.bfloat16`.

    Raises:
        TypeError: the tensor's dtype has no numpy counterpart handled here.
    """
    import torch

    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    try:
        return t.numpy().copy()
    except TypeError as err:  # e.g. float8 types, complex32
        raise TypeError(f"from_torch: no bit-exact numpy form for torch dtype {t.dtype}") from err


def to_torch(array: np.ndarray) -> Any:
    """Copies a numpy array into a new CPU torch tensor with the same dtype, shape and bits (inverse of from_torch)."""
    import torch

    if not isinstance(array, np.ndarray):
        raise TypeError(f"to_torch: expected a numpy array, got {type(array).__name__}")
    a = np.ascontiguousarray(array)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    try:
        return torch.from_numpy(a.copy())
    except TypeError as err:
        raise TypeError(f"to_torch: no bit-exact torch form for numpy dtype {a.dtype}") from err


def from_jax(array: Any) -> np.ndarray:
    """Copies a jax array to host as a numpy array with the same dtype (jax's bfloat16 already is ml_dtypes')."""
    import jax

    return np.array(jax.device_get(array), copy=True)


def to_jax(array: np.ndarray) -> Any:
    """Puts a numpy array on jax's default device with the same dtype.

    Raises:
        TypeError: jax would store it in another dtype (float64 / int64 with x64 disabled).
    """
    import jax
    import jax.numpy as jnp

    if not isinstance(array, np.ndarray):
        raise TypeError(f"to_jax: expected a numpy array, got {type(array).__name__}")
    stored = jax.dtypes.canonicalize_dtype(array.dtype)
    if stored != array.dtype:
        raise TypeError(
            f"to_jax: jax would store a {array.dtype} array as {stored} (enable jax_enable_x64, or cast explicitly)"
        )
    return jnp.array(array, copy=True)
