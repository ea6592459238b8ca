"""Input validation shared by the Flax layers.

Shape and dtype checks are static. Value checks (id and index ranges, negative positions) raise a ValueError when the
values are concrete. When ids or indices are traced (inside the caller's `jax.jit`, `vmap` or `scan`):
- under `checked_jit` (or `traced_checks()` inside one's own `checkify.checkify`), they are checked where they enter
  (`LM.check_codes`, `FlexibleLinear`'s layer_idx) by a `checkify.check` with the eager message, raised after the call;
- under a plain jit no check is emitted: a checkify check gives the program an effect, and a jitted function with an
  effect leaves JAX's C++ dispatch path (measured on CPU: 7 -> 106 us per call for one check on 4 ints, 0.45 -> 1.3 ms
  per call of the tiny LM). Nothing is clamped either: an out-of-range id or index makes the outputs it feeds NaN
  (`Embedding`, `FlexibleLinear`), so no wrong number looks like a right one.
Traced positions are not checked: the LM and the Streamer make them, >= 0 by construction.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import checkify

from moshi_spec import ZERO_TOKEN

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
OUT_OF_RANGE = -2
"""What `check_ids` turns an invalid traced id into: neither an id nor the zero token, so it embeds to NaN."""


def check_dtype(name: str, dtype: object) -> jnp.dtype:
    dt = jnp.dtype(dtype)
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: unsupported dtype {dt}; supported: {[str(d) for d in SUPPORTED_DTYPES]}")
    return dt


def check_input(name: str, x: jax.Array, *, rank: int, last: int, dtype: jnp.dtype) -> None:
    """x must have the given rank, last-axis width and exactly the layer's compute dtype (no silent casts)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    if x.ndim != rank:
        raise ValueError(f"{name}: expected a rank-{rank} input (..., {last}), got shape {tuple(x.shape)}")
    if x.shape[-1] != last:
        raise ValueError(f"{name}: expected last axis {last}, got shape {tuple(x.shape)}")
    if jnp.dtype(x.dtype) != dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from the layer's dtype {dtype}; cast explicitly")


def concrete(x: object) -> np.ndarray | None:
    """The value of x if it is known now (not a tracer), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


_TRACED_CHECKS = contextvars.ContextVar("models_flax_traced_checks", default=False)


@contextlib.contextmanager
def traced_checks() -> Iterator[None]:
    """While tracing inside this context, value checks on traced arrays are `checkify.check`s: use it inside a
    function given to `checkify.checkify` (as `checked_jit` does). A checked function must be traced inside it: a
    function jitted on its own and traced first outside keeps its check-free trace."""
    token = _TRACED_CHECKS.set(True)
    try:
        yield
    finally:
        _TRACED_CHECKS.reset(token)


def checking_traced() -> bool:
    """Whether a traced value check is emitted now (see `traced_checks`)."""
    return _TRACED_CHECKS.get()


def require(ok: jax.Array | np.ndarray, message: str, **values: object) -> None:
    """Fails unless every element of the bool array `ok` is True: a ValueError of `message.format(**values)` when
    `ok` is concrete; when traced, a `checkify.check` with the same message inside `traced_checks()`, else nothing."""
    if isinstance(ok, jax.core.Tracer):
        if checking_traced():
            checkify.check(jnp.all(ok), message, **values)
    elif not np.all(ok):
        raise ValueError(message.format(**values))


def check_int_array(where: str, name: str, x: object, layout: str) -> None:
    """x must be a jax or numpy array of integers (a list, a scalar, a float or bool array is a TypeError)."""
    if not isinstance(x, jax.Array | np.ndarray):
        raise TypeError(f"{where}: {name} must be a jax or numpy integer array {layout}, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{where}: {name} must be integers, got {x.dtype} of shape {tuple(x.shape)}")


def check_ids(
    where: str,
    name: str,
    ids: jax.Array | np.ndarray,
    *,
    vocab: int,
    offset: tuple[int, ...] = (),
    traced_check: bool = True,
) -> jax.Array | np.ndarray:
    """Token ids (any shape, any integer dtype) must be in [0, vocab) or ZERO_TOKEN. Returns them as int32.

    Concrete ids: a ValueError naming the first bad one (its index, shifted by `offset`), its value, the valid range
    and the number of bad ids; then numpy int32 (int64, numpy's default, is cast only once its range is checked).
    Traced ids: every invalid id becomes OUT_OF_RANGE (never clamped); inside `traced_checks()` the same check is a
    checkify check, unless `traced_check` is False (a layer whose caller checked them: one check per entry point, not
    one per embedding table, which would double the checked program's compile time).
    """
    value = concrete(ids)
    xp = np if value is not None else jnp
    x = value if value is not None else ids
    if x.dtype.itemsize < 4:  # int8/16, uint8/16: widened, so that comparing with vocab cannot overflow
        x = x.astype(xp.int32)
    ok = x < vocab
    if not xp.issubdtype(x.dtype, xp.unsignedinteger):
        ok = ok & ((x >= 0) | (x == ZERO_TOKEN))
    if x.size == 0 or (value is not None and ok.all()):  # the host fast path (Streamer.step's): no message to build
        return x.astype(xp.int32)
    if value is None and not (traced_check and checking_traced()):
        return jnp.where(ok, x.astype(jnp.int32), OUT_OF_RANGE)
    first = xp.argmin(ok.reshape(-1))  # the first False
    index = xp.unravel_index(first, ok.shape)
    shift = offset or (0,) * ok.ndim
    places = ", ".join(f"{{i{axis}}}" for axis in range(ok.ndim))
    require(
        ok,
        f"{where}: {name} must be in [0, {vocab}) or {ZERO_TOKEN} (the zero token); got {{value}} at index "
        f"({places}) ({{count}} out of range)",
        value=x.reshape(-1)[first],
        count=(~ok).sum(),
        **{f"i{axis}": i + s for axis, (i, s) in enumerate(zip(index, shift, strict=True))},
    )
    return jnp.where(ok, x.astype(jnp.int32), OUT_OF_RANGE)


def check_positions(name: str, positions: jax.Array, batch: int, length: int) -> None:
    if not hasattr(positions, "dtype") or not jnp.issubdtype(positions.dtype, jnp.integer):
        raise TypeError(f"{name}: positions must be an integer array, got {getattr(positions, 'dtype', positions)}")
    if tuple(positions.shape) != (batch, length):
        raise ValueError(f"{name}: positions must have shape (B, T) = {(batch, length)}, got {tuple(positions.shape)}")
    value = concrete(positions)
    if value is not None and value.size and value.min() < 0:
        raise ValueError(f"{name}: positions must be >= 0, got min {int(value.min())}")


def checked_jit(fn: Callable, **jit_kwargs) -> Callable:
    """`nnx.jit(fn)` whose value checks raise: a bad id or index inside the compiled program raises the ValueError an
    eager call would, word for word, once the call is done (reading the error flag waits for the result).

    fn may take and return nnx modules, as under `nnx.jit`, but must not modify them. The checks are JAX's checkify
    (user checks only) traced inside `traced_checks()`, applied inside the jit: `checkify.checkify(nnx.jit(f))`
    cannot trace modules. Compiling takes a little longer than a plain jit's (tiny LM on CPU: 1.5 s against 1.1 s).
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with traced_checks():
            return fn(*args, **kwargs)

    run = nnx.jit(checkify.checkify(traced, errors=checkify.user_checks), **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        error, out = run(*args, **kwargs)
        failure = error.get_exception()
        if failure is None:
            return out
        fmt = getattr(failure, "fmt_string", None)  # a failed check: its message alone, as the eager call words it
        raise ValueError(str(failure) if fmt is None else fmt.format(*failure.args, **failure.kwargs)) from failure

    return call
