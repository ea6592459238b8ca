"""The grammar of converter tables: rules (key templates -> key templates through a named transform), named
conditions, and `apply_rules`, the interpreter that runs a table over a state.

A rule maps source key template(s) to target key template(s) through a transform named in `transforms.TRANSFORMS`.
Templates are keys relative to the component, with two placeholders compiled into regex groups:
    {c}  an index (a codebook, a layer, a quantizer): all keys matching the template are gathered in index order
         (0..n-1, no gaps) into one list; in a target, one key is emitted per array the transform returns.
    {p}  any prefix ending in "." (or none); used by the legacy-name normalization, which runs on whole keys.
Keys matching a rule are grouped by their placeholders other than {c}; each group is one application of the transform.

A rule's `when` names a predicate in `CONDITIONS` (registered by the component kinds, e.g. "flexible" reads
`cfg.flexible`): the rule applies only to configs where it holds. Neither rules nor this module know any config type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from converters import transforms
from converters.accounting import ConversionError

State = dict[str, np.ndarray]

CONDITIONS: dict[str, Callable[[Any], bool]] = {}
"""Names a rule's `when` may take -> predicate over the component's config."""


def register_condition(name: str, predicate: Callable[[Any], bool], *, replace: bool = False) -> None:
    """Makes `when=name` available to rules.

    Raises:
        ValueError: the name is taken (unless `replace`).
    """
    if name in CONDITIONS and not replace:
        raise ValueError(f"register_condition: {name!r} is already registered")
    CONDITIONS[name] = predicate


def _templates(value: tuple[str, ...] | str) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class Rule:
    """One row of an edge table: source key template(s) -> target key template(s) through a named transform."""

    source: tuple[str, ...] | str
    target: tuple[str, ...] | str
    transform: str = "identity"
    when: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", _templates(self.source))
        object.__setattr__(self, "target", _templates(self.target))
        if self.transform not in transforms.TRANSFORMS:
            raise ValueError(f"Rule {self.source} -> {self.target}: unknown transform {self.transform!r}")
        if self.when is not None and self.when not in CONDITIONS:
            raise ValueError(f"Rule {self.source} -> {self.target}: unknown condition {self.when!r}")
        for template in self.source + self.target:
            _compile(template)

    def applies(self, cfg: Any) -> bool:
        return self.when is None or CONDITIONS[self.when](cfg)

    def under(self, prefix: str) -> Rule:
        """The same rule with `prefix` in front of every source and target template."""
        return Rule(
            tuple(prefix + t for t in self.source), tuple(prefix + t for t in self.target), self.transform, self.when
        )

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

    def forward(self) -> Rule:
        return Rule(self.a, self.b, self.a_to_b, self.when)

    def backward(self) -> Rule:
        return Rule(self.b, self.a, self.b_to_a, self.when)


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


Groups = dict[tuple[tuple[str, str], ...], list[list[tuple[int, str]]]]


def _claim(state: Mapping[str, np.ndarray], rules: tuple[Rule, ...], cfg: Any, problems: list[str], at: str):
    """Which keys each applicable rule claims, grouped by placeholder values: [(rule, groups)], claimed keys."""
    claimed: dict[str, Rule] = {}
    plans: list[tuple[Rule, Groups]] = []
    for rule in (r for r in rules if r.applies(cfg)):
        groups: Groups = {}
        for i, template in enumerate(rule.source):
            pattern = _compile(template)
            for key in state:
                match = pattern.fullmatch(key)
                if match is None:
                    continue
                if key in claimed:
                    problems.append(f"key {at}{key} claimed by two rules: {claimed[key]} and {rule}")
                claimed[key] = rule
                found = match.groupdict()
                index = int(found.pop("c", 0) or 0)
                groups.setdefault(tuple(sorted(found.items())), [[] for _ in rule.source])[i].append((index, key))
        plans.append((rule, groups))
    return plans, claimed


def apply_rules(
    state: Mapping[str, np.ndarray], rules: tuple[Rule, ...], cfg: Any, *, where: str, at: str = ""
) -> Applied:
    """Applies every rule that holds for `cfg` to `state`; keys no rule claims are returned in `unmatched`.

    `at` is the prefix `state`'s keys sit under in the whole state: problems name source keys as `at + key`.

    Raises:
        ConversionError: a key claimed by two rules, indices with gaps, a source template with no key in a group,
            mixed input dtypes, a transform that fails or changes the dtype, or two outputs with one key (listed
            together).
    """
    problems: list[str] = []
    plans, claimed = _claim(state, rules, cfg, problems, at)
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
                    problems.append(f"rule {rule}: no key matches {at}{template} (group {found or 'of the component'})")
                elif "{c}" in template and indices != list(range(len(indices))):
                    problems.append(f"rule {rule}: indices of {at}{template} are {indices}, expected 0..n-1")
                inputs.append([state[key] for _, key in entries])
                sources += [key for _, key in entries]
            named = [at + key for key in sources]
            dtypes = {x.dtype for xs in inputs for x in xs}
            if len(dtypes) > 1:
                problems.append(f"rule {rule}: inputs {named} mix dtypes {sorted(map(str, dtypes))}")
            if len(problems) > before:
                continue
            (dtype,) = dtypes
            try:
                outputs = transforms.TRANSFORMS[rule.transform](inputs, cfg)
            except ValueError as err:
                problems.append(f"rule {rule} on {named}: {err}")
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
                        first = tuple(at + k for k in applied.origin[key])
                        problems.append(f"key {key} written twice: from {first} and {tuple(named)}")
                    else:
                        applied.out[key] = np.ascontiguousarray(array)
                        applied.origin[key] = tuple(sources)
    if problems:
        raise ConversionError(f"{where}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return applied
