"""Our two implementations (ref: PyTorch, flax: Flax NNX) share one calling convention, name for name; this module
holds it once, over a small `Backend` that knows the framework (arrays, caches, layer classes, hooks).

Layer components take x (B, T, D) (rope: (B, T, H, head_dim)), positions (B, T) and a layer_idx; with the option
"cached" attention and decoder layers decode one position at a time through a KV ring cache of capacity = context
(T when unbounded), which must equal the full pass; "chunks" (with "cached") feeds chunks of several positions instead,
through the tightest ring that holds them (context + largest chunk - 1); "jit" (flax) compiles each call of the layer
(one compile per chunk size instead of one per eager op and shape). The LM takes codes (B, 1 + n_q, T); "hidden"
("depth_hidden") captures the temporal (depth) stack's input and every layer's output; the "temporal_layer"
("depth_layer") entry runs one layer of that stack on a given input at positions 0..T-1 (teacher forcing); the "loss"
entry is the training loss of the forward
(models_*/loss.py).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from moshi_spec import TransformerConfig
from parity.harness.adapters import LAYERS
from parity.harness.adapters.base import (
    Binding,
    Built,
    Inputs,
    Outputs,
    flexible_linear_shape,
    native_inputs,
    numpy_outputs,
)

CACHED = ("attention", "decoder_layer")
CLASS_NAMES = {
    "flexible_linear": "FlexibleLinear",
    "rmsnorm": "RMSNorm",
    "gating_mlp": "GatingMLP",
    "rope": "RotaryEmbedding",
    "attention": "Attention",
    "decoder_layer": "DecoderLayer",
}
"""Our class of each layer component: models_ref and models_flax mirror each other name for name."""


def classes(package: Any, lm: type) -> dict[str, type]:
    """component -> class of models_ref or models_flax (`package`), plus the LM."""
    return {component: getattr(package, name) for component, name in CLASS_NAMES.items()} | {"lm": lm}


class Backend(Protocol):
    """What ours needs from a framework (also what framework-specific tests use to make native inputs)."""

    classes: dict[str, type]  # component -> our class ("lm" included)
    loss: Any  # the framework's `lm_loss(output, codes, **weights) -> (loss, parts)`

    def dtype(self, name: str) -> Any:
        """The framework's dtype of that name ("float32", "bfloat16", "float16")."""

    def array(self, x: np.ndarray, dtype: str | None = None) -> Any:
        """A numpy array as a framework array, cast to `dtype` when given (else the same dtype)."""

    def construct(
        self, cls: type, args: tuple, kwargs: dict, *, dtype: str, options: dict, weights: bool, init: bool
    ) -> Any:
        """cls(*args, **kwargs) plus the framework's dtype / precision / rng arguments (init: see Binding.build)."""

    def cache(self, batch: int, capacity: int, cfg: TransformerConfig, dtype: str) -> Any:
        """An empty KV ring cache."""

    def concat(self, arrays: list[Any], axis: int) -> Any: ...

    def compiled(self, module: Any) -> Any:
        """module's call, compiled (backends whose adapter offers the option "jit")."""

    def lm_forward(self, module: Any, codes: np.ndarray, capture: tuple[str, ...]) -> dict[str, Any]:
        """LM outputs (text/audio logits and masks) plus "hidden" (L + 1, B, T, D) when captured."""


def constructor_args(component: str, cfg: TransformerConfig) -> tuple[tuple, dict]:
    if component == "flexible_linear":
        layers, fan_in, fan_out = flexible_linear_shape(cfg)
        return (fan_in, fan_out, layers), {}
    if component == "rmsnorm":
        return (cfg.dim,), {"eps": cfg.norm_eps}
    if component == "rope":
        return (cfg.head_dim,), {"theta": cfg.rope_theta, "layout": cfg.rope_layout}
    return (cfg,), {}


def call(component: str, module: Any, x: Any, positions: Any, layer_idx: Any, cfg: TransformerConfig) -> Any:
    """Our calling convention, identical for ref and flax."""
    if component == "flexible_linear":
        return module(x, layer_idx=layer_idx)
    if component == "rmsnorm":
        return module(x)
    if component == "gating_mlp":
        return module(x, layer_idx=layer_idx if cfg.flexible else None)
    if component == "rope":
        return module(x, positions=positions)
    return module(x, positions=positions, layer_idx=layer_idx if cfg.flexible else None)[0]


def step_index(layer_idx: Any, t: int) -> Any:
    """The layer_idx of step t when a flexible layer runs one position at a time."""
    if layer_idx is None:
        return t
    if getattr(layer_idx, "ndim", 0) == 1:
        return layer_idx[t : t + 1]
    return layer_idx


CHUNK_SCHEDULES = ("2", "3", "4", "4-2", "2-3-4")
"""Values of the "chunks" option: chunk sizes, cycled over the sequence. Chunks of up to 4 positions are what a
streaming step may feed and what the Pallas decode kernel takes (models_flax.kernels.decode.MAX_STEPS)."""


def chunk_sizes(schedule: str, length: int) -> list[int]:
    """The chunk sizes covering `length` positions: the schedule ("2-3-4") cycled, the last chunk cut short."""
    cycle = [int(size) for size in schedule.split("-")]
    sizes: list[int] = []
    while sum(sizes) < length:
        sizes.append(min(cycle[len(sizes) % len(cycle)], length - sum(sizes)))
    return sizes


def decode_steps(
    backend: Backend, built: Built, module: Any, x: Any, positions: Any, layer_idx: Any, *, chunks: str | None = None
) -> Any:
    """Runs an attention or decoder layer (`module`: built.module or its compiled call) through a KV ring cache, one
    position at a time or in `chunks` (`CHUNK_SCHEDULES`), the ring being the smallest a chunk allows: context +
    largest chunk - 1 slots."""
    cfg = built.cfg
    batch, length = x.shape[:2]
    sizes = [1] * length if chunks is None else chunk_sizes(chunks, length)
    if cfg.flexible and max(sizes) > 1:
        raise ValueError(
            f"{built.impl}: chunked decoding of a per-codebook layer (the depth model steps one at a time)"
        )
    cache = backend.cache(batch, cfg.context + max(sizes) - 1 if cfg.context else length, cfg, built.dtype)
    outs, start = [], 0
    compiled = module is not built.module
    for size in sizes:
        idx = step_index(layer_idx, start) if cfg.flexible else None
        if compiled and isinstance(idx, int):  # traced, not static: one compile for every step's weight set
            idx = backend.array(np.asarray(idx, np.int32))
        span = slice(start, start + size)
        y, cache = module(x[:, span], positions=positions[:, span], layer_idx=idx, cache=cache)
        outs.append(y)
        start += size
    return backend.concat(outs, 1)


def layer_bindings(backend: Backend, *, options: dict[str, tuple]) -> dict[str, Binding]:
    """One Binding per layer component; `options` are the framework's extra options of attention and layers."""

    def binding(component: str) -> Binding:
        weights = component != "rope"

        def build(cfg: TransformerConfig, dtype: str, opts: dict, init: bool) -> Any:
            if "chunks" in opts and not opts.get("cached"):
                raise ValueError(f"{component}: option chunks={opts['chunks']} needs the option cached")
            args, kwargs = constructor_args(component, cfg)
            cls = backend.classes[component]
            return backend.construct(cls, args, kwargs, dtype=dtype, options=opts, weights=weights, init=init)

        def run(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
            a = native_inputs(inputs, built.dtype, backend.array)
            module = backend.compiled(built.module) if built.options.get("jit") else built.module
            if built.options.get("cached"):
                y = decode_steps(backend, built, module, a["x"], a["positions"], a.get("layer_idx"),
                                 chunks=built.options.get("chunks"))  # fmt: skip
            else:
                y = call(component, module, a["x"], a.get("positions"), a.get("layer_idx"), built.cfg)
            return numpy_outputs({"y": y})

        extra = {"cached": (True,), "chunks": CHUNK_SCHEDULES, **options} if component in CACHED else {}
        return Binding(build=build, run=run, options=extra, weights=weights)

    return {component: binding(component) for component in LAYERS}


def lm_binding(backend: Backend, *, options: dict[str, tuple]) -> Binding:
    def build(cfg: Any, dtype: str, opts: dict, init: bool) -> Any:
        lm = backend.classes["lm"]
        return backend.construct(lm, (cfg,), {}, dtype=dtype, options=opts, weights=True, init=init)

    def run(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        return numpy_outputs(backend.lm_forward(built.module, np.asarray(inputs["codes"]), capture))

    def stack_layer(stack: str):
        def run_layer(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
            """Layer inputs["layer"] of the stack on a given x (B, T, D) at positions 0..T-1 (teacher forcing)."""
            a = native_inputs(inputs, built.dtype, backend.array)
            batch, length = inputs["x"].shape[:2]
            positions = backend.array(np.broadcast_to(np.arange(length), (batch, length)).copy())
            layers = built.module.layers if stack == "temporal" else built.module.depth.layers
            return numpy_outputs({"y": layers[int(inputs["layer"])](a["x"], positions=positions)[0]})

        return run_layer

    def loss(built: Built, inputs: Inputs, capture: tuple) -> Outputs:
        """The training loss of the forward of "codes" against "labels" (default: the codes themselves); any other
        input is a keyword argument of the loss (its weights: moshi_spec/loss.py)."""
        labels = inputs.get("labels", inputs["codes"])
        weights = {k: v for k, v in inputs.items() if k not in ("codes", "labels")}
        output = built.module(backend.array(np.asarray(inputs["codes"])))
        value, parts = backend.loss(output, backend.array(np.asarray(labels)), **weights)
        return numpy_outputs({"loss": value, **parts})

    entries = {"temporal_layer": stack_layer("temporal"), "depth_layer": stack_layer("depth"), "loss": loss}
    return Binding(build=build, run=run, entries=entries, options=options, captures=("hidden", "depth_hidden"))
