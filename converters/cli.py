"""Convert a whole Moshi LM or Mimi checkpoint between kyutai, hf, ref and flax layouts.

    python -m converters --src kyutai --dst flax [--preset NAME | --config FILE] IN OUT

IN: a safetensors file or a directory of *.safetensors shards (src flax: an OUT directory of this tool, or an Orbax
checkpoint directory). FILE: kyutai LMModel kwargs JSON, an HF MoshiConfig config.json, kyutai's get_mimi config, an
HF MimiConfig config.json, or a moshi_parity_config.json; without either, IN's own moshi_parity_config.json or
config.json.

Before any weight is read: OUT may not be IN, lie inside it or contain it; IN's headers are checked against its file
sizes; its keys and shapes are checked in its own names (and the conversion dry-run on zero-byte placeholders); its
dtypes must be floating, float32 or bfloat16 unless --dtype casts them. While converting, a NaN or Inf weight is an
error, and so is a kyutai Mimi codebook never initialised (its `_initialized` flag 0). Keys of the other component
(a Mimi file with an LM config, or the reverse) are said to be that. Everything is written into `OUT.tmp-<pid>`,
which becomes OUT only once complete (on any failure it is removed and OUT is left as it was). OUT holds
`model.safetensors` (kyutai, hf, ref) or the Orbax checkpoint `params/` (flax), `moshi_parity_config.json` (the
component, its config as `lm_config` or `mimi_config`, the formats, the tool version) and the `config.json` that
upstream's loader reads: for an LM, kyutai's LMModel kwargs or HF's MoshiConfig; for a Mimi, get_mimi's config dict
or HF's MimiConfig (`transformers.MimiModel.from_pretrained(OUT)` loads an hf OUT). Exit status: 0 done, 1
input or conversion error, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters import registry
from converters.accounting import ConversionError
from converters.arrays import DTYPES
from converters.checkpoint import save_orbax, save_safetensors
from converters.engine import convert
from converters.inputs import (
    KINDS,
    check_dtypes,
    check_keys,
    check_record,
    check_values,
    kind_of,
    preset_config,
    read_index,
    resolve_config,
)
from converters.mimi_config import to_kyutai_mimi_config
from converters.mimi_hf_config import to_hf_mimi_config
from converters.outdir import (
    CONFIG_NAME,
    ORBAX_NAME,
    SAFETENSORS_NAME,
    TOOL,
    UPSTREAM_CONFIG_NAME,
    Staging,
    UsageError,
    check_paths,
)
from converters.registry import expected_shapes
from converters.upstream_config import upstream_config
from converters.values import cast, some


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("moshi-parity")
    except Exception:  # not installed as a distribution (e.g. run from a checkout)
        return "unknown"


def preset(name: str) -> str:
    """argparse type of --preset: a known preset of any component (else a usage error)."""
    try:
        preset_config(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return name


def parser() -> argparse.ArgumentParser:
    foreign = "; ".join(f"--src {f.name}: {', '.join(f.foreign)}" for f in registry.FORMATS.values() if f.foreign)
    p = argparse.ArgumentParser(
        prog="python -m converters", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    formats = tuple(registry.FORMATS)
    p.add_argument("--src", choices=formats, required=True, help="layout of IN")
    p.add_argument("--dst", choices=formats, required=True, help="layout of OUT")
    which = p.add_mutually_exclusive_group()
    presets = "; ".join(f"{kind.name}: {', '.join(kind.presets)}" for kind in KINDS.values())
    which.add_argument("--preset", type=preset, help=f"a config preset, which names the component ({presets})")
    which.add_argument(
        "--config",
        type=Path,
        help="kyutai LM kwargs JSON, HF config.json (MoshiConfig or MimiConfig), kyutai get_mimi config JSON or "
        "moshi_parity_config.json",
    )
    p.add_argument(
        "--dtype",
        choices=("keep", *DTYPES),
        default="keep",
        help="cast every weight to this dtype (default keep: IN must hold float32 or bfloat16 weights of one dtype)",
    )
    p.add_argument(
        "--ignore-prefix",
        action="append",
        metavar="PREFIX",
        help="drop IN keys starting with PREFIX, listed in the summary (repeatable; default for an LM: the source\n"
        f"format's foreign prefixes, {foreign}; for a Mimi: none; --ignore-prefix '' ignores nothing)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it exists (a file, an empty directory or an earlier OUT), once OUT.tmp is complete",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("input", metavar="IN", type=Path)
    p.add_argument("output", metavar="OUT", type=Path)
    return p


def bar(enabled: bool, total: int, desc: str, unit: str = "key") -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=unit == "B", disable=not enabled, file=sys.stderr, leave=False
    )


def write(state: dict[str, np.ndarray], fmt: str, directory: Path, progress: bool) -> list[str]:
    if registry.get_format(fmt).checkpoint == "orbax":
        nbytes = sum(value.nbytes for value in state.values())
        with bar(progress, nbytes, f"save {ORBAX_NAME}/ (Orbax, bytes on disk)", unit="B") as b:
            save_orbax(state, directory / ORBAX_NAME, progress=b.update)
            b.update(max(0, nbytes - b.n))  # Orbax compresses: the last bytes never reach the disk
        return [ORBAX_NAME]
    with bar(progress, len(state), f"write {SAFETENSORS_NAME}") as b:
        save_safetensors(state, directory / SAFETENSORS_NAME, metadata={"format": "pt"}, progress=b.update)
    return [SAFETENSORS_NAME]


def dtype_counts(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for dtype in items:
        counts[str(np.dtype(dtype))] = counts.get(str(np.dtype(dtype)), 0) + 1
    return dict(sorted(counts.items()))


def upstream_for(fmt: str, cfg: Any) -> dict[str, Any] | None:
    """The config.json an OUT of format `fmt` carries for its upstream loader: an LM's (converters/upstream_config.py)
    or, for a Mimi, kyutai's get_mimi config dict or HF's MimiConfig (converters/mimi_hf_config.py); None for a format
    of ours.

    Raises:
        ValueError: the upstream config cannot express cfg, naming each field it would lose.
    """
    if kind_of(cfg).component == "lm":
        return upstream_config(fmt, cfg)
    writers = {"kyutai": to_kyutai_mimi_config, "hf": to_hf_mimi_config}
    return writers[fmt](cfg) if fmt in writers else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Does the conversion described by parsed arguments; returns the record written to moshi_parity_config.json.

    Raises:
        UsageError: OUT is IN, lies inside it or contains it; no config given or found.
        FileExistsError: OUT exists (without --overwrite), or is a directory of other files.
        ConversionError, ValueError, OSError: anything wrong with IN, its config or the writing; OUT is untouched.
    """
    start = time.monotonic()
    inp, out, progress = args.input, args.output, not args.no_progress
    check_paths(inp, out)
    staging = Staging(out, overwrite=args.overwrite)
    check_record(inp, args.src)
    cfg, cfg_source = resolve_config(args.preset, args.config, inp)
    kind = kind_of(cfg)
    component = kind.component
    check_record(inp, args.src, component)
    try:
        upstream = upstream_for(args.dst, cfg)
    except ValueError as err:
        raise ValueError(f"--dst {args.dst} ({cfg_source}): {err}") from err
    index, loader = read_index(args.src, inp)
    if args.ignore_prefix is not None:
        prefixes = tuple(args.ignore_prefix)
    else:  # other models inside a format's LM checkpoints (HF's Mimi): nothing of the kind around a Mimi's
        prefixes = registry.get_format(args.src).foreign if component == "lm" else ()
    prefixes = tuple(p for p in prefixes if p)
    ignored = sorted(k for k in index if k.startswith(prefixes)) if prefixes else []
    kept = {k: v for k, v in index.items() if k not in set(ignored)}
    check_keys({k: shape for k, (shape, _) in kept.items()}, src=args.src, dst=args.dst, cfg=cfg, inp=inp)
    check_dtypes({k: dtype for k, (_, dtype) in kept.items()}, cast=args.dtype, inp=inp)

    with staging as tmp:
        state = loader(list(kept))
        if args.dtype != "keep":
            with bar(progress, len(state), f"cast to {args.dtype}") as b:
                state, original = cast(state, args.dtype, progress=b.update), state
        else:
            original = state
        with bar(progress, len(state), "check values") as b:
            check_values(state, original, inp=inp, progress=b.update)
        del original
        total = len(expected_shapes(args.src, component, cfg))
        with bar(progress, total, f"convert {args.src}->{args.dst}") as b:
            try:
                converted = convert(state, src=args.src, dst=args.dst, cfg=cfg, component=component, progress=b.update)
            except ValueError as err:  # a value no rule takes (a Mimi codebook never initialised), named by its key
                raise (ConversionError if isinstance(err, ConversionError) else ValueError)(f"{inp}: {err}") from err
        del state
        files = write(converted, args.dst, tmp, progress)
        if upstream is not None:
            (tmp / UPSTREAM_CONFIG_NAME).write_text(json.dumps(upstream, indent=1) + "\n")
            files.append(UPSTREAM_CONFIG_NAME)
        record = {
            "tool": TOOL,
            "version": tool_version(),
            "format": args.dst,
            "src_format": args.src,
            "source": str(inp.absolute()),
            "component": component,
            "config_source": cfg_source,
            kind.record_key: kind.to_dict(cfg),
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
    record["seconds"] = round(time.monotonic() - start, 3)
    return record


UPSTREAM_KINDS = {
    ("lm", "kyutai"): "kyutai LMModel kwargs",
    ("lm", "hf"): "HF MoshiConfig",
    ("mimi", "kyutai"): "kyutai get_mimi config",
}


def summary(record: dict[str, Any], out: Path) -> str:
    component = record.get("component", "lm")
    upstream = UPSTREAM_KINDS.get((component, record["format"]))
    files = [f + (f" ({upstream})" if f == UPSTREAM_CONFIG_NAME and upstream else "") for f in record["files"]]
    lines = [
        f"converted {record['src_format']} -> {record['format']}: {record['num_keys']} keys, "
        f"{record['num_params']:,} parameters, dtypes {record['dtypes_out']} (in: {record['dtypes_in']}, "
        f"--dtype {record['dtype']}) in {record['seconds']} s",
        f"config: {record['config_source']} ({KINDS[component].name})",
        f"wrote {out}: {', '.join(files)}, {CONFIG_NAME}",
    ]
    ignored = record["ignored_keys"]
    if record["ignore_prefixes"]:
        lines.append(
            f"ignored {len(ignored)} key(s) under {record['ignore_prefixes']}"
            + (f": {some(ignored)} (all listed in {CONFIG_NAME})" if ignored else "")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 done, 1 conversion or input error, 2 usage error)."""
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed the usage error (2) or the help (0)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        record = run(args)
    except UsageError as err:
        p.print_usage(sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ConversionError, ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary(record, args.output))
    return 0
