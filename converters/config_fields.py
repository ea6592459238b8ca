"""Field checks of LM config files (JSON): each value of the right type and range, named as the file names it.

A config file is read field by field into moshi_spec dataclasses. What a file gets wrong is reported in the file's own
words: `depformer_num_heads='2'` for a kyutai kwargs JSON, `depth_decoder_config.num_attention_heads` for an HF
config.json, `lm_config.temporal.dim` for a record of ours; never as a derived shape or a TypeError from deep inside.
The dataclasses check themselves too (moshi_spec raises a ValueError whose `problems` name its own fields); `building`
renames those fields into the file's.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {}
"""Field kind -> (what it must be, in words; predicate)."""


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x: Any) -> bool:
    return (_int(x) or isinstance(x, float)) and math.isfinite(x)


KINDS.update(
    {
        "int": ("a positive integer", lambda x: _int(x) and x >= 1),
        "int0": ("an integer >= 0", lambda x: _int(x) and x >= 0),
        "int?": ("a positive integer or null", lambda x: x is None or (_int(x) and x >= 1)),
        "num": ("a positive number", lambda x: _number(x) and x > 0),
        "num0": ("a number >= 0", lambda x: _number(x) and x >= 0),
        "num?": ("a number or null", lambda x: x is None or _number(x)),
        "str": ("a string", lambda x: isinstance(x, str)),
        "ints": ("a list of integers >= 0", lambda x: isinstance(x, list) and all(_int(v) and v >= 0 for v in x)),
    }
)


def field_problems(d: Mapping[str, Any], schema: Mapping[str, str], *, where: str = "") -> list[str]:
    """`{where}{key}={value!r} is not {what}` for every key of `d` that `schema` names and whose value is not of its
    kind (see KINDS); keys the schema does not name are not looked at."""
    return [
        f"{where}{key}={d[key]!r} is not {KINDS[kind][0]}"
        for key, kind in schema.items()
        if key in d and not KINDS[kind][1](d[key])
    ]


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a dataclass field of type `hint` (tuples come as lists)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is int:
        return _int(value)
    if hint is float:
        return _number(value)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, Mapping)
    return isinstance(value, hint)


def dataclass_problems(d: Mapping[str, Any], cls: type, *, where: str) -> list[str]:
    """Unknown and missing fields of a dict meant as `cls(**d)`, and values of the wrong JSON type, each named
    `{where}{field}`; a nested dataclass field is checked recursively."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems = [f"{where}{key}: unknown field (fields: {sorted(fields)})" for key in d if key not in fields]
    missing = dataclasses.MISSING
    required = [f.name for f in fields.values() if f.default is missing and f.default_factory is missing]
    problems += [f"{where}{name}: missing" for name in required if name not in d]
    for key, value in d.items():
        if key not in fields:
            continue
        hint = hints[key]
        if not _fits(value, hint):
            problems.append(f"{where}{key}={value!r} is not {getattr(hint, '__name__', hint)}")
        elif dataclasses.is_dataclass(hint):
            problems += dataclass_problems(value, hint, where=f"{where}{key}.")
    return problems


@contextmanager
def building(where: str, names: Mapping[str, str]) -> Iterator[None]:
    """Re-raises a ValueError / TypeError of the dataclass built inside as `{where}: ...`, its fields renamed to the
    file's keys by `names` (a field's dotted path, or its first part, -> the file's key) where the error lists its
    problems (moshi_spec's ConfigError `problems`, each with a `field` and a `message`)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        problems = getattr(err, "problems", None)
        if not problems:
            raise ValueError(f"{where}: {err}") from err
        lines = []
        for p in problems:
            key = names.get(p.field, names.get(p.field.split(".")[0].split("[")[0]))
            lines.append(f"{key} ({p.message})" if key else p.message)
        raise ValueError(f"{where}: " + "; ".join(lines)) from err


def differences(a: Mapping[str, Any], b: Mapping[str, Any], at: str = "", *, ignore: Collection[str] = ()) -> list[str]:
    """`{dotted key}={a's value!r} (it would read back as {b's!r})` for every leaf where two config dicts of one
    layout differ, but the keys in `ignore`: what writing `a` to an upstream's config and reading it back would
    lose."""
    found = []
    for key, value in a.items():
        if isinstance(value, Mapping):
            found += differences(value, b[key], f"{at}{key}.", ignore=ignore)
        elif value != b[key] and key not in ignore:
            found.append(f"{at}{key}={value!r} (it would read back as {b[key]!r})")
    return found
