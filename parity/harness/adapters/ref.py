"""ref: the refactored PyTorch model (models_ref), run in our calling convention (parity/harness/adapters/ours.py)."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np

import models_ref
from models_ref.lm import LM
from models_ref.loss import lm_loss
from moshi_spec import TransformerConfig
from parity.harness.adapters import ours
from parity.harness.adapters.base import TorchAdapter, fields, stack_captured, to_torch, torch_dtype


class TorchBackend:
    classes: ClassVar[dict[str, type]] = ours.classes(models_ref, LM)
    loss = staticmethod(lm_loss)

    def construct(
        self, cls: type, args: tuple, kwargs: dict, *, dtype: str, options: dict, weights: bool, init: bool
    ) -> Any:
        if not weights:
            return cls(*args, **kwargs)
        return cls(*args, **kwargs, dtype=torch_dtype(dtype)).eval()

    def dtype(self, name: str) -> Any:
        return torch_dtype(name)

    def array(self, x: np.ndarray, dtype: str | None = None) -> Any:
        return to_torch(x, dtype)

    def cache(self, batch: int, capacity: int, cfg: TransformerConfig, dtype: str) -> Any:
        return models_ref.KVCache.init(batch, capacity, cfg.num_kv_heads, cfg.head_dim, dtype=torch_dtype(dtype))

    def concat(self, arrays: list[Any], axis: int) -> Any:
        import torch

        return torch.cat(arrays, dim=axis)

    def lm_forward(self, module: Any, codes: np.ndarray, capture: tuple[str, ...]) -> dict[str, Any]:
        """LM.forward; "hidden" ("depth_hidden") hooks the temporal (depth) stack's first layer's input and every
        layer's output."""
        import torch

        stacks = {"hidden": module.layers, "depth_hidden": module.depth.layers}
        with contextlib.ExitStack() as stack:
            seen = {name: stack.enter_context(stack_captured(layers, output=lambda y: y[0]))
                    for name, layers in stacks.items() if name in capture}  # fmt: skip
            out = module(torch.from_numpy(codes.astype(np.int64)))
        return fields(out) | {name: torch.stack(hidden) for name, hidden in seen.items()}


class RefAdapter(TorchAdapter):
    name = "ref"
    format = "ref"
    backend = TorchBackend()
    bindings: ClassVar = {**ours.layer_bindings(backend, options={}), "lm": ours.lm_binding(backend, options={})}
