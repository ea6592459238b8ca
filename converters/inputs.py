"""What the CLI's IN is, checked before a weight is read, then its values while they are read.

- its component and config: a Moshi LM or a Mimi codec (`KINDS`), chosen by the config: `--preset` (LM presets
  tiny, small, moshi_7b; Mimi presets mimi, mimi_tiny), `--config FILE` (kyutai LM kwargs, an HF config.json, kyutai's
  get_mimi config dict or a record of ours), IN's record, or the `config.json` of an IN directory; a file's mistakes
  are named by the file's own keys;
- its format: IN's record must agree with `--src` (and hold the component the config is of); keys that fit the other
  component are said to be that component's, keys that fit another format better are said to be that format, layer
  counts and sizes that contradict the config are said to;
- its index: keys, shapes and dtypes from the safetensors headers (checked against the file sizes) or Orbax metadata;
- its dtypes and values (converters/values.py): floating weights of one checkpoint dtype unless `--dtype` casts them,
  no NaN or Inf.
Every error names IN (or the config file) and the keys as IN spells them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters import registry
from converters.accounting import ConversionError
from converters.checkpoint import load_orbax, load_safetensors, orbax_shapes, read_safetensors_index
from converters.engine import convert_shapes
from converters.legacy import expected_in_own_names, old_names
from converters.lm_config import config_kind, lm_config_from_dict, lm_config_from_json, lm_config_to_dict
from converters.mimi_config import mimi_config_from_dict, mimi_config_from_json, mimi_config_kind, mimi_config_to_dict
from converters.outdir import CONFIG_NAME, ORBAX_NAME, UPSTREAM_CONFIG_NAME, UsageError, read_record
from converters.values import dtype_problems, nonfinite
from moshi_spec.config import LMConfig
from moshi_spec.mimi import MimiConfig

Index = dict[str, tuple[tuple[int, ...], np.dtype]]
Loader = Callable[[Collection[str]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Kind:
    """What the CLI converts: one whole component of the engine, its config type, presets and record entry.

    Attributes:
        component: the engine's component kind ("lm", "mimi"): a checkpoint with exact keys.
        name: how messages call it.
        config_type: its config dataclass.
        record_key: the record's entry holding the config (`lm_config`, `mimi_config`).
        presets: CLI preset name -> the config.
        probe: the preset whose key names stand for every config's (numbers aside), to tell components apart.
        to_dict, from_dict: the config to and from JSON (the record's entry).
    """

    component: str
    name: str
    config_type: type
    record_key: str
    presets: Mapping[str, Callable[[], Any]]
    probe: str
    to_dict: Callable[[Any], dict[str, Any]]
    from_dict: Callable[[Any], Any]


LM_PRESETS = ("tiny", "small", "moshi_7b")
"""LMConfig presets, named as `LMConfig.preset` names them."""
MIMI_PRESETS = {"mimi": "mimi", "mimi_tiny": "tiny"}
"""CLI name -> `MimiConfig.preset` name: a Mimi preset's name starts with `mimi`, so that it names its component."""

KINDS: dict[str, Kind] = {
    "lm": Kind(
        component="lm",
        name="Moshi LM",
        config_type=LMConfig,
        record_key="lm_config",
        presets={name: functools.partial(LMConfig.preset, name) for name in LM_PRESETS},
        probe="tiny",
        to_dict=lm_config_to_dict,
        from_dict=lm_config_from_dict,
    ),
    "mimi": Kind(
        component="mimi",
        name="Mimi",
        config_type=MimiConfig,
        record_key="mimi_config",
        presets={name: functools.partial(MimiConfig.preset, own) for name, own in MIMI_PRESETS.items()},
        probe="mimi_tiny",
        to_dict=mimi_config_to_dict,
        from_dict=mimi_config_from_dict,
    ),
}
PRESETS: dict[str, Kind] = {name: kind for kind in KINDS.values() for name in kind.presets}


def kind_of(cfg: Any) -> Kind:
    """The Kind whose config `cfg` is."""
    for kind in KINDS.values():
        if isinstance(cfg, kind.config_type):
            return kind
    raise TypeError(f"no component has a config of type {type(cfg).__name__}")


def preset_config(name: str) -> Any:
    """The config of a CLI preset.

    Raises:
        ValueError: an unknown name, listing the known ones by component.
    """
    if name not in PRESETS:
        known = "; ".join(f"{kind.name}: {', '.join(kind.presets)}" for kind in KINDS.values())
        raise ValueError(f"unknown preset {name!r}; known: {known}")
    return PRESETS[name].presets[name]()


def record_config(record: Mapping[str, Any], file: Path) -> tuple[Any, str]:
    """(config, "<entry> of <file>") of a record of ours: its `mimi_config`, else its `lm_config` (records written
    before Mimi have only that).

    Raises:
        ValueError: a record naming a component it has no config for, or a config entry of the wrong fields,
            prefixed with the file and entry.
    """
    component = record.get("component", "mimi" if "mimi_config" in record else "lm")
    if component not in KINDS:
        raise ValueError(f"{file}: component={component!r} is none of {list(KINDS)}")
    kind = KINDS[component]
    try:
        return kind.from_dict(record.get(kind.record_key)), f"{kind.record_key} of {file}"
    except ValueError as err:
        raise ValueError(f"{file}: {kind.record_key}: {err}") from err


def config_from_json(raw: Any) -> tuple[Any, str]:
    """(config, kind) of a parsed config file: a Mimi one (converters/mimi_config.py) or an LM one (lm_config.py).

    Raises:
        ValueError: no kind matches (naming what each kind has), or the config's own problems.
    """
    if mimi_config_kind(raw) is not None:
        return mimi_config_from_json(raw)
    try:
        config_kind(raw)
    except ValueError as err:
        raise ValueError(
            f"{err}; nor is it a Mimi config: kyutai's get_mimi config has 'seanet' and 'quantizer', a moshi_parity "
            "MimiConfig dict 'seanet' and 'codebook_dim'"
        ) from err
    return lm_config_from_json(raw)


def config_file_kind(raw: Any) -> str:
    """What a parsed config file is, in a few words ("kyutai LM", "kyutai Mimi", "hf LM"), for describing a directory.

    Raises:
        ValueError: no config of a known kind.
    """
    mimi = mimi_config_kind(raw)
    if mimi is not None:
        return {"kyutai_mimi": "kyutai Mimi", "mimi_config": "moshi_parity Mimi", "hf_mimi": "hf Mimi"}[mimi]
    return f"{config_kind(raw)} LM"


def read_config(path: Path) -> tuple[Any, str]:
    """(config, "<kind> config <path>") of a config file of any kind `config_from_json` knows (a record: its config
    entry); an LMConfig or a MimiConfig, whose type says the component (`kind_of`).

    Raises:
        ValueError: not JSON, no config of a known kind, or a field the config refuses, prefixed with the file's path.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if isinstance(raw, dict) and any(kind.record_key in raw for kind in KINDS.values()):  # a record of ours
        return record_config(raw, Path(path))
    try:
        cfg, kind = config_from_json(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return cfg, f"{kind} config {path}"


def resolve_config(preset: str | None, config: Path | None, inp: Path) -> tuple[Any, str]:
    """The config (LMConfig or MimiConfig) and where it came from: --preset, --config, IN's record, or an IN
    directory's config.json.

    Raises:
        UsageError: none of them.
        ValueError: the config file's problems, named by its keys.
    """
    if preset:
        return preset_config(preset), f"preset {preset}"
    if config is not None:
        return read_config(config)
    found = read_record(inp)
    if found is not None:
        return read_config(found[1])
    if inp.is_dir() and (inp / UPSTREAM_CONFIG_NAME).is_file():
        return read_config(inp / UPSTREAM_CONFIG_NAME)
    raise UsageError(f"give --preset or --config (IN has no {CONFIG_NAME} or {UPSTREAM_CONFIG_NAME})")


def check_record(inp: Path, src: str, component: str | None = None) -> None:
    """IN's record, when it has one, must name the format --src says (and, given `component`, hold that component).

    Raises:
        ConversionError: naming the record and the format or component it gives.
    """
    found = read_record(inp)
    if found is None:
        return
    record, file = found
    if record["format"] != src:
        raise ConversionError(
            f"{inp}: its record {file} says it holds a {record['format']} checkpoint, not {src}: "
            f"pass --src {record['format']}"
        )
    held = record.get("component", "mimi" if "mimi_config" in record else "lm")
    if component is not None and held != component and held in KINDS:
        raise ConversionError(
            f"{inp}: its record {file} says it holds a {KINDS[held].name} checkpoint, not a {KINDS[component].name}: "
            f"pass a {KINDS[held].name} --preset ({', '.join(KINDS[held].presets)}) or none (the record's config)"
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


def _has(fmt: str, component: str, cfg: Any) -> bool:
    """Whether format `fmt` has the component (hf has no Mimi yet)."""
    try:
        registry.expected_shapes(fmt, component, cfg)
    except ValueError:
        return False
    return True


def _matches(keys: Collection[str], fmt: str, component: str, cfg: Any) -> int:
    own, _, _ = expected_in_own_names(keys, fmt, component, cfg)
    return sum(key in own for key in keys)


def format_hint(keys: Collection[str], src: str, cfg: Any) -> str | None:
    """ "IN's keys look like a hf checkpoint ..." when another format's names (old ones included) fit more keys."""
    component = kind_of(cfg).component
    scores = {name: _matches(keys, name, component, cfg) for name in registry.FORMATS if _has(name, component, cfg)}
    if src not in scores:
        return None
    best = max(scores, key=lambda name: scores[name])
    if best == src or scores[best] <= scores[src]:
        return None
    return (
        f"its keys look like a {best} checkpoint, not {src}: {scores[best]} of its {len(keys)} keys are {best} names, "
        f"{scores[src]} are {src} names (pass --src {best})"
    )


def _pattern(key: str) -> str:
    """A key with its numeric path entries (layer, codebook, Sequential indices) as `#`."""
    return ".".join("#" if part.isdigit() else part for part in key.split("."))


@functools.cache
def _patterns(component: str, fmt: str) -> frozenset[str] | None:
    """The key patterns of a component in a format (old names included), the same for every config of it (numbers
    aside): those of its probe preset. None: the format lacks the component."""
    kind = KINDS[component]
    cfg = kind.presets[kind.probe]()
    if not _has(fmt, component, cfg):
        return None
    keys = list(registry.expected_shapes(fmt, component, cfg)) + [old for old, _, _ in old_names(fmt, component, cfg)]
    return frozenset(_pattern(key) for key in keys)


def component_hint(keys: Collection[str], src: str, component: str) -> str | None:
    """ "its keys look like a kyutai Mimi checkpoint, not a Moshi LM ..." when the names of another component (in any
    format) fit more of IN's keys than this component's do (in any format)."""
    patterns = {_pattern(key) for key in keys}
    scores: dict[tuple[str, str], int] = {}
    for other in KINDS:
        for fmt in registry.FORMATS:
            known = _patterns(other, fmt)
            if known is not None:
                scores[(other, fmt)] = sum(_pattern(key) in known for key in keys) if patterns & known else 0
    mine = max((n for (other, _), n in scores.items() if other == component), default=0)
    best = max(scores, key=lambda pair: scores[pair], default=None)
    if best is None or best[0] == component or scores[best] <= mine:
        return None
    other, fmt = KINDS[best[0]], best[1]
    this = KINDS[component]
    also = "" if fmt == src else f", and --src {fmt}"
    return (
        f"its keys look like a {fmt} {other.name} checkpoint, not a {this.name}: {scores[best]} of its {len(keys)} "
        f"keys are {fmt} {other.name} names, {mine} are {this.name} names (pass a {other.name} --preset "
        f"({', '.join(other.presets)}) or a {other.name} --config{also})"
    )


def config_hint(shapes: Mapping[str, tuple[int, ...]], src: str, cfg: Any) -> str | None:
    """ "IN does not look like this config: ..." when IN's layer counts or text embedding (an LM), or its counts of
    numbered modules (a Mimi: layers, codebooks, SEANet entries), contradict the config's."""
    if not isinstance(cfg, LMConfig):
        return _count_hint(shapes, registry.expected_shapes(src, kind_of(cfg).component, cfg))
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


def _numbered(keys: Collection[str]) -> dict[str, set[int]]:
    """{prefix before a key's first numeric entry: the numbers found there}."""
    found: dict[str, set[int]] = {}
    for key in keys:
        parts = key.split(".")
        at = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if at is not None:
            found.setdefault(".".join(parts[:at]) + ".", set()).add(int(parts[at]))
    return found


def _count_hint(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, Any]) -> str | None:
    have, want = _numbered(shapes), _numbered(expected)
    found = [
        f"{len(have[prefix])} numbered entries under {prefix}* where the config has {len(numbers)}"
        for prefix, numbers in want.items()
        if prefix in have and len(have[prefix]) != len(numbers)
    ]
    return "IN does not look like this config: " + "; ".join(found) if found else None


def check_keys(shapes: Mapping[str, tuple[int, ...]], *, src: str, dst: str, cfg: Any, inp: Path) -> None:
    """Every key and shape of IN, and the whole conversion dry-run on zero-byte placeholders.

    Raises:
        ConversionError: IN's key problems in its own names (and how IN contradicts the config, where it does); or,
            when its keys are the other component's or another format's, just that.
        ValueError: a format without the component (hf has no Mimi), unless IN's keys are the other component's.
    """
    component = kind_of(cfg).component
    try:
        convert_shapes(shapes, src=src, dst=dst, cfg=cfg, component=component)
    except ValueError as err:
        hint = component_hint(shapes, src, component)
        if hint is None and isinstance(err, ConversionError):
            hint = format_hint(shapes, src, cfg)
        if hint is not None:
            raise ConversionError(f"{inp}: {hint}") from err
        if not isinstance(err, ConversionError):
            raise
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
