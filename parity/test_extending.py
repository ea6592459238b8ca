"""A fifth implementation, registered from this one file: a NumPy reference of RMSNorm (docs/extending.md).

It goes through the standard machinery only: the adapter table (`adapters.register`), `implementations.build` (weights
drawn by the upstream and converted to the "ref" layout it reads), `compare_pair` (the one comparison entry point,
the policy's ours-ours / upstream-ours bounds) and a negative control. It also runs out of process, in a worker
interpreter behind `RemoteAdapter`, the way kyutai's MLX port (its own venv) will.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moshi_spec import TransformerConfig
from parity.harness import adapters
from parity.harness.adapters.base import Adapter, Binding, Built, Inputs, Outputs, State
from parity.harness.adapters.remote import RemoteAdapter
from parity.harness.checks import compare_pair
from parity.harness.compare import ParityError
from parity.harness.strategies import Case, cases, configs

# The worker of the out-of-process run imports this module for NumpyAdapter: nothing here imports torch or jax.


def _build(cfg: Any, dtype: str, options: dict, init: bool) -> dict[str, Any]:
    return {"weight": np.ones(cfg.dim, np.float32), "eps": cfg.norm_eps, "dtype": dtype}


def _run(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
    """y = x / sqrt(mean(x^2) + eps) * weight in float32, rounded once to the layer's dtype (as ours do)."""
    import ml_dtypes

    norm = built.module
    dtype = np.dtype(ml_dtypes.bfloat16) if norm["dtype"] == "bfloat16" else np.dtype(np.float32)
    x = np.asarray(inputs["x"], np.float32).astype(dtype).astype(np.float32)  # the input in the layer's dtype
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(norm["eps"])) * norm["weight"]
    return {"y": y.astype(np.float32).astype(dtype)}


class NumpyAdapter(Adapter):
    """RMSNorm only; weights in the "ref" format (`weight` (D,)), kept as float32 numbers of the given dtype."""

    name = "numpy"
    format = "ref"
    bindings: ClassVar = {"rmsnorm": Binding(build=_build, run=_run)}

    def state(self, built: Built) -> State:
        return {"weight": built.module["weight"]}

    def load(self, built: Built, state: State) -> None:
        if set(state) != {"weight"} or state["weight"].shape != (built.cfg.dim,):
            raise ValueError(
                f"numpy rmsnorm: expected weight ({built.cfg.dim},), got {[(k, v.shape) for k, v in state.items()]}"
            )
        built.module["weight"] = state["weight"].astype(np.float32)


adapters.register("numpy", kind="ours", factory=NumpyAdapter, replace=True)
adapters.register(
    "numpy_remote", kind="ours", replace=True,
    factory=lambda: RemoteAdapter("numpy_remote", target="parity.test_extending:NumpyAdapter", format="ref",
                                  python=sys.executable),
)  # fmt: skip


@pytest.mark.parametrize("pair", (("hf", "numpy"), ("ref", "numpy")), ids="->".join)
@given(data=st.data())
def test_numpy_rmsnorm_parity(pair, data):
    compare_pair("rmsnorm", pair, data.draw(cases(configs(flexible=False))))


@settings(max_examples=3)
@given(case=cases(configs(flexible=False)))
def test_out_of_process(case):
    compare_pair("rmsnorm", ("flax", "numpy_remote"), case)


CFG = TransformerConfig(dim=16, num_heads=2, num_layers=1, ffn_dim=32)


def test_negative_control():
    """eps 1e-5 instead of 1e-8 in the NumPy port, on inputs small enough for eps to matter, must fail."""
    x = (1e-3 * np.random.default_rng(0).standard_normal((2, 3, CFG.dim))).astype(np.float32)
    case = Case(CFG, "float32", x, np.zeros((2, 3), np.int64), None, "none")
    compare_pair("rmsnorm", ("hf", "numpy"), case)  # the same case passes unplanted

    def wrong_eps(models) -> None:
        models.module("numpy")["eps"] = 1e-5

    with pytest.raises(ParityError):
        compare_pair("rmsnorm", ("hf", "numpy"), case, control="numpy_eps_1e-5", mutate=wrong_eps)


def test_remote_errors_come_back_named():
    remote = adapters.adapter("numpy_remote")
    assert remote.supports("attention", CFG) == "numpy has no component 'attention'"
    with pytest.raises(ValueError, match="numpy has no component 'attention'"):
        remote.build("attention", CFG, dtype="float32")


def test_bind_teaches_an_implementation_a_component_from_another_file():
    """A new component kind binds each implementation's build and run from its own module (docs/extending.md)."""
    identity = Binding(
        build=lambda cfg, dtype, options, init: None,
        run=lambda built, inputs, capture: {"y": inputs["x"]},
        weights=False,
    )
    adapters.bind("numpy", "identity", identity)
    try:
        built = adapters.adapter("numpy").build("identity", CFG, dtype="float32")
        x = np.arange(3, dtype=np.float32)
        assert adapters.adapter("numpy").run(built, {"x": x})["y"] is x
        with pytest.raises(ValueError, match="already has component 'identity'"):
            adapters.bind("numpy", "identity", identity)
    finally:
        del adapters.adapter("numpy").bindings["identity"]
        adapters.TABLE["numpy"].extra.pop("identity")
