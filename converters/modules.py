"""Reading a state out of a torch / Flax NNX module and loading one into it, with the converters' strict accounting.

Loading never casts and never relies on the framework's own checks: missing, unexpected, misshaped and wrongly typed
keys are all collected and raised together in one ConversionError before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from converters.arrays import from_jax, from_torch, to_jax, to_torch
from converters.shapes import ConversionError

State = dict[str, np.ndarray]


def _account(
    current: Mapping[str, tuple[tuple[int, ...], str]], state: Mapping[str, np.ndarray], *, where: str
) -> None:
    """Raises one ConversionError listing every key where `state` differs from `current` ({key: (shape, dtype)})."""
    problems: list[str] = []
    for key, (shape, dtype) in current.items():
        if key not in state:
            problems.append(f"missing     {key}: expected {shape} {dtype}, got nothing")
            continue
        value = state[key]
        if not isinstance(value, np.ndarray):
            problems.append(f"not numpy   {key}: got {type(value).__module__}.{type(value).__qualname__}")
        elif tuple(value.shape) != tuple(shape):
            problems.append(f"wrong shape {key}: expected {tuple(shape)}, got {value.shape}")
        elif str(value.dtype) != dtype:
            problems.append(f"wrong dtype {key}: module has {dtype}, state has {value.dtype} (no silent cast)")
    for key in state:
        if key not in current:
            problems.append(f"unexpected  {key}: expected nothing, got {getattr(state[key], 'shape', '?')}")
    if problems:
        raise ConversionError(f"{where}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


def torch_state(module: Any) -> State:
    """The module's `state_dict()` (parameters and persistent buffers) as numpy copies with the same dtypes."""
    return {key: from_torch(value) for key, value in module.state_dict().items()}


def load_torch(module: Any, state: Mapping[str, np.ndarray]) -> None:
    """Copies `state` into the module's parameters and buffers, bit for bit, keeping the module's dtypes.

    Raises:
        ConversionError: any key missing, unexpected, of the wrong shape or of another dtype than the module's.
    """
    import torch

    target = module.state_dict()
    current = {key: (tuple(t.shape), str(from_torch(torch.empty(0, dtype=t.dtype)).dtype)) for key, t in target.items()}
    _account(current, state, where=f"load_torch into {type(module).__name__}")
    with torch.no_grad():
        for key, tensor in target.items():
            tensor.copy_(to_torch(state[key]))


def _flat_params(module: Any) -> list[tuple[str, Any]]:
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return [(".".join(str(part) for part in path), variable) for path, variable in flat]


def flax_state(module: Any) -> State:
    """The module's `nnx.Param`s as numpy copies, keyed by their state path joined with "." (e.g. `layers.0.kernel`)."""
    return {key: from_jax(variable.get_value()) for key, variable in _flat_params(module)}


def load_flax(module: Any, state: Mapping[str, np.ndarray]) -> None:
    """Replaces the module's `nnx.Param`s with `state` (same keys as `flax_state`), bit for bit, via `nnx.update`.

    Raises:
        ConversionError: any key missing, unexpected, of the wrong shape or of another dtype than the module's.
    """
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    keyed = [(".".join(str(part) for part in path), path, variable) for path, variable in flat]
    current = {key: (tuple(v.get_value().shape), str(np.dtype(v.get_value().dtype))) for key, _, v in keyed}
    _account(current, state, where=f"load_flax into {type(module).__name__}")
    new = [(path, variable.replace(to_jax(state[key]))) for key, path, variable in keyed]
    nnx.update(module, nnx.from_flat_state(new))
