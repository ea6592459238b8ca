"""The one table of implementations: every name the harness can build, run and compare is registered here.

An implementation is an `Adapter` (parity/harness/adapters/base.py): it builds a component from a config, loads
converted weights, runs inputs given as numpy arrays and hands back numpy arrays, capturing intermediates on request.
Each one lives in its own module and is imported only when first used, so that reading this table (e.g. to classify a
pair for the tolerance policy) imports neither torch nor jax.

    kind "upstream": the code being ported (HF transformers, kyutai moshi; later kyutai's MLX port, out of process).
    kind "ours":     the port and its refactored PyTorch mirror.

A pair of implementations falls into one of three classes, each with its own tolerances (parity/harness/policy.py):
"ours-ours", "upstream-ours", "upstream-upstream". Variants are options of an adapter, written after the name:
"flax[attention=pallas]", "ref[cached]" (`Impl.parse`). Labels of comparisons that are not between two registered
implementations still name the implementation they exercise, with the variant in brackets ("flax[step]" vs
"flax[full]" for streaming), so that every comparison has a pair class.

To add an implementation: write an Adapter (in-process, or `RemoteAdapter` for one that runs in its own interpreter)
and `register` it; see docs/extending.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parity.harness.adapters.base import Adapter, Binding

LAYERS = ("flexible_linear", "rmsnorm", "gating_mlp", "rope", "attention", "decoder_layer")
"""The layer components of the layer-level suite (each adapter binds those it has; "lm" is the whole model)."""
KINDS = ("upstream", "ours")
PAIR_CLASSES = ("ours-ours", "upstream-ours", "upstream-upstream")
WEIGHT_SOURCES = ("kyutai", "hf")
"""Where random weights are drawn, in order of preference: the first upstream that has the component. Weights reach
every other implementation only through the converters, so a converter bug fails the same comparisons as a model bug."""


@dataclass
class Entry:
    """One registered implementation: its kind, and how to make its adapter (a factory, or "module:attribute")."""

    name: str
    kind: str
    factory: str | Callable[[], Adapter]
    extra: dict[str, Binding] = field(default_factory=dict)  # components bound from elsewhere (`bind`)
    _adapter: Adapter | None = field(default=None, repr=False)

    def adapter(self) -> Adapter:
        if self._adapter is None:
            factory = self.factory
            if isinstance(factory, str):
                module, attribute = factory.split(":")
                factory = getattr(importlib.import_module(module), attribute)
            adapter = factory()
            if adapter.name != self.name:
                raise ValueError(f"adapter registered as {self.name!r} calls itself {adapter.name!r}")
            clash = sorted(set(adapter.bindings) & set(self.extra))
            if clash:
                raise ValueError(f"{self.name} has {clash} itself; they were also bound from outside")
            adapter.bindings = {**adapter.bindings, **self.extra}
            self._adapter = adapter
        return self._adapter


TABLE: dict[str, Entry] = {}


def register(name: str, *, kind: str, factory: str | Callable[[], Adapter], replace: bool = False) -> Entry:
    """Adds an implementation to the table.

    Args:
        name: the implementation's name (a record's pair names it; no brackets, no "->").
        kind: "upstream" or "ours" (decides the pair class of every comparison it takes part in).
        factory: a zero-argument callable returning the Adapter, or "package.module:attribute" naming one (imported
            on first use).
        replace: allow re-registering a name.

    Raises:
        ValueError: a bad name or kind, or a name already registered (unless `replace`).
    """
    if not name or not name.isidentifier():
        raise ValueError(f"register: implementation name must be an identifier, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"register {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if name in TABLE and not replace:
        raise ValueError(f"register: implementation {name!r} is already registered ({TABLE[name]})")
    TABLE[name] = Entry(name, kind, factory)
    return TABLE[name]


def bind(name: str, component: str, binding: Binding) -> None:
    """Teaches implementation `name` a component from outside its module: a new component kind (Mimi) brings, in its
    own file, how each implementation builds and runs it. Remote adapters learn components in their own process.

    Raises:
        KeyError: `name` is not registered.
        ValueError: `name` already has `component`.
    """
    entry = _entry(name)
    if component in entry.extra or (entry._adapter is not None and component in entry._adapter.bindings):
        raise ValueError(f"bind: {name} already has component {component!r}")
    entry.extra[component] = binding
    if entry._adapter is not None:
        entry._adapter.bindings = {**entry._adapter.bindings, component: binding}


def unregister(name: str) -> None:
    """Removes an implementation (for tests that register a throwaway one)."""
    TABLE.pop(name, None)


def _entry(name: str) -> Entry:
    try:
        return TABLE[name]
    except KeyError:
        raise KeyError(f"unknown implementation {name!r}; registered: {sorted(TABLE)}") from None


@dataclass(frozen=True)
class Impl:
    """An implementation and its options, e.g. `Impl("flax", (("attention", "pallas"),))` = "flax[attention=pallas]".

    A flag option is written without a value ("ref[cached]") and holds True.
    """

    name: str
    options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def parse(cls, spec: str | Impl) -> Impl:
        """ "flax" -> Impl("flax"); "flax[attention=pallas,cached]" -> options attention="pallas", cached=True."""
        if isinstance(spec, Impl):
            return spec
        name, bracket, rest = spec.partition("[")
        options: dict[str, object] = {}
        if bracket:
            if not rest.endswith("]") or not rest[:-1]:
                raise ValueError(f"implementation {spec!r}: expected name[option, key=value, ...]")
            for item in rest[:-1].split(","):
                key, eq, value = (part.strip() for part in item.partition("="))
                options[key] = value if eq else True
        return cls(name, tuple(sorted(options.items())))

    @property
    def opts(self) -> dict[str, object]:
        return dict(self.options)

    def variant(self, *flags: str, **options: object) -> Impl:
        """This implementation with more options: `Impl.parse("flax").variant("step")` is "flax[step]"."""
        return Impl(self.name, tuple(sorted({**self.opts, **dict.fromkeys(flags, True), **options}.items())))

    def __str__(self) -> str:
        if not self.options:
            return self.name
        items = (k if v is True else f"{k}={v}" for k, v in self.options)
        return f"{self.name}[{','.join(items)}]"


def adapter(spec: str | Impl) -> Adapter:
    """The adapter of an implementation (imported on first use)."""
    return _entry(Impl.parse(spec).name).adapter()


def kind(spec: str | Impl) -> str:
    """ "upstream" or "ours" for a name or label ("flax[attention=pallas]" is flax's kind)."""
    return _entry(Impl.parse(spec).name).kind


def pair_class(reference: str, candidate: str) -> str:
    """The tolerance class of a pair: "ours-ours", "upstream-ours" (either order) or "upstream-upstream".

    Raises:
        KeyError: a name that is not registered (a typo must not silently pick a class).
    """
    kinds = {kind(reference), kind(candidate)}
    if kinds == {"ours"}:
        return "ours-ours"
    return "upstream-upstream" if kinds == {"upstream"} else "upstream-ours"


register("kyutai", kind="upstream", factory="parity.harness.adapters.kyutai:KyutaiAdapter")
register("hf", kind="upstream", factory="parity.harness.adapters.hf:HFAdapter")
register("ref", kind="ours", factory="parity.harness.adapters.ref:RefAdapter")
register("flax", kind="ours", factory="parity.harness.adapters.flax:FlaxAdapter")
