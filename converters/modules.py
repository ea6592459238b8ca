"""Reading a state out of a torch / Flax NNX module and loading one into it, with the converters' strict accounting.

Loading never casts and never relies on the framework's own checks: missing, unexpected, misshaped and wrongly typed
keys are all collected and raised together in one ConversionError (`accounting.account`, against the module's own
shapes and dtypes) before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from converters.accounting import account
from converters.arrays import from_jax, from_torch, to_jax, to_torch

State = dict[str, np.ndarray]


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
    dtypes = {key: from_torch(torch.empty(0, dtype=t.dtype)).dtype for key, t in target.items()}
    shapes = {key: tuple(t.shape) for key, t in target.items()}
    account(state, shapes, dtypes=dtypes, holder="module", what=f"load_torch into {type(module).__name__}")
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


def load_flax(
    module: Any, state: Mapping[str, np.ndarray], *, place: Callable[[str, np.ndarray], Any] | None = None
) -> None:
    """Replaces the module's `nnx.Param`s with `state` (same keys as `flax_state`), bit for bit, via `nnx.update`.

    place: (key, host array) -> the jax array the parameter holds; default `to_jax` (jax's default device). A loader
    onto a mesh passes one that puts each array on its shards directly (models_flax.from_checkpoint(mesh=...)).

    Raises:
        ConversionError: any key missing, unexpected, of the wrong shape or of another dtype than the module's.
    """
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    keyed = [(".".join(str(part) for part in path), path, variable) for path, variable in flat]
    shapes = {key: tuple(v.get_value().shape) for key, _, v in keyed}
    dtypes = {key: np.dtype(v.get_value().dtype) for key, _, v in keyed}
    account(state, shapes, dtypes=dtypes, holder="module", what=f"load_flax into {type(module).__name__}")
    put = place or (lambda _, array: to_jax(array))
    new = [(path, variable.replace(put(key, state[key]))) for key, path, variable in keyed]
    nnx.update(module, nnx.from_flat_state(new))
