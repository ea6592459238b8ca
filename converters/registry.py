"""The converter registry: edges between formats declared as tables of rules, and `convert` along the shortest path.

A rule maps source key template(s) to target key template(s) through a transform named in `TRANSFORMS`. Templates are
keys relative to the component (the prefix is stripped and re-added generically, see `shapes.split_prefixes`), with two
placeholders compiled into regex groups:
    {c}  a codebook index: all keys matching the template are gathered in index order (0..n-1, no gaps) into one list;
         in a target, one key is emitted per array the transform returns.
    {p}  any prefix ending in "." (or none); only used by normalizers, which run on whole keys.
Keys matching a rule are grouped by their placeholders other than {c}; each group is one application of the transform.

Accounting is strict on every edge: every source key must be claimed by exactly one rule, no two rules may write one
target key, a rule's inputs must share one dtype and its outputs keep it, and `convert` checks each edge's input and
output against `expected_shapes`. All problems of one check are raised together in one ConversionError.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from converters.shapes import COMPONENTS, DECODER_CHILDREN, FORMATS, ConversionError, check_state, expected_shapes
from converters.transforms import TRANSFORMS
from moshi_spec.config import TransformerConfig

State = dict[str, np.ndarray]
EdgeFn = Callable[..., State]

CONDITIONS: dict[str, Callable[[TransformerConfig], bool]] = {
    "flexible": lambda cfg: cfg.flexible,
    "plain": lambda cfg: not cfg.flexible,
}
"""Names a rule's `when` may take: the rule applies only to configs where the condition holds."""


@dataclass(frozen=True)
class Rule:
    """One row of an edge table: source key template(s) -> target key template(s) through a named transform."""

    source: tuple[str, ...] | str
    target: tuple[str, ...] | str
    transform: str = "identity"
    when: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.transform not in TRANSFORMS:
            raise ValueError(f"Rule {self.source} -> {self.target}: unknown transform {self.transform!r}")
        if self.when is not None and self.when not in CONDITIONS:
            raise ValueError(f"Rule {self.source} -> {self.target}: unknown condition {self.when!r}")
        for template in self.source + self.target:
            _compile(template)

    def applies(self, cfg: TransformerConfig) -> bool:
        return self.when is None or CONDITIONS[self.when](cfg)

    def __str__(self) -> str:
        src, dst = ", ".join(self.source), ", ".join(self.target)
        return f"[{src}] -> [{dst}] ({self.transform}{', when ' + self.when if self.when else ''})"


@dataclass(frozen=True)
class Pair:
    """Two-way row: keys `a` (format A) <-> `b` (format B), with the transform for each direction."""

    a: tuple[str, ...] | str
    b: tuple[str, ...] | str
    a_to_b: str = "identity"
    b_to_a: str = "identity"
    when: str | None = None

    def __post_init__(self) -> None:
        self.forward(), self.backward()  # validates templates, transforms and condition now, not at first use

    def forward(self, pa: str = "", pb: str = "") -> Rule:
        return Rule(_prefixed(pa, self.a), _prefixed(pb, self.b), self.a_to_b, self.when)

    def backward(self, pa: str = "", pb: str = "") -> Rule:
        return Rule(_prefixed(pb, self.b), _prefixed(pa, self.a), self.b_to_a, self.when)


def _prefixed(prefix: str, templates: tuple[str, ...] | str) -> tuple[str, ...]:
    return tuple(prefix + t for t in ((templates,) if isinstance(templates, str) else templates))


_PLACEHOLDERS = {"c": r"(?P<c>\d+)", "p": r"(?P<p>(?:.+\.)?)"}


@cache
def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w*)\}", template)
    regex = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            regex.append(re.escape(part))
        elif part in _PLACEHOLDERS and f"{{{part}}}" not in "".join(parts[:i]):
            regex.append(_PLACEHOLDERS[part])
        else:
            raise ValueError(f"key template {template!r}: unknown or repeated placeholder {{{part}}}")
    return re.compile("".join(regex))


@dataclass
class Applied:
    """Result of applying rules to a state: outputs, which source keys made each output, and unclaimed keys."""

    out: State = field(default_factory=dict)
    origin: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)


def apply_rules(
    state: Mapping[str, np.ndarray], rules: tuple[Rule, ...], cfg: TransformerConfig, *, where: str
) -> Applied:
    """Applies every rule that holds for `cfg` to `state`; keys no rule claims are returned in `unmatched`.

    Raises:
        ConversionError: a key claimed by two rules, codebook indices with gaps, a source template with no key in a
            group, mixed input dtypes, a transform that fails or changes the dtype, or two outputs with one key (listed
            together).
    """
    problems: list[str] = []
    claimed: dict[str, Rule] = {}
    plans: list[tuple[Rule, dict[tuple[tuple[str, str], ...], list[list[tuple[int, str]]]]]] = []
    for rule in (r for r in rules if r.applies(cfg)):
        groups: dict[tuple[tuple[str, str], ...], list[list[tuple[int, str]]]] = {}
        for i, template in enumerate(rule.source):
            pattern = _compile(template)
            for key in state:
                match = pattern.fullmatch(key)
                if match is None:
                    continue
                if key in claimed:
                    problems.append(f"key {key} claimed by two rules: {claimed[key]} and {rule}")
                claimed[key] = rule
                found = match.groupdict()
                index = int(found.pop("c", 0) or 0)
                groups.setdefault(tuple(sorted(found.items())), [[] for _ in rule.source])[i].append((index, key))
        plans.append((rule, groups))

    applied = Applied(unmatched=[key for key in state if key not in claimed])
    for rule, groups in plans:
        for found_items, per_source in groups.items():
            found = dict(found_items)
            inputs: list[list[np.ndarray]] = []
            sources: list[str] = []
            before = len(problems)
            for template, entries in zip(rule.source, per_source, strict=True):
                entries.sort()
                indices = [index for index, _ in entries]
                if not entries:
                    problems.append(f"rule {rule}: no key matches {template} (group {found or 'of the component'})")
                elif "{c}" in template and indices != list(range(len(indices))):
                    problems.append(f"rule {rule}: codebook indices of {template} are {indices}, expected 0..n-1")
                inputs.append([state[key] for _, key in entries])
                sources += [key for _, key in entries]
            dtypes = {x.dtype for xs in inputs for x in xs}
            if len(dtypes) > 1:
                problems.append(f"rule {rule}: inputs {sources} mix dtypes {sorted(map(str, dtypes))}")
            if len(problems) > before:
                continue
            (dtype,) = dtypes
            try:
                outputs = TRANSFORMS[rule.transform](inputs, cfg)
            except ValueError as err:
                problems.append(f"rule {rule} on {sources}: {err}")
                continue
            for template, arrays in zip(rule.target, outputs, strict=True):
                if "{c}" not in template and len(arrays) != 1:
                    problems.append(f"rule {rule}: {len(arrays)} arrays for the single key {template}")
                    continue
                for c, array in enumerate(arrays):
                    key = template.format(c=c, **found)
                    if array.dtype != dtype:
                        problems.append(f"rule {rule}: transform turned {dtype} into {array.dtype} for {key}")
                    elif key in applied.out:
                        problems.append(f"key {key} written twice: from {applied.origin[key]} and {tuple(sources)}")
                    else:
                        applied.out[key] = np.ascontiguousarray(array)
                        applied.origin[key] = tuple(sources)
    if problems:
        raise ConversionError(f"{where}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return applied


class TableEdge:
    """An edge declared as data: one tuple of rules per component it covers."""

    def __init__(self, src: str, dst: str, tables: Mapping[str, tuple[Rule, ...]]):
        self.src, self.dst, self.tables = src, dst, dict(tables)
        self.components = frozenset(self.tables)

    def __call__(self, state: Mapping[str, np.ndarray], *, cfg: TransformerConfig, component: str) -> State:
        where = f"edge {self.src}->{self.dst} ({component})"
        groups = check_state(state, self.src, component, cfg, what=f"input of {where}")
        out: State = {}
        unmatched: list[str] = []
        for prefix, group in groups.items():
            applied = apply_rules(group, self.tables[component], cfg, where=where)
            out |= {prefix + key: value for key, value in applied.out.items()}
            unmatched += [prefix + key for key in applied.unmatched]
        if unmatched:
            raise ConversionError(f"{where}: {len(unmatched)} key(s) matched by no rule: {unmatched}")
        return out

    def __repr__(self) -> str:
        return f"TableEdge({self.src!r}, {self.dst!r}, components={sorted(self.components)})"


@dataclass(frozen=True)
class FunctionEdge:
    """An edge written as a function `(state, *, cfg, component) -> state` (for what a table cannot say)."""

    fn: EdgeFn
    components: frozenset[str]

    def __call__(self, state: Mapping[str, np.ndarray], *, cfg: TransformerConfig, component: str) -> State:
        return self.fn(dict(state), cfg=cfg, component=component)


EDGES: dict[tuple[str, str], TableEdge | FunctionEdge] = {}
NORMALIZERS: dict[str, tuple[Rule, ...]] = {}


def register(
    src: str,
    dst: str,
    table: Mapping[str, tuple[Rule, ...]] | None = None,
    *,
    components: tuple[str, ...] = COMPONENTS,
    replace: bool = False,
) -> Callable[[EdgeFn], EdgeFn] | TableEdge:
    """Registers the edge src -> dst: a table (`register(src, dst, {component: rules})`) or a decorated function.

    Raises:
        ValueError: unknown format or component, or the edge is already registered (unless `replace`).
    """
    for fmt in (src, dst):
        if fmt not in FORMATS:
            raise ValueError(f"register: unknown format {fmt!r}; known: {FORMATS}")
    if (src, dst) in EDGES and not replace:
        raise ValueError(f"register: edge {src}->{dst} is already registered ({EDGES[(src, dst)]!r})")
    if table is not None:
        unknown = set(table) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"register {src}->{dst}: unknown components {sorted(unknown)}; known: {COMPONENTS}")
        edge = EDGES[(src, dst)] = TableEdge(src, dst, table)
        return edge

    def decorate(fn: EdgeFn) -> EdgeFn:
        EDGES[(src, dst)] = FunctionEdge(fn, frozenset(components))
        return fn

    return decorate


def register_pairs(a: str, b: str, pairs: Mapping[str, tuple[Pair, ...]]) -> None:
    """Registers both edges a -> b and b -> a from one two-way table; decoder_layer is derived from its children."""
    forward = {component: tuple(p.forward() for p in rows) for component, rows in pairs.items()}
    backward = {component: tuple(p.backward() for p in rows) for component, rows in pairs.items()}
    children = list(zip(DECODER_CHILDREN[a], DECODER_CHILDREN[b], strict=True))
    if all(child in pairs for (_, child), _ in children):
        fwd, bwd = [], []
        for (pa, child), (pb, child_b) in children:
            assert child == child_b, f"DECODER_CHILDREN of {a} and {b} disagree: {child} vs {child_b}"
            fwd += [p.forward(pa, pb) for p in pairs[child]]
            bwd += [p.backward(pa, pb) for p in pairs[child]]
        forward["decoder_layer"], backward["decoder_layer"] = tuple(fwd), tuple(bwd)
    register(a, b, forward)
    register(b, a, backward)


def register_normalizer(fmt: str, rules: tuple[Rule, ...]) -> None:
    """Rules run on whole keys of a `fmt` source state before anything else (legacy names -> current names)."""
    NORMALIZERS[fmt] = rules


def normalize(state: Mapping[str, np.ndarray], fmt: str, cfg: TransformerConfig) -> State:
    """Rewrites legacy keys of a `fmt` state into current ones; keys no rule claims pass through unchanged.

    Raises:
        ConversionError: a legacy key and the current key it becomes are both present (listed together).
    """
    rules = NORMALIZERS.get(fmt)
    if not rules:
        return dict(state)
    applied = apply_rules(state, rules, cfg, where=f"normalizing legacy {fmt} names")
    clashes = [f"{applied.origin[k]} and {k}" for k in applied.unmatched if k in applied.out]
    if clashes:
        raise ConversionError(
            f"{fmt} state holds both legacy and current names for the same weights ({len(clashes)}): "
            + "; ".join(clashes)
        )
    return applied.out | {key: state[key] for key in applied.unmatched}


def find_path(src: str, dst: str, component: str) -> list[str]:
    """Shortest list of formats from src to dst through edges covering `component` (breadth-first search).

    Raises:
        ValueError: no such path; the message names the formats and lists the registered edges.
    """
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
            if a == fmt and b not in previous and component in EDGES[(a, b)].components:
                previous[b] = fmt
                queue.append(b)
    edges = ", ".join(f"{a}->{b} {sorted(e.components)}" for (a, b), e in sorted(EDGES.items()))
    raise ValueError(
        f"no converter path from {src!r} to {dst!r} for component {component!r}; registered edges: {edges}"
    )


def convert(state: Mapping[str, np.ndarray], *, src: str, dst: str, cfg: TransformerConfig, component: str) -> State:
    """Converts a state of `component` (or several, under different prefixes) from format `src` to format `dst`.

    Args:
        state: flat {key: numpy array}; keys are the component's keys behind any prefix (e.g. `layers.3.`).
        src, dst: formats, in FORMATS ("kyutai", "hf", "ref", "flax").
        cfg: the transformer's config (shapes, heads, flexible, rope, rope_layout).
        component: one of COMPONENTS.

    Returns:
        A new flat state in `dst`'s layout with the same prefixes and dtypes. Round trips are bit-exact.

    Raises:
        ValueError: unknown format/component, or no path between the formats for this component.
        ConversionError: the input, or any edge's output, does not account for every key with the right shape.
    """
    for fmt in (src, dst):
        expected_shapes(fmt, component, cfg)  # unknown format/component, or a component the format lacks
    path = find_path(src, dst, component)
    state = normalize(state, src, cfg)
    check_state(state, src, component, cfg, what=f"input of convert {src}->{dst}")
    for a, b in itertools.pairwise(path):
        state = EDGES[(a, b)](state, cfg=cfg, component=component)
        check_state(state, b, component, cfg, what=f"output of edge {a}->{b}")
    return dict(state)
