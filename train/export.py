"""The final model of a finished run, `RUN_DIR/final/`, written atomically (`final.tmp-<pid>` first) by the
converters' own OUT writer (converters/cli.py, converters/outdir.py):

- "merged": the adapters folded into the weights (`merge_lora`), as a flax OUT of `python -m converters`: the Orbax
  `params/` and `moshi_parity_config.json` (format flax, component lm, the LM config; `source` the run directory,
  `trained` the step and settings), so `models_flax.from_checkpoint(RUN_DIR/final)` loads it and the converter CLI
  converts it on (`--src flax --dst kyutai`).
- "adapters": the adapters alone in kyutai's layout, `lora.safetensors` (`converters.lora.flax_to_kyutai`: keys
  `{module}.lora_A.weight` (r, in) and `{module}.lora_B.weight` (out, r)), with `config.json`, kyutai's LMModel kwargs
  plus `lora`, `lora_rank`, `lora_scaling`: what `moshi.models.loaders.get_moshi_lm(BASE_WEIGHTS,
  lm_kwargs=json.load(open("final/config.json")), lora_weights="final/lora.safetensors")` reads (kyutai's
  `get_lora_moshi`), as kyutai's recipe writes it.
- "both": both, in the one directory.

Weights are written in `train.param_dtype`, the dtype the trained model computes in (the fp32 master cast as the
step casts it); every value is checked finite first.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from moshi_spec import LMConfig
from moshi_spec.training import LoRAConfig

ADAPTERS_NAME = "lora.safetensors"
KYUTAI_CONFIG_NAME = "config.json"


class ExportError(ValueError):
    """A final model that cannot be written (non-finite weights, keys that do not fit the LM config)."""


def _counts(values: Any) -> dict[str, int]:
    from converters.cli import dtype_counts

    return dtype_counts(v.dtype for v in values)


def _finite(state: dict[str, np.ndarray], what: str) -> None:
    from converters.values import nonfinite

    bad = nonfinite(state)
    if bad:
        raise ExportError(
            f"{what}: {len(bad)} weight(s) hold NaN or Inf: " + "; ".join(f"{k}: {v}" for k, v in bad.items())
        )


def write_merged(directory: Path, state: dict[str, np.ndarray], cfg: LMConfig, *, source: str, trained: dict,
                 progress: bool) -> list[str]:  # fmt: skip
    """Writes a flax OUT (params/ + moshi_parity_config.json) of the flat flax `state` into `directory`."""
    from converters import validate_shapes
    from converters.cli import tool_version, write
    from converters.inputs import KINDS
    from converters.outdir import CONFIG_NAME, TOOL

    validate_shapes({k: v.shape for k, v in state.items()}, fmt="flax", cfg=cfg, component="lm")
    _finite(state, "the merged model")
    files = write(state, "flax", directory, progress)
    kind = KINDS["lm"]
    record = {
        "tool": TOOL,
        "version": tool_version(),
        "format": "flax",
        "src_format": "flax",
        "source": source,
        "component": "lm",
        "config_source": f"the run config of {source}",
        kind.record_key: kind.to_dict(cfg),
        "dtype": "keep",
        "dtypes_in": _counts(state.values()),
        "dtypes_out": _counts(state.values()),
        "num_keys": len(state),
        "num_params": int(sum(v.size for v in state.values())),
        "ignore_prefixes": [],
        "ignored_keys": [],
        "files": files,
        "trained": trained,
    }
    (directory / CONFIG_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return [*files, CONFIG_NAME]


def write_adapters(directory: Path, adapters: dict[str, np.ndarray], cfg: LMConfig, lora: LoRAConfig) -> list[str]:
    """Writes lora.safetensors (kyutai's layout) and config.json (kyutai's LMModel kwargs + the LoRA settings)."""
    from converters.checkpoint import save_safetensors
    from converters.lora import flax_to_kyutai
    from converters.upstream_config import upstream_config

    _finite(adapters, "the adapters")
    save_safetensors(flax_to_kyutai(adapters, cfg), directory / ADAPTERS_NAME, metadata={"format": "pt"})
    files = [ADAPTERS_NAME]
    try:
        kwargs = upstream_config("kyutai", cfg)
    except ValueError:  # a config kyutai cannot express: the adapters stand alone (the LM config is in the run dir)
        return files
    kwargs |= {"lora": True, "lora_rank": lora.rank, "lora_scaling": lora.scaling}
    (directory / KYUTAI_CONFIG_NAME).write_text(json.dumps(kwargs, indent=1) + "\n")
    return [*files, KYUTAI_CONFIG_NAME]


def write_final(
    out: Path,
    cfg: LMConfig,
    *,
    merged: dict[str, np.ndarray] | None,
    adapters: dict[str, np.ndarray] | None,
    lora: LoRAConfig | None,
    source: str,
    trained: dict,
    progress: bool = False,
) -> list[str]:
    """Writes `out` (replacing an earlier one) with the merged model and/or the adapters; returns the files written.

    Raises:
        ExportError: non-finite weights; ConversionError, LoRAConversionError: keys that do not fit `cfg`.
    """
    out = Path(out).absolute()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        files = []
        if merged is not None:
            files += write_merged(tmp, merged, cfg, source=source, trained=trained, progress=progress)
        if adapters is not None:
            files += write_adapters(tmp, adapters, cfg, lora)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return files
