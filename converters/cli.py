"""Convert a whole Moshi LM checkpoint (Mimi excluded) between kyutai, hf, ref and flax layouts.

    python -m converters --src kyutai --dst flax (--preset NAME | --config FILE) IN OUT

IN: a safetensors file or a directory of *.safetensors shards (src flax: an OUT directory of this tool, or an Orbax
checkpoint directory). FILE: kyutai LMModel kwargs JSON, an HF MoshiConfig config.json, or a moshi_parity_config.json.

The key/shape table of IN is checked (and the conversion dry-run on zero-byte placeholders) before any weight is read;
then the weights are converted bit for bit and written into `OUT.tmp-<pid>`, which is renamed to OUT only once complete
(on any failure it is removed and OUT never appears). OUT holds `model.safetensors` (kyutai, hf, ref) or the Orbax
checkpoint `params/` (flax), plus `moshi_parity_config.json` (the LMConfig, the formats and the tool version).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters import registry
from converters.accounting import ConversionError
from converters.arrays import DTYPES
from converters.checkpoint import (
    CONFIG_NAME,
    ORBAX_NAME,
    SAFETENSORS_NAME,
    load_orbax,
    load_safetensors,
    orbax_shapes,
    read_safetensors_index,
    save_orbax,
    save_safetensors,
)
from converters.engine import convert, convert_shapes
from converters.lm_config import lm_config_from_json, lm_config_to_dict
from converters.registry import expected_shapes
from moshi_spec.config import LMConfig

COMPONENT = "lm"  # what the CLI converts: a whole LM checkpoint
SHOWN = 8  # ignored keys printed in the summary; all of them go into moshi_parity_config.json


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("moshi-parity")
    except Exception:  # not installed as a distribution (e.g. run from a checkout)
        return "unknown"


def parser() -> argparse.ArgumentParser:
    foreign = "; ".join(f"--src {f.name}: {', '.join(f.foreign)}" for f in registry.FORMATS.values() if f.foreign)
    p = argparse.ArgumentParser(
        prog="python -m converters", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    formats = tuple(registry.FORMATS)
    p.add_argument("--src", choices=formats, required=True, help="layout of IN")
    p.add_argument("--dst", choices=formats, required=True, help="layout of OUT")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", help="moshi_spec LMConfig preset (tiny, small, moshi_7b)")
    which.add_argument("--config", type=Path, help="kyutai LM kwargs JSON, HF config.json or moshi_parity_config.json")
    p.add_argument(
        "--dtype",
        choices=("keep", *DTYPES),
        default="keep",
        help="cast floating weights after converting (default keep)",
    )
    p.add_argument(
        "--ignore-prefix",
        action="append",
        metavar="PREFIX",
        help="drop IN keys starting with PREFIX, listed in the summary (repeatable; default: the source format's\n"
        f"foreign prefixes, {foreign}; --ignore-prefix '' ignores nothing)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once OUT.tmp is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("input", metavar="IN", type=Path)
    p.add_argument("output", metavar="OUT", type=Path)
    return p


def resolve_config(args: argparse.Namespace) -> tuple[LMConfig, str]:
    """The LMConfig and a description of where it came from (--preset, --config, or IN's moshi_parity_config.json)."""
    if args.preset:
        return LMConfig.preset(args.preset), f"preset {args.preset}"
    path = args.config
    if path is None:
        candidate = args.input / CONFIG_NAME if args.input.is_dir() else None
        if candidate is None or not candidate.is_file():
            raise ValueError(f"give --preset or --config (IN has no {CONFIG_NAME})")
        path = candidate
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if path.name == CONFIG_NAME and isinstance(raw, dict) and "lm_config" in raw:
        raw = raw["lm_config"]
    cfg, kind = lm_config_from_json(raw)
    return cfg, f"{kind} config {path}"


def read_index(src: str, path: Path) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype]], Any]:
    """({key: (shape, dtype)}, loader) of IN without reading weights; loader(keys) -> state."""
    if registry.get_format(src).checkpoint == "orbax" and path.is_dir() and not any(path.glob("*.safetensors")):
        orbax_dir = path / ORBAX_NAME if (path / ORBAX_NAME).is_dir() else path
        shapes = orbax_shapes(orbax_dir)
        return shapes, lambda keys: {k: v for k, v in load_orbax(orbax_dir).items() if k in keys}
    index, _ = read_safetensors_index(path)
    return {k: (info.shape, info.dtype) for k, info in index.items()}, lambda keys: load_safetensors(index, keys)


def bar(enabled: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="key", disable=not enabled, file=sys.stderr, leave=False)


def cast(state: dict[str, np.ndarray], dtype: str, progress: bool) -> dict[str, np.ndarray]:
    if dtype == "keep":
        return state
    target = DTYPES[dtype]
    with bar(progress, len(state), f"cast to {dtype}") as b:
        out = {}
        for key, value in state.items():
            floating = np.issubdtype(value.dtype, np.floating) or value.dtype == DTYPES["bfloat16"]
            out[key] = value.astype(target) if floating and value.dtype != target else value
            b.update(1)
    return out


def write(state: dict[str, np.ndarray], fmt: str, directory: Path, progress: bool) -> list[str]:
    if registry.get_format(fmt).checkpoint == "orbax":
        save_orbax(state, directory / ORBAX_NAME)
        return [ORBAX_NAME]
    with bar(progress, len(state), f"write {SAFETENSORS_NAME}") as b:
        save_safetensors(state, directory / SAFETENSORS_NAME, metadata={"format": "pt"}, progress=b.update)
    return [SAFETENSORS_NAME]


def dtype_counts(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for dtype in items:
        counts[str(np.dtype(dtype))] = counts.get(str(np.dtype(dtype)), 0) + 1
    return dict(sorted(counts.items()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Does the conversion described by parsed arguments; returns the record written to moshi_parity_config.json."""
    start = time.monotonic()
    out = args.output
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
    cfg, cfg_source = resolve_config(args)
    index, loader = read_index(args.src, args.input)
    prefixes = tuple(args.ignore_prefix) if args.ignore_prefix is not None else registry.get_format(args.src).foreign
    prefixes = tuple(p for p in prefixes if p)
    ignored = sorted(k for k in index if k.startswith(prefixes)) if prefixes else []
    kept = {k: v for k, v in index.items() if k not in set(ignored)}
    # Every key and shape checked, and the whole conversion dry-run on zero-byte placeholders, before reading weights.
    shapes = {k: shape for k, (shape, _) in kept.items()}
    convert_shapes(shapes, src=args.src, dst=args.dst, cfg=cfg, component=COMPONENT)

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    progress = not args.no_progress
    try:
        tmp.mkdir(parents=True)
        state = loader(list(kept))
        total = len(expected_shapes(args.src, COMPONENT, cfg))
        with bar(progress, total, f"convert {args.src}->{args.dst}") as b:
            converted = convert(state, src=args.src, dst=args.dst, cfg=cfg, component=COMPONENT, progress=b.update)
        del state
        converted = cast(converted, args.dtype, progress)
        files = write(converted, args.dst, tmp, progress)
        record = {
            "tool": "moshi-parity converters",
            "version": tool_version(),
            "format": args.dst,
            "src_format": args.src,
            "source": str(args.input.absolute()),
            "config_source": cfg_source,
            "lm_config": lm_config_to_dict(cfg),
            "dtype": args.dtype,
            "dtypes_in": dtype_counts(d for _, d in kept.values()),
            "dtypes_out": dtype_counts(v.dtype for v in converted.values()),
            "num_keys": len(converted),
            "num_params": int(sum(v.size for v in converted.values())),
            "ignore_prefixes": list(prefixes),
            "ignored_keys": ignored,
            "files": files,
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():  # --overwrite: move the old OUT aside only now that the new one is complete
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    record["seconds"] = round(time.monotonic() - start, 3)
    return record


def summary(record: dict[str, Any], out: Path) -> str:
    lines = [
        f"converted {record['src_format']} -> {record['format']}: {record['num_keys']} keys, "
        f"{record['num_params']:,} parameters, dtypes {record['dtypes_out']} (in: {record['dtypes_in']}, "
        f"--dtype {record['dtype']}) in {record['seconds']} s",
        f"config: {record['config_source']}",
        f"wrote {out}: {', '.join(record['files'])}, {CONFIG_NAME}",
    ]
    ignored = record["ignored_keys"]
    if record["ignore_prefixes"]:
        shown = ", ".join(ignored[:SHOWN]) + (f", ... ({len(ignored) - SHOWN} more)" if len(ignored) > SHOWN else "")
        lines.append(
            f"ignored {len(ignored)} key(s) under {record['ignore_prefixes']}"
            + (f": {shown} (all listed in {CONFIG_NAME})" if ignored else "")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 done, 1 conversion or input error, 2 usage error)."""
    args = parser().parse_args(argv)
    try:
        record = run(args)
    except (ConversionError, ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary(record, args.output))
    return 0
