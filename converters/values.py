"""What a converted weight may hold: a floating dtype; one of the checkpoint dtypes (float32, bfloat16) unless a cast to
one is asked for explicitly; finite values.

The CLI checks dtypes from IN's headers before reading a weight, and values while converting; `from_checkpoint`
(models_flax/checkpoint.py) checks both again for a checkpoint this tool may not have written. Every problem names the
keys as the file spells them, all of them in one message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from converters.arrays import DTYPES

State = dict[str, np.ndarray]
SHOWN = 8  # keys named per problem; the count says how many more
CHUNK = 2**22  # elements scanned at a time: a 7B embedding is checked without a full-size temporary


def is_floating(dtype: Any) -> bool:
    """numpy floats and ml_dtypes' bfloat16 (which numpy does not count as np.floating)."""
    dtype = np.dtype(dtype)
    return bool(np.issubdtype(dtype, np.floating)) or dtype == DTYPES["bfloat16"]


def some(keys: list[str]) -> str:
    """The first SHOWN keys, then how many more."""
    return ", ".join(keys[:SHOWN]) + (f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def dtype_problems(dtypes: Mapping[str, Any], *, cast: str | None, ask: str) -> list[str]:
    """How the stored dtypes break the rule, one line per dtype at fault.

    Args:
        dtypes: {key as the file spells it: dtype as stored}.
        cast: the DTYPES name every weight will be cast to, or None to keep the stored dtypes.
        ask: how the caller asks for a cast, with `{}` for the dtype name ("--dtype {}", "dtype=jnp.{}").

    Returns:
        Integer or bool tensors (never cast, whatever is asked); with cast None also float widths other than
        DTYPES' (float16, float64) and a mix of dtypes, each with the cast that would fix it.
    """
    by_dtype: dict[np.dtype, list[str]] = {}
    for key, dtype in dtypes.items():
        by_dtype.setdefault(np.dtype(dtype), []).append(key)

    def which(keys: list[str]) -> str:
        if len(keys) == len(dtypes):
            return f"all {len(keys)} weights are"
        return f"1 weight ({keys[0]}) is" if len(keys) == 1 else f"{len(keys)} weights ({some(keys)}) are"

    problems = [
        f"{which(keys)} {dtype}, where a Moshi LM has only floating-point weights (nothing is cast from {dtype})"
        for dtype, keys in by_dtype.items()
        if not is_floating(dtype)
    ]
    floats = {dtype: keys for dtype, keys in by_dtype.items() if is_floating(dtype)}
    if cast is not None or not floats:
        return problems
    fix = " or ".join(ask.format(name) for name in DTYPES)
    odd = {dtype: keys for dtype, keys in floats.items() if dtype not in DTYPES.values()}
    for dtype, keys in odd.items():
        problems.append(
            f"{which(keys)} {dtype}; converted checkpoints hold {' or '.join(DTYPES)}: pass {fix} to cast explicitly"
        )
    if not odd and len(floats) > 1:
        mix = ", ".join(f"{dtype} ({len(keys)}: {some(keys)})" for dtype, keys in floats.items())
        problems.append(f"mixed dtypes {mix}; pass {fix} to cast every weight to one")
    return problems


def nonfinite(state: Mapping[str, np.ndarray], *, progress: Callable[[int], object] | None = None) -> dict[str, str]:
    """{key: "3 NaN, 1 Inf of 6144 values, the first at (0, 5)"} for every array holding NaN or Inf.

    Args:
        progress: called with 1 after each key.
    """
    found: dict[str, str] = {}
    for key, value in state.items():
        flat = value.reshape(-1)
        nan = inf = 0
        first = None
        for start in range(0, flat.size, CHUNK):
            chunk = flat[start : start + CHUNK]
            bad = ~np.isfinite(chunk)
            if bad.any():
                count = int(np.isnan(chunk).sum())
                nan, inf = nan + count, inf + int(bad.sum()) - count
                first = start + int(np.argmax(bad)) if first is None else first
        if first is not None:
            where = tuple(int(i) for i in np.unravel_index(first, value.shape))
            found[key] = f"{nan} NaN, {inf} Inf of {value.size} values, the first at {where}"
        if progress:
            progress(1)
    return found


def cast(state: Mapping[str, np.ndarray], dtype: str, *, progress: Callable[[int], object] | None = None) -> State:
    """Every array as DTYPES[dtype] (arrays already of that dtype are kept as they are; callers have checked that
    every array is floating, see dtype_problems).

    Args:
        progress: called with 1 after each key.
    """
    target = DTYPES[dtype]
    out = {}
    for key, value in state.items():
        with np.errstate(over="ignore"):  # a value out of the target's range becomes Inf, which `nonfinite` names
            out[key] = value if value.dtype == target else value.astype(target)
        if progress:
            progress(1)
    return out
