"""Build a ready-to-call Flax LM from a checkpoint directory written by `python -m converters ... --dst flax`.

The directory holds `moshi_parity_config.json` (the LMConfig) and the Orbax checkpoint `params/`. The LM is built
abstractly (`nnx.eval_shape`, no random init of 7B weights), the checkpoint's key/shape/dtype table is checked against
it from Orbax metadata before any array is read, the values once read (no NaN or Inf), and the parameters are then
assigned with the converters' strict accounting (missing, unexpected, misshaped or wrongly typed keys all listed in one
ConversionError). The checks are the converter's own (converters/values.py), repeated here because the directory may
not have been written by it, or changed since.

The checkpoint format belongs to `converters`, so this module imports it lazily, inside the function: importing
`models_flax` still needs neither torch nor the converters.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from models_flax.lm import LM


def from_checkpoint(path: str | Path, *, dtype: object = None, precision: jax.lax.PrecisionLike = None) -> LM:
    """The LM stored at `path`, with its parameters loaded bit for bit.

    Args:
        path: an OUT directory of `python -m converters --dst flax`.
        dtype: compute and parameter dtype. None: the checkpoint's own, which must be one dtype, float32 or bfloat16.
            A dtype that differs from the stored one casts the weights, because it was asked for (floating weights
            only: an integer tensor is never cast).
        precision: matmul precision passed to the LM.

    Raises:
        FileNotFoundError: `path` is not a flax OUT; the message says what it holds and how to convert it.
        ValueError: the record is of another format or its LMConfig is malformed (naming the field).
        ConversionError: keys, shapes or dtypes that do not fit the LM of its config (with dtype=None, float16 /
            float64 weights or mixed dtypes), or weights holding NaN or Inf; all listed with their keys.
    """
    from converters import ConversionError, lm_config_from_dict, load_flax, validate_shapes
    from converters.checkpoint import load_orbax, orbax_shapes
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
    params = path / ORBAX_NAME
    if not params.is_dir():
        raise FileNotFoundError(f"from_checkpoint: {params} does not exist; {path} holds {describe(path)}")
    try:
        cfg = lm_config_from_dict(record.get("lm_config"))
    except ValueError as err:
        raise ValueError(f"from_checkpoint: {config_file}: lm_config: {err}") from err

    stored = orbax_shapes(params)
    validate_shapes({key: shape for key, (shape, _) in stored.items()}, fmt="flax", cfg=cfg, component="lm")
    target = None if dtype is None else jnp.dtype(dtype)
    problems = dtype_problems(
        {key: d for key, (_, d) in stored.items()}, cast=None if target is None else str(target), ask="dtype=jnp.{}"
    )
    if problems:
        raise ConversionError(f"from_checkpoint: {params}: " + "; ".join(problems))
    if target is None:
        (target,) = {d for _, d in stored.values()}

    model = nnx.eval_shape(lambda: LM(cfg, dtype=target, param_dtype=target, precision=precision, rngs=nnx.Rngs(0)))
    state = load_orbax(params)
    if any(value.dtype != target for value in state.values()):
        state = {key: value if value.dtype == target else value.astype(target) for key, value in state.items()}
    bad = nonfinite(state)
    if bad:
        lines = "\n  ".join(f"{key}: {what}" for key, what in bad.items())
        raise ConversionError(
            f"from_checkpoint: {params}: {len(bad)} weight(s) hold NaN or Inf (as {target}):\n  {lines}"
        )
    load_flax(model, state)
    flat = nnx.to_flat_state(nnx.state(model))
    abstract = [".".join(map(str, p)) for p, v in flat if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"from_checkpoint: state left without values after loading: {abstract}")
    return model
