"""Build a ready-to-call Flax model from a checkpoint directory written by `python -m converters ... --dst flax`.

The directory holds `moshi_parity_config.json` (the component, "lm" or "mimi", and its config) and the Orbax checkpoint
`params/`. `load_checkpoint` is the one loader: the model is built abstractly (`nnx.eval_shape`, no random init of 7B
weights), the checkpoint's key/shape/dtype table is checked against it from Orbax metadata before any array is read,
the values once read (no NaN or Inf), and the parameters are then assigned with the converters' strict accounting
(missing, unexpected, misshaped or wrongly typed keys all listed in one ConversionError). The checks are the
converter's own (converters/values.py), repeated here because the directory may not have been written by it, or
changed since. `from_checkpoint` (the LM) and `models_flax.mimi.from_checkpoint` (Mimi) say only what to build.

The checkpoint format belongs to `converters`, so this module imports it lazily, inside the functions: importing
`models_flax` still needs neither torch nor the converters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from models_flax import sharding
from models_flax.lm import LM

LOADERS = {"lm": "models_flax.from_checkpoint", "mimi": "models_flax.mimi.from_checkpoint"}
"""Component -> the function that loads its checkpoints (named in the error for a directory of another component)."""


def load_checkpoint(
    path: str | Path,
    *,
    component: str,
    build: Callable[[Any, Any], nnx.Module],
    dtype: object = None,
    place: Callable[[nnx.Module], Callable[[str, Any], jax.Array]] | None = None,
) -> Any:
    """The model of `component` stored at `path`, with its parameters loaded bit for bit.

    Args:
        path: an OUT directory of `python -m converters --dst flax` holding `component`.
        component: "lm" or "mimi", which the record must name.
        build: (config, dtype) -> the model, built inside `nnx.eval_shape` (so without allocating its weights).
        dtype: compute and parameter dtype. None: the checkpoint's own, which must be one dtype, float32 or bfloat16.
            A dtype that differs from the stored one casts the weights, because it was asked for (floating weights
            only: an integer tensor is never cast).
        place: (the abstract model) -> (key, host array) -> its jax array; None: jax's default device.

    Raises:
        FileNotFoundError: `path` is not a flax OUT; the message says what it holds and how to convert it.
        ValueError: the record is of another format or component (naming the loader of that one), or its config is
            malformed (naming the field).
        ConversionError: keys, shapes or dtypes that do not fit the model of its config (with dtype=None, float16 /
            float64 weights or mixed dtypes), or weights holding NaN or Inf; all listed with their keys.
    """
    from converters import ConversionError, load_flax, validate_shapes
    from converters.checkpoint import load_orbax, orbax_shapes
    from converters.inputs import KINDS, record_config
    from converters.outdir import CONFIG_NAME, ORBAX_NAME, describe, read_record
    from converters.values import dtype_problems, nonfinite

    path = Path(path)
    found = read_record(path) if path.is_dir() else None
    if found is None or found[0]["format"] != "flax":
        src = found[0]["format"] if found else "SRC"
        raise FileNotFoundError(
            f"from_checkpoint: {path} is not a flax checkpoint of `python -m converters --dst flax` (its "
            f"{CONFIG_NAME} with format flax and {ORBAX_NAME}/): it holds {describe(path)}; convert it with "
            f"`python -m converters --src {src} --dst flax {path} OUT`"
        )
    record, config_file = found
    held = record.get("component", "mimi" if "mimi_config" in record else "lm")
    if held != component:
        loader = LOADERS.get(held)
        raise ValueError(
            f"from_checkpoint: {path} holds a {KINDS[held].name if held in KINDS else repr(held)} checkpoint (its "
            f"{CONFIG_NAME} says component {held!r}), not a {KINDS[component].name}"
            + (f": load it with {loader}" if loader else "")
        )
    params = path / ORBAX_NAME
    if not params.is_dir():
        raise FileNotFoundError(f"from_checkpoint: {params} does not exist; {path} holds {describe(path)}")
    try:
        cfg, _ = record_config(record, config_file)
    except ValueError as err:
        raise ValueError(f"from_checkpoint: {err}") from err

    stored = orbax_shapes(params)
    validate_shapes({key: shape for key, (shape, _) in stored.items()}, fmt="flax", cfg=cfg, component=component)
    target = None if dtype is None else jnp.dtype(dtype)
    problems = dtype_problems(
        {key: d for key, (_, d) in stored.items()}, cast=None if target is None else str(target), ask="dtype=jnp.{}"
    )
    if problems:
        raise ConversionError(f"from_checkpoint: {params}: " + "; ".join(problems))
    if target is None:
        (target,) = {d for _, d in stored.values()}

    model = nnx.eval_shape(lambda: build(cfg, target))
    state = load_orbax(params)
    if any(value.dtype != target for value in state.values()):
        state = {key: value if value.dtype == target else value.astype(target) for key, value in state.items()}
    bad = nonfinite(state)
    if bad:
        lines = "\n  ".join(f"{key}: {what}" for key, what in bad.items())
        raise ConversionError(
            f"from_checkpoint: {params}: {len(bad)} weight(s) hold NaN or Inf (as {target}):\n  {lines}"
        )
    load_flax(model, state, place=None if place is None else place(model))
    flat = nnx.to_flat_state(nnx.state(model))
    abstract = [".".join(map(str, p)) for p, v in flat if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"from_checkpoint: state left without values after loading: {abstract}")
    return model


def from_checkpoint(
    path: str | Path, *, dtype: object = None, precision: jax.lax.PrecisionLike = None, mesh: Mesh | None = None
) -> LM:
    """The LM (models_flax.lm.LM) stored at `path`, with its parameters loaded bit for bit (`load_checkpoint`).

    Args:
        path: an OUT directory of `python -m converters --dst flax` holding an LM.
        dtype: compute and parameter dtype. None: the checkpoint's own, which must be one dtype, float32 or bfloat16.
            A dtype that differs from the stored one casts the weights, because it was asked for.
        precision: matmul precision passed to the LM.
        mesh: a ('dp', 'fsdp') mesh (models_flax.sharding.make_mesh): each parameter goes from the host straight to
            its shards by the rules of models_flax/sharding.py, so no device ever holds the whole model (7B in bf16 is
            15.4 GB: a 16 GB chip could not take it whole). None: jax's default device.

    Raises:
        As `load_checkpoint` (a Mimi directory: a ValueError naming models_flax.mimi.from_checkpoint); on a mesh, as
        `sharding.param_specs` (a dimension the mesh does not divide, naming the parameter).
    """

    def build(cfg: Any, dt: Any) -> LM:
        return LM(cfg, dtype=dt, param_dtype=dt, precision=precision, rngs=nnx.Rngs(0))

    place = None if mesh is None else functools.partial(sharding.placer, mesh=mesh)
    return load_checkpoint(path, component="lm", build=build, dtype=dtype, place=place)
