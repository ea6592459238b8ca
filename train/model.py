"""The model a run trains: its LM config (known before any weight is read, so the data can be checked first) and the
LM itself, a preset's random weights drawn from the run's seed or a converted flax checkpoint, with LoRA adapters for
mode "lora" (`models_flax.training.lora.add_lora`, initialised from the seed too)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from moshi_spec import LMConfig

if TYPE_CHECKING:
    from models_flax.lm import LM
    from train.config import RunConfig

LORA_STREAM = 1  # the adapters' key: fold_in(key(seed), 1); the preset's weights use nnx.Rngs(seed)


def lm_config(*, preset: str | None = None, checkpoint: str | Path | None = None) -> LMConfig:
    """The LM config of a preset, or of a flax checkpoint directory (read from its record, no weight read).

    Raises:
        ValueError: an unknown preset; a directory that is no flax LM checkpoint of `python -m converters`.
    """
    if (preset is None) == (checkpoint is None):
        raise ValueError("lm_config: give exactly one of preset, checkpoint")
    if preset is not None:
        return LMConfig.preset(preset)
    from converters.inputs import record_config
    from converters.outdir import CONFIG_NAME, describe, read_record

    path = Path(checkpoint)
    found = read_record(path) if path.is_dir() else None
    if found is None or found[0].get("format") != "flax" or found[0].get("component", "lm") != "lm":
        raise ValueError(
            f"model.checkpoint {path}: not a flax LM checkpoint of `python -m converters ... --dst flax` (its "
            f"{CONFIG_NAME} and params/); it holds {describe(path)}"
        )
    cfg, _ = record_config(*found)
    return cfg


def build(run: RunConfig, cfg: LMConfig, *, mesh: Any = None) -> LM:
    """The LM to train: computing in `train.param_dtype`, with fresh adapters for mode "lora". On `mesh` when given,
    each parameter goes straight to its shards (no device holds the whole model): a checkpoint's loaded there, a
    preset's random weights (for tests and benchmarks) drawn there (`sharding.init_on_mesh`: compiled, so they are a
    one-device run's eager draw up to an ulp where XLA fuses an initializer's scaling).

    Raises:
        As `models_flax.from_checkpoint` for a checkpoint that does not load.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from models_flax import sharding
    from models_flax.checkpoint import from_checkpoint
    from models_flax.lm import LM
    from models_flax.training.lora import add_lora

    dtype = jnp.dtype(run.train.param_dtype)
    if run.model.preset is not None:  # initialised in float32, then cast to param_dtype by the Trainer (the recipe)

        def draw() -> LM:  # the Rngs made inside: on a mesh the draw is traced
            return LM(cfg, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(run.seed))

        model = draw() if mesh is None else sharding.init_on_mesh(draw, mesh)
    else:
        model = from_checkpoint(run.model.checkpoint, dtype=dtype, mesh=mesh)
    if run.train.mode == "lora":
        key = jax.random.fold_in(jax.random.key(run.seed), LORA_STREAM)
        add_lora(model, run.train.lora, rngs=nnx.Rngs(params=key))
    return model
