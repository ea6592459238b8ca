"""Edges between formats: tables of rules per leaf component kind (or, for what a table cannot say, a function),
registered one way (`register`) or both ways from two-way rows (`register_pairs`).

Accounting is strict on every edge: its input is checked against the source format's shapes, every source key must be
claimed by exactly one rule, no two rules may write one target key, and `convert` checks every edge's output against
the target format's shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters import registry
from converters.accounting import ConversionError
from converters.rules import Pair, Rule, apply_rules

State = dict[str, np.ndarray]
EdgeFn = Callable[..., State]


class TableEdge:
    """An edge declared as data: one tuple of rules per leaf component kind it covers."""

    def __init__(self, src: str, dst: str, tables: Mapping[str, tuple[Rule, ...]]):
        self.src, self.dst, self.tables = src, dst, dict(tables)
        self.components = frozenset(self.tables)

    def __call__(self, state: Mapping[str, np.ndarray], *, cfg: Any, component: str, at: str = "") -> State:
        """Converts one or more instances (under their prefixes) of a leaf `component` from src's layout to dst's.

        `at`: the prefix `state`'s keys sit under in the whole state (the engine passes a leaf's), for messages only.

        Raises:
            ConversionError: the input is not a src state of the component, or keys no rule claims (listed).
        """
        where = f"edge {self.src}->{self.dst} ({component})"
        groups = registry.check_state(state, self.src, component, cfg, what=f"input of {where}")
        out: State = {}
        unmatched: list[str] = []
        for prefix, group in groups.items():
            applied = apply_rules(group, self.tables[component], cfg, where=where, at=at + prefix)
            out |= {prefix + key: value for key, value in applied.out.items()}
            unmatched += [at + prefix + key for key in applied.unmatched]
        if unmatched:
            raise ConversionError(f"{where}: {len(unmatched)} key(s) matched by no rule: {unmatched}")
        return out

    def __repr__(self) -> str:
        return f"TableEdge({self.src!r}, {self.dst!r}, components={sorted(self.components)})"


@dataclass(frozen=True)
class FunctionEdge:
    """An edge written as a function `(state, *, cfg, component) -> state` (the engine's `at` is not passed on)."""

    fn: EdgeFn
    components: frozenset[str]

    def __call__(self, state: Mapping[str, np.ndarray], *, cfg: Any, component: str, at: str = "") -> State:
        return self.fn(dict(state), cfg=cfg, component=component)


def register(
    src: str,
    dst: str,
    table: Mapping[str, tuple[Rule, ...]] | None = None,
    *,
    components: tuple[str, ...] = (),
    replace: bool = False,
) -> Callable[[EdgeFn], EdgeFn] | TableEdge:
    """Registers the edge src -> dst: a table (`register(src, dst, {kind: rules})`) or a decorated function
    (`@register(src, dst, components=(...))`).

    Raises:
        ValueError: unknown format, a kind that is not a registered leaf, or the edge is already registered (unless
            `replace`).
    """
    for fmt in (src, dst):
        registry.get_format(fmt)
    if (src, dst) in registry.EDGES and not replace:
        raise ValueError(f"register: edge {src}->{dst} is already registered ({registry.EDGES[(src, dst)]!r})")
    kinds = tuple(table) if table is not None else components
    bad = [k for k in kinds if k not in registry.COMPONENTS or registry.COMPONENTS[k].parts is not None]
    if bad:
        leaves = [k for k, kind in registry.COMPONENTS.items() if kind.parts is None]
        raise ValueError(f"register {src}->{dst}: {bad} are not registered leaf components; leaves: {leaves}")
    if table is not None:
        edge = registry.EDGES[(src, dst)] = TableEdge(src, dst, table)
        return edge

    def decorate(fn: EdgeFn) -> EdgeFn:
        registry.EDGES[(src, dst)] = FunctionEdge(fn, frozenset(components))
        return fn

    return decorate


def register_pairs(a: str, b: str, pairs: Mapping[str, tuple[Pair, ...]]) -> None:
    """Registers both edges a -> b and b -> a from one two-way table."""
    register(a, b, {kind: tuple(p.forward() for p in rows) for kind, rows in pairs.items()})
    register(b, a, {kind: tuple(p.backward() for p in rows) for kind, rows in pairs.items()})
