"""Builds several implementations of one component from one config and ONE set of random weights, and runs them.

Weights are drawn once, in the layout of the first upstream that has the component (`adapters.WEIGHT_SOURCES`: kyutai,
else HF), then reach every other implementation only through `converters.convert`: a converter bug shows up as a
parity failure. Implementations are named as in the adapter table, with options: "flax[attention=pallas]",
"ref[cached]" (parity/harness/adapters).

    models = build("attention", cfg, "float32", impls=("hf", "flax[cached]"))
    y = models.run("hf", case.inputs())["y"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import converters
from parity.harness import adapters
from parity.harness.adapters import Impl
from parity.harness.adapters.base import Built, Inputs, Outputs, State

if TYPE_CHECKING:
    from jax.sharding import Mesh


@dataclass
class Models:
    """Implementations of one component sharing one set of weights, keyed by their labels ("flax[cached]")."""

    component: str
    cfg: Any
    dtype: str
    source: str | None
    built: dict[str, Built] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)
    mesh: Mesh | None = None  # where the JAX implementations' weights are split (`build(mesh=)`); None: one device

    def _built(self, impl: str | Impl) -> Built:
        label = str(Impl.parse(impl))
        if label not in self.built:
            raise KeyError(f"{label} was not built; built: {sorted(self.built)}")
        return self.built[label]

    def run(
        self, impl: str | Impl, inputs: Inputs, *, entry: str = "forward", capture: tuple[str, ...] = ()
    ) -> Outputs:
        """Runs one implementation (see `adapters.base` for inputs and outputs)."""
        built = self._built(impl)
        return adapters.adapter(built.impl).run(built, inputs, entry=entry, capture=capture)

    def module(self, impl: str | Impl) -> Any:
        """The native module of an in-process implementation (for negative controls that edit weights)."""
        return self._built(impl).module


def weight_source(component: str, cfg: Any) -> str:
    """The upstream whose random weights every implementation shares for this component and config."""
    reasons = []
    for name in adapters.WEIGHT_SOURCES:
        reason = adapters.adapter(name).supports(component, cfg)
        if reason is None:
            return name
        reasons.append(reason)
    raise ValueError(f"no upstream can draw the weights of {component}: {'; '.join(reasons)}")


def build(
    component: str,
    cfg: Any,
    dtype: str,
    *,
    impls: Sequence[str | Impl] = ("hf", "ref", "flax"),
    seed: int = 0,
    mesh: Mesh | None = None,
) -> Models:
    """Builds `impls` of `component` for `cfg` in `dtype` with the same seeded weights (see the module docstring).

    mesh: the JAX implementations' weights go from the host straight onto their shards of it, by the sharding rules
    (models_flax/sharding.py), so that no device holds the whole model; the torch ones run where they are built.

    Raises:
        ValueError: an implementation that cannot build the component for cfg (naming why), bad options, or a mesh
            for a component without weights or an implementation list without a JAX one.
    """
    specs = [Impl.parse(i) for i in impls]
    for spec in specs:
        reason = adapters.adapter(spec).supports(component, cfg)
        if reason:
            raise ValueError(f"build({component}): {spec} cannot: {reason}")
    source = weight_source(component, cfg) if adapters.adapter(specs[0]).has_weights(component) else None
    if mesh is not None and (source is None or not any(adapters.adapter(spec).placeable for spec in specs)):
        raise ValueError(
            f"build({component}, mesh=): the mesh places drawn weights of JAX implementations; "
            + (f"{component} has none" if source is None else f"none of {[str(s) for s in specs]} is one")
        )
    models = Models(component, cfg, dtype, source, mesh=mesh)
    if source is not None:
        upstream = adapters.adapter(source)
        built = upstream.build(component, cfg, dtype=dtype)
        upstream.randomize(built, seed)
        models.states[source] = upstream.state(built)
        models.built[source] = built
    for spec in specs:
        label = str(spec)
        if label in models.built:
            continue
        adapter = adapters.adapter(spec)
        built = adapter.build(component, cfg, dtype=dtype, options=spec.opts, init=source is None)
        if source is not None:
            weights = models.states[source]
            state = converters.convert(weights, src=source, dst=adapter.format, cfg=cfg, component=component)
            if mesh is not None and adapter.placeable:
                adapter.load(built, state, mesh=mesh)
            else:
                adapter.load(built, state)
            models.states[label] = state
        models.built[label] = built
    return models
