"""What every implementation adapter does, and the pieces the torch-based ones share.

An adapter holds one `Binding` per component it has. The harness talks to it in numpy only:

    built = adapter.build(component, cfg, dtype="float32", options={})   # random-init module, or a remote handle
    adapter.load(built, state)                                            # weights in adapter.format's layout
    out = adapter.run(built, inputs, entry="forward", capture=("hidden",))

`inputs` is a dict of numpy arrays and Python scalars (the component's own input names: "x", "positions",
"layer_idx" for a layer; "codes" for the LM); floating inputs arrive in float32 and the adapter casts them to the
dtype it was built in (round to nearest even, the same on every side). `run` returns a dict of numpy arrays in the
implementation's own output dtype (bf16 as `ml_dtypes.bfloat16`, bit for bit). Intermediates are computed only when
named in `capture` (the LM's "hidden": the temporal stack's input and every layer's output, stacked (L + 1, B, T, D);
"depth_hidden": the same for the depth transformer, (L_depth + 1, B * T, dep_q, D_depth)).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from parity.harness.adapters import Impl

State = dict[str, np.ndarray]
Inputs = Mapping[str, Any]
Outputs = dict[str, np.ndarray]
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Binding:
    """How one adapter builds and runs one component.

    Attributes:
        build: (cfg, dtype name, options, init) -> the native module; init=False: its weights need not be
            initialised, they will be loaded (the Flax adapter then builds it abstractly: no random-init compiles).
        run: (built, inputs, capture) -> outputs; the "forward" entry (`Built` carries the module, config, dtype
            and options).
        entries: further entry points by name, same signature as `run` (e.g. the LM's "temporal_layer").
        supports: cfg -> None, or why this implementation cannot build the component for cfg.
        options: option name -> the values it may take (a flag: (True,)).
        captures: the intermediates `run` can capture.
        weights: whether the component has weights (rope has none).
        randomize: (native module, seed, cfg) -> None: the component's own seeded random weights, for an upstream
            that draws them (default: `randomize_`, every parameter scaled to its last axis).
    """

    build: Callable[..., Any]
    run: Callable[..., Outputs]
    entries: Mapping[str, Callable[..., Outputs]] = field(default_factory=dict)
    supports: Callable[[Any], str | None] = lambda cfg: None
    options: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    captures: tuple[str, ...] = ()
    weights: bool = True
    randomize: Callable[[Any, int, Any], None] | None = None


@dataclass
class Built:
    """One built implementation of one component (what `Adapter.build` returns and the other methods take)."""

    impl: Impl
    component: str
    cfg: Any
    dtype: str
    module: Any
    compiled: dict[Any, Any] = field(default_factory=dict, repr=False)  # the binding's compiled functions, by key

    @property
    def options(self) -> dict[str, Any]:
        return self.impl.opts


class Adapter:
    """One implementation. Subclasses set `name`, `format` (its converter format) and `bindings`, and implement the
    weight methods (`state`, `load`, and `randomize` for an upstream that draws the shared random weights)."""

    name: str = ""
    format: str = ""
    bindings: ClassVar[Mapping[str, Binding]] = {}
    placeable: ClassVar[bool] = False  # `load(built, state, mesh=)` puts the weights on a mesh's devices (JAX ones)

    def binding(self, component: str) -> Binding:
        try:
            return self.bindings[component]
        except KeyError:
            raise ValueError(f"{self.name} has no component {component!r}; it has {sorted(self.bindings)}") from None

    def supports(self, component: str, cfg: Any) -> str | None:
        """None if this implementation can build `component` for `cfg`, else the reason it cannot."""
        if component not in self.bindings:
            return f"{self.name} has no component {component!r}"
        return self.bindings[component].supports(cfg)

    def has_weights(self, component: str) -> bool:
        """Whether `component` has weights (rope has none: nothing to draw, convert or load)."""
        return self.binding(component).weights

    def build(
        self, component: str, cfg: Any, *, dtype: str, options: Mapping[str, Any] | None = None, init: bool = True
    ) -> Built:
        """A module of `component` for `cfg` in `dtype` ("float32" or "bfloat16"), randomly initialised unless `init`
        is False (then only `load` may give it weights).

        Raises:
            ValueError: an unknown component, dtype or option value, or a config this implementation cannot build.
        """
        binding = self.binding(component)
        if dtype not in DTYPES:
            raise ValueError(f"{self.name}: dtype must be one of {DTYPES}, got {dtype!r}")
        options = dict(options or {})
        for key, value in options.items():
            allowed = binding.options.get(key)
            if allowed is None or value not in allowed:
                known = {k: list(v) for k, v in binding.options.items()}
                raise ValueError(f"{self.name} {component}: option {key}={value!r} not supported; options: {known}")
        reason = binding.supports(cfg)
        if reason:
            raise ValueError(f"{self.name} cannot build {component}: {reason}")
        impl = Impl(self.name, tuple(sorted(options.items())))
        return Built(impl, component, cfg, dtype, binding.build(cfg, dtype, options, init))

    def wrap(
        self, module: Any, component: str, cfg: Any, *, dtype: str, options: Mapping[str, Any] | None = None
    ) -> Built:
        """A module made elsewhere (e.g. loaded from a checkpoint) as a Built this adapter can run."""
        self.binding(component)
        return Built(Impl(self.name, tuple(sorted((options or {}).items()))), component, cfg, dtype, module)

    def run(self, built: Built, inputs: Inputs, *, entry: str = "forward", capture: tuple[str, ...] = ()) -> Outputs:
        """Runs an entry point of the built component; see the module docstring for inputs and outputs."""
        binding = self.binding(built.component)
        unknown = sorted(set(capture) - set(binding.captures))
        if unknown:
            raise ValueError(f"{built.impl} {built.component}: cannot capture {unknown}; can: {binding.captures}")
        if entry == "forward":
            fn = binding.run
        elif entry in binding.entries:
            fn = binding.entries[entry]
        else:
            raise ValueError(f"{built.impl} {built.component}: no entry {entry!r}; has {['forward', *binding.entries]}")
        return fn(built, inputs, tuple(capture))

    def state(self, built: Built) -> State:
        """The built module's weights as numpy arrays, in this adapter's format."""
        raise NotImplementedError(f"{self.name}: state")

    def load(self, built: Built, state: State) -> None:
        """Loads weights given in this adapter's format, bit for bit, with strict key accounting."""
        raise NotImplementedError(f"{self.name}: load")

    def randomize(self, built: Built, seed: int) -> None:
        """Draws the seeded random weights every implementation then shares (upstream weight sources only)."""
        raise NotImplementedError(f"{self.name} does not draw weights; the sources are the upstreams")


class TorchAdapter(Adapter):
    """Weights of a torch module: its state_dict, loaded with the converters' strict accounting."""

    def state(self, built: Built) -> State:
        from converters import torch_state

        return torch_state(built.module)

    def load(self, built: Built, state: State) -> None:
        from converters import load_torch

        load_torch(built.module, state)

    def randomize(self, built: Built, seed: int) -> None:
        own = self.binding(built.component).randomize
        if own is not None:
            own(built.module, seed, built.cfg)
        else:
            randomize_(built.module, seed)

    def run(self, built: Built, inputs: Inputs, *, entry: str = "forward", capture: tuple[str, ...] = ()) -> Outputs:
        import torch

        with torch.no_grad():
            return super().run(built, inputs, entry=entry, capture=capture)


def flexible_linear_shape(cfg: Any) -> tuple[int, int, int]:
    """(num_layers, in, out) of the standalone flexible linear component: the depth model's per-codebook D -> ffn."""
    return cfg.num_codebooks, cfg.dim, cfg.ffn_dim


def torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def randomize_(module: Any, seed: int) -> None:
    """Seeded weights that make every parameter matter: linears ~ N(0, 1/fan_in), norm scales ~ 1 + 0.3 N(0, 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("alpha") or "norm" in name or p.dim() == 1:
                p.copy_((1 + 0.3 * noise).to(p.dtype))
            else:
                p.copy_((noise / p.shape[-1] ** 0.5).to(p.dtype))


def to_torch(x: np.ndarray, dtype: str | None = None) -> Any:
    """A numpy array as a torch tensor, cast to `dtype` when given."""
    import torch

    x = np.asarray(x)
    tensor = torch.from_numpy(x if x.flags.c_contiguous else x.copy())  # (not ascontiguousarray: it makes 0-d 1-d)
    return tensor if dtype is None else tensor.to(torch_dtype(dtype))


def native_inputs(inputs: Inputs, dtype: str, array: Callable[..., Any] = to_torch) -> dict[str, Any]:
    """numpy inputs as framework arrays (`array(x, dtype=None)`): "x" cast from float32 to `dtype`, other arrays as
    they are, scalars and None as they are."""
    out = {}
    for key, value in inputs.items():
        if key == "x":
            out[key] = array(np.asarray(value, np.float32), dtype)
        else:
            out[key] = array(value) if isinstance(value, np.ndarray) else value
    return out


def device_of(module: Any) -> Any:
    """The torch device a module's weights are on (a module moved to a GPU takes its inputs there; outputs come back
    through `numpy_outputs` from any device)."""
    return next(module.parameters()).device


@contextlib.contextmanager
def stack_captured(layers: Sequence[Any], *, output: Callable[[Any], Any] = lambda y: y) -> Iterator[list[Any]]:
    """While the block runs, collects the first torch layer's input and every layer's output (`output` picks the
    tensor from what a layer returns) into the yielded list: the "hidden" captures of a torch LM."""
    seen: list[Any] = []
    hooks = [layers[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))]
    hooks += [layer.register_forward_hook(lambda _m, _a, y: seen.append(output(y))) for layer in layers]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def fields(output: Any) -> dict[str, Any]:
    """A dataclass output (LMOutput) as a dict of its fields; an optional field that is None (no extra heads) is
    left out."""
    return {f.name: getattr(output, f.name) for f in dataclasses.fields(output) if getattr(output, f.name) is not None}


def numpy_outputs(outputs: Mapping[str, Any]) -> Outputs:
    """Native outputs (torch, jax or numpy arrays) as numpy arrays of the same dtype."""
    from parity.harness.arrays import to_numpy

    return {key: to_numpy(value) for key, value in outputs.items()}
