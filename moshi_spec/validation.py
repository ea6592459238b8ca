"""Field checks for the config dataclasses: every problem of one config is collected, then raised together.

The type rule: an int field takes a Python int (not a bool, a float, a str or a numpy integer: configs are compared
by equality and written to JSON, where a numpy scalar does not serialize); a float field takes a Python int or float
(numpy's float64 is a float) and is stored as a float; a flag takes a bool; a choice takes a str from its list.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

_FIELD = object()  # default of `value`: read the field from the config


@dataclass(frozen=True)
class Problem:
    """One bad field: its name (dotted for a nested config, indexed for a sequence entry), its value, what is wrong."""

    field: str
    value: Any
    message: str
    wrong_type: bool = False


class ConfigError(ValueError):
    """A config that cannot work; `problems` lists every bad field, the message names each with its value."""

    def __init__(self, owner: str, problems: list[Problem]):
        self.owner = owner
        self.problems = tuple(problems)
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        super().__init__(f"{owner}: {count}" + "; ".join(p.message for p in problems))

    def __reduce__(self) -> tuple[Any, ...]:  # the default would call __init__ with the message alone
        return type(self), (self.owner, list(self.problems))


class ConfigTypeError(ConfigError, TypeError):
    """A ConfigError whose problems are all wrong types."""


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class Checker:
    """Collects the problems of one config. Each field check reads the field from the config and records it as bad when
    it fails, so that a rule between fields runs only when `valid` says all of its fields passed their own checks."""

    def __init__(self, config: Any):
        self.config = config
        self.problems: list[Problem] = []
        self.bad: set[str] = set()

    def value(self, field: str) -> Any:
        """The value of a field, dotted for a nested config's (`depth.num_codebooks`)."""
        return functools.reduce(getattr, field.split("."), self.config)

    def valid(self, *fields: str) -> bool:
        return not self.bad.intersection(fields)

    def fail(self, field: str, message: str, *, value: Any = _FIELD, wrong_type: bool = False) -> bool:
        self.problems.append(Problem(field, self.value(field) if value is _FIELD else value, message, wrong_type))
        self.bad.add(field.split("[")[0])
        return False

    def wrong_type(self, field: str, expected: str, *, value: Any = _FIELD) -> bool:
        value = self.value(field) if value is _FIELD else value
        python = {"an int": "int()", "a float": "float()"}.get(expected.split(" or ")[0])
        hint = f"; convert with {python}" if python and type(value).__module__ == "numpy" else ""
        message = f"{field} must be {expected}, got {value!r} ({_type_name(value)}){hint}"
        return self.fail(field, message, value=value, wrong_type=True)

    def integer(self, field: str, *, minimum: int = 1, optional: bool = False, value: Any = _FIELD) -> bool:
        """A Python int >= minimum (or None when optional)."""
        value = self.value(field) if value is _FIELD else value
        if value is None and optional:
            return True
        if not isinstance(value, int) or isinstance(value, bool):
            return self.wrong_type(field, "an int" + (" or None" if optional else ""), value=value)
        if value < minimum:
            bound = f">= {minimum}{' or None' if optional else ''}"
            return self.fail(field, f"{field} must be {bound}, got {value}", value=value)
        return True

    def integers(self, field: str, *, minimum: int) -> bool:
        """A tuple of Python ints, each >= minimum; every bad entry is its own problem."""
        values = self.value(field)
        if not isinstance(values, tuple):
            return self.wrong_type(field, "a tuple of ints")
        return all([self.integer(f"{field}[{k}]", minimum=minimum, value=v) for k, v in enumerate(values)])

    def real(self, field: str, *, above: float | None = None, at_least: float | None = None) -> bool:
        """A finite Python int or float, > above or >= at_least; the config then stores it as a float."""
        value = self.value(field)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return self.wrong_type(field, "a float")
        if not math.isfinite(value):
            return self.fail(field, f"{field} must be finite, got {value}")
        if above is not None and not value > above:
            return self.fail(field, f"{field} must be > {above:g}, got {value}")
        if at_least is not None and not value >= at_least:
            return self.fail(field, f"{field} must be >= {at_least:g}, got {value}")
        object.__setattr__(self.config, field, float(value))
        return True

    def flag(self, field: str) -> bool:
        return isinstance(self.value(field), bool) or self.wrong_type(field, "a bool")

    def choice(self, field: str, known: tuple[str, ...]) -> bool:
        value = self.value(field)
        if isinstance(value, str) and value in known:
            return True
        return self.fail(field, f"unknown {field} {value!r}; known: {known}", wrong_type=not isinstance(value, str))

    def require(self, field: str, ok: bool, message: str) -> bool:
        """A rule between fields, reported against `field`; the message names the fields and values involved."""
        return ok or self.fail(field, message)

    def raise_if_any(self) -> None:
        if self.problems:
            kind = ConfigTypeError if all(p.wrong_type for p in self.problems) else ConfigError
            raise kind(type(self.config).__name__, self.problems)
