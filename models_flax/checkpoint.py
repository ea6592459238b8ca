"""Build a ready-to-call Flax LM from a checkpoint directory written by `python -m converters ... --dst flax`.

The directory holds `moshi_parity_config.json` (the LMConfig) and the Orbax checkpoint `params/`. The LM is built
abstractly (`nnx.eval_shape`, no random init of 7B weights), the checkpoint's key/shape table is checked against it from
Orbax metadata before any array is read, and the parameters are then assigned with the converters' strict accounting
(missing, unexpected, misshaped or wrongly typed keys all listed in one ConversionError).

The checkpoint format belongs to `converters`, so this module imports it lazily, inside the function: importing
`models_flax` still needs neither torch nor the converters.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models_flax.lm import LM


def from_checkpoint(path: str | Path, *, dtype: object = None, precision: jax.lax.PrecisionLike = None) -> LM:
    """The LM stored at `path`, with its parameters loaded bit for bit.

    Args:
        path: an OUT directory of `python -m converters --dst flax`.
        dtype: compute and parameter dtype. None: the checkpoint's own (it must hold one dtype). A dtype that differs
            from the stored one casts the weights, because it was asked for.
        precision: matmul precision passed to the LM.

    Raises:
        FileNotFoundError: no config or no Orbax checkpoint at `path`.
        ValueError: the directory holds another format, or mixed dtypes with dtype=None.
        ConversionError: the checkpoint's keys or shapes do not match the LM of its config.
    """
    from converters import lm_config_from_dict, load_flax, validate_shapes
    from converters.checkpoint import CONFIG_NAME, ORBAX_NAME, load_orbax, orbax_shapes

    path = Path(path)
    config_file, params = path / CONFIG_NAME, path / ORBAX_NAME
    for needed in (config_file, params):
        if not needed.exists():
            raise FileNotFoundError(f"from_checkpoint: {needed} does not exist (not an OUT of `converters --dst flax`)")
    record = json.loads(config_file.read_text())
    if record.get("format") != "flax":
        raise ValueError(f"from_checkpoint: {config_file} describes a {record.get('format')!r} checkpoint, not flax")
    cfg = lm_config_from_dict(record["lm_config"])

    stored = orbax_shapes(params)
    validate_shapes({key: shape for key, (shape, _) in stored.items()}, fmt="flax", cfg=cfg, component="lm")
    dtypes = {np.dtype(d) for _, d in stored.values()}
    if dtype is None:
        if len(dtypes) != 1:
            raise ValueError(f"from_checkpoint: {params} mixes dtypes {sorted(map(str, dtypes))}; pass dtype=")
        dtype = dtypes.pop()
    dt = jnp.dtype(dtype)

    model = nnx.eval_shape(lambda: LM(cfg, dtype=dt, param_dtype=dt, precision=precision, rngs=nnx.Rngs(0)))
    state = load_orbax(params)
    load_flax(model, {key: value if value.dtype == dt else value.astype(dt) for key, value in state.items()})
    flat = nnx.to_flat_state(nnx.state(model))
    abstract = [".".join(map(str, p)) for p, v in flat if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(f"from_checkpoint: state left without values after loading: {abstract}")
    return model
