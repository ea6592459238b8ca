"""flax: the Flax NNX port (models_flax), run in our calling convention (parity/harness/adapters/ours.py).

Options: "attention" = "xla" (the plain path, default) or "pallas" (the Pallas kernels, interpret mode on CPU) for
attention, decoder layers and the LM; "cached" (attention, decoder layers) decodes step by step through the KV cache,
"chunks" in chunks of several steps; "jit" (attention, decoder layers) runs each call of the layer under `nnx.jit`.
Modules are built with `precision=HIGHEST`, so that an accelerator's default reduced-precision matmuls cannot hide a
bug in a float32 comparison. Intermediates come from `nnx.capture` (the model code carries no instrumentation).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np

import models_flax
from models_flax.lm import LM
from models_flax.loss import lm_loss
from moshi_spec import TransformerConfig
from parity.harness.adapters import ours
from parity.harness.adapters.base import Adapter, Built, State, fields

ATTENTION = ("xla", "pallas")


def jax_dtype(dtype: str) -> Any:
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[dtype]


class JaxBackend:
    classes: ClassVar[dict[str, type]] = ours.classes(models_flax, LM)
    loss = staticmethod(lm_loss)

    def construct(
        self, cls: type, args: tuple, kwargs: dict, *, dtype: str, options: dict, weights: bool, init: bool
    ) -> Any:
        from flax import nnx
        from jax import lax

        if not weights:
            return cls(*args, **kwargs)
        dt = jax_dtype(dtype)
        kwargs = {**kwargs, "dtype": dt, "param_dtype": dt}
        linears = cls is not models_flax.RMSNorm  # everything but a norm has matmuls and random-init weights
        if linears:
            kwargs["precision"] = lax.Precision.HIGHEST
        if "attention" in options:
            kwargs["impl"] = options["attention"]

        def make() -> Any:  # the Rngs are made inside: nnx.eval_shape traces the constructor
            return cls(*args, **kwargs, **({"rngs": nnx.Rngs(0)} if linears else {}))

        # init=False: the weights come from `load`, so skip the random init (a compile per parameter shape).
        return make() if init else nnx.eval_shape(make)

    def dtype(self, name: str) -> Any:
        return jax_dtype(name)

    def array(self, x: np.ndarray, dtype: str | None = None) -> Any:
        import jax.numpy as jnp

        return jnp.asarray(x, None if dtype is None else jax_dtype(dtype))

    def cache(self, batch: int, capacity: int, cfg: TransformerConfig, dtype: str) -> Any:
        return models_flax.KVCache.init(batch, capacity, cfg.num_kv_heads, cfg.head_dim, dtype=jax_dtype(dtype))

    def concat(self, arrays: list[Any], axis: int) -> Any:
        import jax.numpy as jnp

        return jnp.concatenate(arrays, axis=axis)

    def compiled(self, module: Any) -> Any:
        """module's call under a `jax.jit` (of split/merge) made here, so that a function patched since an earlier run
        (a negative control) is traced afresh; Python scalars and None (an int layer_idx) stay static, as the eager
        call sees them."""
        import jax
        from flax import nnx

        graphdef, weights = nnx.split(module)  # jax.jit over split/merge: nnx.jit walks the module on every call

        @functools.partial(jax.jit, static_argnames="static")
        def run(weights, x, arrays, static):
            return nnx.merge(graphdef, weights)(x, **arrays, **dict(static))

        def call(x: Any, **kwargs: Any) -> Any:
            static = tuple(sorted((k, v) for k, v in kwargs.items() if v is None or isinstance(v, int)))
            arrays = {k: v for k, v in kwargs.items() if k not in dict(static)}
            return run(weights, x, arrays, static)

        return call

    def lm_forward(self, module: Any, codes: np.ndarray, capture: tuple[str, ...]) -> dict[str, Any]:
        """LM.__call__; "hidden" ("depth_hidden") is read from `nnx.capture`'s method outputs: the temporal (depth)
        stack's `stack_input` (its embeddings, plus a sinusoidal embedding), then each of its layers' outputs."""
        import jax.numpy as jnp
        from flax import nnx

        codes = jnp.asarray(codes)
        if not capture:
            return fields(module(codes))
        out, seen = nnx.capture(module, nnx.Intermediate, method_outputs=nnx.Intermediate)(codes)
        stacks = {"hidden": (seen, module.layers), "depth_hidden": (seen["depth"], module.depth.layers)}
        captured = {
            name: jnp.stack([at["stack_input"][0]] + [at["layers"][i]["__call__"][0][0] for i in range(len(layers))])
            for name, (at, layers) in stacks.items()
            if name in capture
        }
        return {**fields(out), **captured}


class FlaxAdapter(Adapter):
    name = "flax"
    format = "flax"
    backend = JaxBackend()
    bindings: ClassVar = {
        **ours.layer_bindings(backend, options={"attention": ATTENTION, "jit": (True,)}),
        "lm": ours.lm_binding(backend, options={"attention": ATTENTION}),
    }

    def state(self, built: Built) -> State:
        from converters import flax_state

        return flax_state(built.module)

    placeable = True

    def load(self, built: Built, state: State, *, mesh: Any = None) -> None:
        """Loads the weights (into an abstract module too: every parameter is assigned, and nothing else is state).

        mesh: each weight goes from the host straight onto its shards by the sharding rules (the LM's
        models_flax/sharding.py table); None: jax's default device.
        """
        import jax
        from flax import nnx

        from converters import load_flax
        from models_flax import sharding

        load_flax(built.module, state, place=None if mesh is None else sharding.placer(built.module, mesh))
        flat = nnx.to_flat_state(nnx.state(built.module))
        empty = [".".join(map(str, p)) for p, v in flat if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
        if empty:
            raise ValueError(f"flax {built.component}: state left without values after loading: {empty}")
