"""What the CLI's IN is, checked before a weight is read, then its values while they are read.

- its config: `--preset`, `--config FILE` (kyutai LM kwargs, an HF config.json or a record of ours), IN's record, or
  the `config.json` of an IN directory; a file's mistakes are named by the file's own keys;
- its format: IN's record must agree with `--src`; keys that fit another format better are said to be that format,
  layer counts and a text embedding that contradict the config are said to;
- its index: keys, shapes and dtypes from the safetensors headers (checked against the file sizes) or Orbax metadata;
- its dtypes and values (converters/values.py): floating weights of one checkpoint dtype unless `--dtype` casts them,
  no NaN or Inf.
Every error names IN (or the config file) and the keys as IN spells them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from converters import registry
from converters.accounting import ConversionError
from converters.checkpoint import load_orbax, load_safetensors, orbax_shapes, read_safetensors_index
from converters.engine import convert_shapes
from converters.legacy import expected_in_own_names
from converters.lm_config import lm_config_from_dict, lm_config_from_json
from converters.outdir import CONFIG_NAME, ORBAX_NAME, UPSTREAM_CONFIG_NAME, UsageError, read_record
from converters.values import dtype_problems, nonfinite
from moshi_spec.config import LMConfig

COMPONENT = "lm"  # what the CLI converts: a whole LM checkpoint
Index = dict[str, tuple[tuple[int, ...], np.dtype]]
Loader = Callable[[Collection[str]], dict[str, np.ndarray]]


def read_config(path: Path) -> tuple[LMConfig, str]:
    """(LMConfig, "<kind> config <path>") of a config file of any kind `config_kind` knows (a record: its lm_config).

    Raises:
        ValueError: not JSON, no LM config, or a field the config refuses, prefixed with the file's path.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    try:
        if isinstance(raw, dict) and "lm_config" in raw:  # a record of ours
            return lm_config_from_dict(raw["lm_config"]), f"lm_config of {path}"
        cfg, kind = lm_config_from_json(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return cfg, f"{kind} config {path}"


def resolve_config(preset: str | None, config: Path | None, inp: Path) -> tuple[LMConfig, str]:
    """The LMConfig and where it came from: --preset, --config, IN's record, or an IN directory's config.json.

    Raises:
        UsageError: none of them.
        ValueError: the config file's problems, named by its keys.
    """
    if preset:
        return LMConfig.preset(preset), f"preset {preset}"
    if config is not None:
        return read_config(config)
    found = read_record(inp)
    if found is not None:
        return read_config(found[1])
    if inp.is_dir() and (inp / UPSTREAM_CONFIG_NAME).is_file():
        return read_config(inp / UPSTREAM_CONFIG_NAME)
    raise UsageError(f"give --preset or --config (IN has no {CONFIG_NAME} or {UPSTREAM_CONFIG_NAME})")


def check_record(inp: Path, src: str) -> None:
    """IN's record, when it has one, must name the format --src says.

    Raises:
        ConversionError: naming the record and the format it gives.
    """
    found = read_record(inp)
    if found is not None and found[0]["format"] != src:
        record, file = found
        raise ConversionError(
            f"{inp}: its record {file} says it holds a {record['format']} checkpoint, not {src}: "
            f"pass --src {record['format']}"
        )


def read_index(src: str, path: Path) -> tuple[Index, Loader]:
    """({key: (shape, dtype)}, loader) of IN from headers or metadata, without reading a weight; loader(keys) -> state.

    Raises:
        FileNotFoundError, ConversionError: IN missing, malformed, truncated, or not of the kind the format stores.
    """
    if registry.get_format(src).checkpoint == "orbax" and path.is_dir() and not any(path.glob("*.safetensors")):
        orbax_dir = path / ORBAX_NAME if (path / ORBAX_NAME).is_dir() else path

        def load(keys: Collection[str]) -> dict[str, np.ndarray]:
            wanted = frozenset(keys)
            return {k: v for k, v in load_orbax(orbax_dir).items() if k in wanted}

        return orbax_shapes(orbax_dir), load
    index, _ = read_safetensors_index(path)
    return {k: (info.shape, info.dtype) for k, info in index.items()}, lambda keys: load_safetensors(index, keys)


def _matches(keys: Collection[str], fmt: str, cfg: LMConfig) -> int:
    own, _, _ = expected_in_own_names(keys, fmt, COMPONENT, cfg)
    return sum(key in own for key in keys)


def format_hint(keys: Collection[str], src: str, cfg: LMConfig) -> str | None:
    """ "IN's keys look like a hf checkpoint ..." when another format's names (old ones included) fit more keys."""
    scores = {name: _matches(keys, name, cfg) for name, fmt in registry.FORMATS.items() if getattr(fmt, "lm", None)}
    best = max(scores, key=lambda name: scores[name])
    if best == src or scores[best] <= scores[src]:
        return None
    return (
        f"its keys look like a {best} checkpoint, not {src}: {scores[best]} of its {len(keys)} keys are {best} names, "
        f"{scores[src]} are {src} names (pass --src {best})"
    )


def config_hint(shapes: Mapping[str, tuple[int, ...]], src: str, cfg: LMConfig) -> str | None:
    """ "IN does not look like this config: ..." when IN's layer counts or text embedding contradict the config's."""
    spelling = registry.get_format(src).lm
    found = []
    for stack, prefix in spelling.stacks.items():
        heads = (key[len(prefix) :].split(".")[0] for key in shapes if key.startswith(prefix))
        layers = {int(head) for head in heads if head.isdigit()}
        want = getattr(cfg, stack).num_layers
        if layers and len(layers) != want:
            found.append(f"{len(layers)} {stack} layers under {prefix}* where the config has {want}")
    emb = spelling.top["text_emb"] + spelling.embedding
    want = (cfg.text_card + 1, cfg.temporal.dim)
    if emb in shapes and tuple(shapes[emb]) != want:
        found.append(f"{emb} is {tuple(shapes[emb])} where the config has {want} (text_card + 1, temporal dim)")
    return "IN does not look like this config: " + "; ".join(found) if found else None


def check_keys(shapes: Mapping[str, tuple[int, ...]], *, src: str, dst: str, cfg: LMConfig, inp: Path) -> None:
    """Every key and shape of IN, and the whole conversion dry-run on zero-byte placeholders.

    Raises:
        ConversionError: IN's key problems in its own names (and how IN contradicts the config, where it does); or,
            when its keys are another format's, just that.
    """
    try:
        convert_shapes(shapes, src=src, dst=dst, cfg=cfg, component=COMPONENT)
    except ConversionError as err:
        hint = format_hint(shapes, src, cfg)
        if hint is not None:
            raise ConversionError(f"{inp}: {hint}") from err
        hint = config_hint(shapes, src, cfg)
        raise ConversionError(f"{inp}: {err}" + (f"\n{hint}" if hint else "")) from err


def check_dtypes(dtypes: Mapping[str, Any], *, cast: str, inp: Path) -> None:
    """IN's dtypes (from its headers) against the rule of converters/values.py; cast is --dtype ("keep" or a name).

    Raises:
        ConversionError: every dtype at fault with its keys and the fix.
    """
    problems = dtype_problems(dtypes, cast=None if cast == "keep" else cast, ask="--dtype {}")
    if problems:
        raise ConversionError(f"{inp}: " + "; ".join(problems))


def check_values(
    state: Mapping[str, np.ndarray],
    original: Mapping[str, np.ndarray],
    *,
    inp: Path,
    progress: Callable[[int], object] | None = None,
) -> None:
    """No NaN or Inf in the weights about to be converted (`state`, after any --dtype cast of `original`).

    Raises:
        ConversionError: every such key, with counts and the first index; a value only the cast made infinite is
            said to be out of the new dtype's range.
    """
    bad = nonfinite(state, progress=progress)
    if not bad:
        return
    lines = []
    for key, what in bad.items():
        if original[key] is not state[key] and not nonfinite({key: original[key]}):
            what += f" after the cast to {state[key].dtype} (finite as {original[key].dtype}: out of its range)"
        lines.append(f"{key}: {what}")
    raise ConversionError(
        f"{inp}: {len(bad)} weight(s) hold NaN or Inf (every logit computed with them would be NaN):\n  "
        + "\n  ".join(lines)
    )
