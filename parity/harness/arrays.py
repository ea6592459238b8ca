"""Framework-neutral array access for the parity harness.

Everything the harness compares goes through `to_numpy`, which accepts torch tensors, jax arrays and numpy arrays and
never changes the dtype: a bfloat16 tensor comes back as an `ml_dtypes.bfloat16` array holding the same bits. Neither
torch nor jax is imported at module import, so the harness runs where only one of them is installed; a framework is
imported lazily, only when one of its arrays is passed in (at which point it is already loaded).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

# torch dtypes numpy has no native type for, mapped to the ml_dtypes type with the same bit layout.
_TORCH_TO_ML_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}
_INT_OF_ITEMSIZE = {1: "int8", 2: "int16"}


def _framework(x: Any) -> str:
    """Returns "numpy", "torch" or "jax" for an array, judged by its type's module so nothing gets imported."""
    if isinstance(x, np.ndarray | np.generic):
        return "numpy"
    root = type(x).__module__.split(".")[0]
    if root == "torch":
        return "torch"
    if root in ("jax", "jaxlib"):
        return "jax"
    raise TypeError(
        f"expected a torch tensor, jax array or numpy array, got {type(x).__module__}.{type(x).__qualname__}; "
        "Python scalars and lists are refused because converting them would pick a dtype"
    )


def to_numpy(x: Any) -> np.ndarray:
    """Converts a torch tensor, jax array or numpy array to a numpy array of the same dtype and shape.

    Args:
        x: torch.Tensor (any device, grad or not), jax.Array, or numpy array/scalar.

    Returns:
        A numpy array with `x`'s shape and dtype; low-precision floats come back as ml_dtypes types (bit-identical).

    Raises:
        TypeError: `x` is none of the three kinds, or a torch dtype with no numpy/ml_dtypes counterpart.
    """
    kind = _framework(x)
    if kind == "numpy":
        return np.asarray(x)
    if kind == "jax":
        # np.asarray keeps jax's bfloat16 (an ml_dtypes type) as is.
        return np.asarray(x)
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__qualname__}")
    t = x.detach().cpu()
    name = str(t.dtype).removeprefix("torch.")
    if name in _TORCH_TO_ML_DTYPES:
        # Tensor.numpy() refuses these dtypes; reinterpret the bits through a same-width integer instead.
        int_dtype = getattr(torch, _INT_OF_ITEMSIZE[t.element_size()])
        return t.view(int_dtype).numpy().view(_TORCH_TO_ML_DTYPES[name])
    try:
        return t.numpy()
    except TypeError as e:
        raise TypeError(f"torch dtype {t.dtype} has no numpy counterpart: {e}") from e


def dtype_name(x: Any) -> str:
    """Canonical dtype name ("float32", "bfloat16", "float16", "int32", "bool", ...) of an array or a dtype.

    Args:
        x: a torch tensor, jax array or numpy array; or a torch.dtype, numpy dtype, ml_dtypes type or dtype name.
    """
    module_root = type(x).__module__.split(".")[0]
    if module_root == "torch" and type(x).__name__ == "dtype":
        return str(x).removeprefix("torch.")
    if isinstance(x, str | np.dtype | type):
        return np.dtype(x).name
    if _framework(x) == "torch":
        return str(x.dtype).removeprefix("torch.")
    # numpy and jax (including tracers) expose a numpy dtype; no conversion needed.
    return np.dtype(x.dtype).name
