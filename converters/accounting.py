"""Strict key accounting: the one check behind every converter edge, whole-model check, module load and CLI dry run.

A state (flat `{key: array}`) is compared with an expected table `{key: shape}` (None in a shape is a wildcard) and,
where the target has fixed dtypes (a module being loaded), `{key: dtype}`. Every missing key (with its expected shape),
unexpected key (with its shape), key of the wrong shape (both shapes), value that is not a numpy array, and key of
another dtype is listed, all together, in one ConversionError: a conversion never stops at the first bad key.

Shape-only checks run on placeholders: numpy arrays of an itemsize-0 dtype (`SHAPE_ONLY`), any shape, zero bytes, so
a 7B key/shape table goes through the same code as real weights without allocating them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Shape = tuple[int | None, ...]
"""An expected shape; None is a wildcard (a dimension the config does not fix)."""

SHAPE_ONLY = np.dtype([])
"""Itemsize-0 dtype of the placeholder arrays (any shape, zero bytes)."""


class ConversionError(ValueError):
    """A state does not have the keys / shapes / dtypes expected; the message lists every problem found."""


def fmt_shape(shape: object) -> str:
    """`(4, 16)`, `(16,)`, `(3, *, *)` for wildcards, `nothing` for None."""
    if shape is None:
        return "nothing"
    dims = tuple(shape)  # type: ignore[call-overload]
    return "(" + ", ".join("*" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _shape_ok(expected: Shape, got: tuple[int, ...]) -> bool:
    return len(expected) == len(got) and all(e is None or e == g for e, g in zip(expected, got, strict=True))


def _got(value: object) -> str:
    shape = getattr(value, "shape", None)
    return fmt_shape(shape) if shape is not None else f"a {type(value).__module__}.{type(value).__qualname__}"


def problems(
    state: Mapping[str, object],
    expected: Mapping[str, Shape],
    *,
    dtypes: Mapping[str, Any] | None = None,
    holder: str = "the target",
) -> list[str]:
    """Every way `state` differs from `expected` (and from `dtypes`, when given), one line per key.

    Args:
        state: flat {key: value}.
        expected: {key: shape}; None dims match any size.
        dtypes: {key: dtype} the values must have (a module's own dtypes: loading never casts).
        holder: who owns `dtypes`, for the message ("module").
    """
    found: list[str] = []
    for key, shape in expected.items():
        if key not in state:
            found.append(f"missing     {key}: expected {fmt_shape(shape)}, got nothing")
            continue
        value = state[key]
        if not isinstance(value, np.ndarray):
            found.append(f"not numpy   {key}: got {type(value).__module__}.{type(value).__qualname__}")
        elif not _shape_ok(shape, value.shape):
            found.append(f"wrong shape {key}: expected {fmt_shape(shape)}, got {fmt_shape(value.shape)}")
        elif dtypes is not None and value.dtype != np.dtype(dtypes[key]):
            found.append(
                f"wrong dtype {key}: {holder} has {np.dtype(dtypes[key])}, state has {value.dtype} (no silent cast)"
            )
    found += [f"unexpected  {key}: expected nothing, got {_got(state[key])}" for key in state if key not in expected]
    return found


def account(
    state: Mapping[str, object],
    expected: Mapping[str, Shape],
    *,
    what: str,
    dtypes: Mapping[str, Any] | None = None,
    holder: str = "the target",
    extra: Sequence[str] = (),
) -> None:
    """Raises one ConversionError listing every problem `problems` finds (after the caller's `extra` ones); returns if
    there is none.

    Raises:
        ConversionError: `{what}: N problem(s):` and one line per bad key.
    """
    found = [*extra, *problems(state, expected, dtypes=dtypes, holder=holder)]
    if found:
        raise ConversionError(f"{what}: {len(found)} problem(s):\n  " + "\n  ".join(found))


def split_prefixes(state: Mapping[str, Any], expected: Mapping[str, Shape]) -> dict[str, dict[str, Any]]:
    """Groups `state` by instance prefix: each key goes to its longest expected key that it ends with at a "." boundary.

    Keys matching no expected key are left out (the caller's accounting reports them as unexpected).

    Returns:
        {prefix: {expected key: value}}; with no key matched, one empty group under "" (so that every expected key is
        reported missing).
    """
    rels = sorted(expected, key=len, reverse=True)
    groups: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        rel = next((r for r in rels if key == r or key.endswith("." + r)), None)
        if rel is not None:
            groups.setdefault(key[: len(key) - len(rel)], {})[rel] = value
    return groups or {"": {}}


def placeholders(shapes: Mapping[str, Any], *, what: str) -> dict[str, np.ndarray]:
    """Zero-byte arrays of the given shapes (for shape-only checks and dry runs).

    Raises:
        ConversionError: entries that are not shapes (non-integer or negative dims), listed together.
    """
    state: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for key, shape in shapes.items():
        try:
            dims = tuple(int(d) for d in shape)
            if any(d < 0 for d in dims) or any(int(d) != d for d in shape):
                raise ValueError
        except (TypeError, ValueError):
            bad.append(f"not a shape {key}: {shape!r}")
            continue
        state[key] = np.empty(dims, dtype=SHAPE_ONLY)
    if bad:
        raise ConversionError(f"{what}: {len(bad)} problem(s):\n  " + "\n  ".join(bad))
    return state
