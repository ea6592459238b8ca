"""The converter registries (formats, component kinds, edges), what a component looks like in a format, the strict
check of a state against it, and the one path search.

A component kind is either a leaf, whose `shapes(format, cfg)` gives its keys and shapes in a format, or a composite
of named parts (`parts(format, cfg)`: each a component kind, a config and the key prefix it sits under in that format).
A decoder layer is a composite of norms, attention and MLP; the whole LM a composite of its top-level weights and one
decoder layer per layer of each stack. Parts are matched across formats by name, so converting a composite is
converting each of its leaves, edges only ever hold tables for leaves, and one path search serves every kind.

Configs are opaque here: each kind's `shapes` / `parts` and each transform reads what it needs (no config type is
imported or checked).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from converters.accounting import Shape, account, split_prefixes

State = dict[str, np.ndarray]


@dataclass(frozen=True)
class Part:
    """One named part of a composite in one format: its kind and config, and the prefix its keys sit under."""

    name: str
    prefix: str
    component: str
    cfg: Any


@dataclass(frozen=True)
class Leaf:
    """A leaf inside a component: part names from the top (the same in every format), full prefix, kind, config."""

    name: tuple[str, ...]
    prefix: str
    component: str
    cfg: Any


@dataclass(frozen=True, kw_only=True)
class Component:
    """A component kind. Exactly one of `shapes` (a leaf) or `parts` (a composite of `uses`) is given.

    Attributes:
        name: the kind's name (`component=` of `convert`).
        shapes: (format descriptor, cfg) -> {key relative to the component: shape}, or None if the format lacks it.
        parts: (format descriptor, cfg) -> the parts in that format, or None if the format lacks the kind.
        uses: the kinds a composite's parts may be (a path must have edges for all of them).
        whole: states hold exactly one instance with whole keys (a checkpoint); otherwise any number of instances
            under any prefixes (`layers.3.`), recovered from the keys.
    """

    name: str
    shapes: Callable[[Any, Any], Mapping[str, Shape] | None] | None = None
    parts: Callable[[Any, Any], Sequence[Part] | None] | None = None
    uses: tuple[str, ...] = ()
    whole: bool = False

    def __post_init__(self) -> None:
        if (self.shapes is None) == (self.parts is None):
            raise ValueError(f"component {self.name!r}: give exactly one of shapes (a leaf) or parts (a composite)")
        if self.parts is not None and not self.uses:
            raise ValueError(f"component {self.name!r}: a composite must name the kinds its parts use")


class Edge(Protocol):
    """A registered conversion src -> dst for the leaf kinds in `components`; `at` is the prefix the state's keys sit
    under in the whole state, for messages."""

    components: frozenset[str]

    def __call__(self, state: Mapping[str, np.ndarray], *, cfg: Any, component: str, at: str = "") -> State: ...


FORMATS: dict[str, Any] = {}
"""Format name -> descriptor (converters.formats.Format)."""
COMPONENTS: dict[str, Component] = {}
EDGES: dict[tuple[str, str], Edge] = {}


def register_format(fmt: Any, *, replace: bool = False) -> None:
    """Registers a format descriptor (anything with a `name`; converters.formats.Format for the built-in ones).

    Raises:
        ValueError: the name is taken (unless `replace`).
    """
    if fmt.name in FORMATS and not replace:
        raise ValueError(f"register_format: format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt


def register_component(kind: Component, *, replace: bool = False) -> None:
    """Registers a component kind.

    Raises:
        ValueError: the name is taken (unless `replace`), or a composite uses an unregistered kind.
    """
    if kind.name in COMPONENTS and not replace:
        raise ValueError(f"register_component: component {kind.name!r} is already registered")
    unknown = [used for used in kind.uses if used not in COMPONENTS]
    if unknown:
        raise ValueError(f"register_component: {kind.name!r} uses unregistered kinds {unknown}")
    COMPONENTS[kind.name] = kind


def get_format(name: str) -> Any:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known: {tuple(FORMATS)}")
    return FORMATS[name]


def get_component(name: str) -> Component:
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; known: {tuple(COMPONENTS)}")
    return COMPONENTS[name]


def leaf_kinds(component: str) -> frozenset[str]:
    """The leaf kinds a component is made of (itself, for a leaf)."""
    kind = get_component(component)
    if kind.parts is None:
        return frozenset({component})
    return frozenset().union(*(leaf_kinds(used) for used in kind.uses))


def parts(fmt: str, component: str, cfg: Any) -> Sequence[Part]:
    """The parts of a composite in format `fmt`.

    Raises:
        ValueError: unknown format or component, a format without the component, or two parts of one name.
    """
    kind, descriptor = get_component(component), get_format(fmt)
    assert kind.parts is not None, f"{component} is a leaf"
    found = kind.parts(descriptor, cfg)
    if found is None:
        raise ValueError(f"format {fmt!r} has no component {component!r}")
    names = [part.name for part in found]
    if len(set(names)) != len(names):
        raise ValueError(f"component {component!r} in {fmt!r}: part names repeat: {names}")
    return found


def leaves(fmt: str, component: str, cfg: Any) -> list[Leaf]:
    """Every leaf of a component in format `fmt`, in part order, with its full prefix and config."""
    if get_component(component).parts is None:
        expected_shapes(fmt, component, cfg)  # unknown format, or a format without the component
        return [Leaf((), "", component, cfg)]
    found = []
    for part in parts(fmt, component, cfg):
        for leaf in leaves(fmt, part.component, part.cfg):
            found.append(Leaf((part.name, *leaf.name), part.prefix + leaf.prefix, leaf.component, leaf.cfg))
    return found


def expected_shapes(fmt: str, component: str, cfg: Any) -> dict[str, Shape]:
    """The keys (relative to the component) and shapes of one `component` in format `fmt` for `cfg`.

    Raises:
        ValueError: unknown format or component, or a component the format does not have (kyutai flexible_linear).
    """
    kind, descriptor = get_component(component), get_format(fmt)
    if kind.shapes is None:
        shapes: dict[str, Shape] = {}
        for part in parts(fmt, component, cfg):
            inner = expected_shapes(fmt, part.component, part.cfg)
            shapes |= {part.prefix + key: shape for key, shape in inner.items()}
        return shapes
    found = kind.shapes(descriptor, cfg)
    if found is None:
        raise ValueError(f"format {fmt!r} has no component {component!r}")
    return dict(found)


def check_state(
    state: Mapping[str, object], fmt: str, component: str, cfg: Any, *, what: str = "state"
) -> dict[str, dict[str, np.ndarray]]:
    """Checks that `state` holds exactly the keys and shapes of `component`(s) in format `fmt` (no legacy names).

    Returns:
        The state grouped by instance prefix, `{prefix: {relative key: array}}` (a `whole` kind: one group, "").

    Raises:
        ConversionError: listing, all at once, every missing key (expected shape), unexpected key (its shape), key
            with the wrong shape (expected vs got) and value that is not a numpy array.
    """
    expected = expected_shapes(fmt, component, cfg)
    if get_component(component).whole:
        groups, where = {"": dict(state)}, ""
    else:
        groups = split_prefixes(state, expected)
        where = f" (instances under {sorted(groups)})"
    full = {prefix + key: shape for prefix in groups for key, shape in expected.items()}
    account(state, full, what=f"{what}: not a {fmt} {component} for this config{where}")
    return groups  # type: ignore[return-value]  (checked: numpy arrays only)


def find_path(src: str, dst: str, component: str) -> list[str]:
    """Shortest list of formats from src to dst through edges covering every leaf kind of `component` (BFS).

    Raises:
        ValueError: unknown component, or no such path; the message names the formats and lists the registered edges.
    """
    needed = leaf_kinds(component)
    previous: dict[str, str | None] = {src: None}
    queue = deque([src])
    while queue:
        fmt = queue.popleft()
        if fmt == dst:
            path = [dst]
            while (before := previous[path[-1]]) is not None:
                path.append(before)
            return path[::-1]
        for a, b in sorted(EDGES):
            if a == fmt and b not in previous and needed <= EDGES[(a, b)].components:
                previous[b] = fmt
                queue.append(b)
    edges = ", ".join(f"{a}->{b} {sorted(e.components)}" for (a, b), e in sorted(EDGES.items()))
    raise ValueError(
        f"no converter path from {src!r} to {dst!r} for component {component!r}; registered edges: {edges}"
    )
