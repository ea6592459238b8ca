"""The CLI's OUT, a converted checkpoint directory: its file names, its record, how it is written (atomically, never
over its own input) and how any path is described to a user who passed the wrong one.

OUT holds the weights (`model.safetensors` for a torch-layout format, the Orbax checkpoint `params/` for flax), the
record `moshi_parity_config.json` (format, component, its config as `lm_config` or `mimi_config`, source, tool version,
files) and, where upstream has one, the upstream loader's own `config.json`. The writer (converters/cli.py) and the
readers (the CLI reading an earlier OUT, `models_flax.checkpoint`) take these names from here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

CONFIG_NAME = "moshi_parity_config.json"
"""In a converted checkpoint directory: the record (format, component "lm" or "mimi", its config as `lm_config` or
`mimi_config`, source, tool version, files)."""
SAFETENSORS_NAME = "model.safetensors"
"""In a converted checkpoint directory: the weights of a torch-layout format."""
ORBAX_NAME = "params"
"""In a converted checkpoint directory: the Orbax checkpoint of an orbax-stored format (flax)."""
UPSTREAM_CONFIG_NAME = "config.json"
"""In a kyutai or hf OUT: the config that upstream's loader reads (kyutai LMModel kwargs, HF MoshiConfig; for a kyutai
Mimi, get_mimi's config dict)."""
TOOL = "moshi-parity converters"
SHOWN = 5  # directory entries named when describing a directory


class UsageError(ValueError):
    """Arguments that can never work, whatever the files hold (the CLI's exit status 2)."""


def read_record(path: str | Path) -> tuple[dict[str, Any], Path] | None:
    """(record, its file) of a converted checkpoint: `path/moshi_parity_config.json`; else, for a file or directory
    inside an OUT (its `model.safetensors`, its `params/`), the record next to it when that record lists it; None
    when there is none.

    Raises:
        ValueError: the record is not a JSON object with a "format" string (naming the file).
    """
    path = Path(path)
    listed = path.is_dir() and (path / CONFIG_NAME).is_file()
    file = path / CONFIG_NAME if listed else path.parent / CONFIG_NAME
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("format"), str):
        raise ValueError(f'{file}: not a record of {TOOL} (no "format")')
    if not listed and path.name not in record.get("files", ()):
        return None
    return record, file


def _entries(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return ", ".join(names[:SHOWN]) + (f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else "")


def describe(path: str | Path) -> str:
    """What `path` holds, in a few words: a converted checkpoint of some format, safetensors files, an Orbax
    checkpoint, an upstream config.json, other entries, an empty directory, or nothing."""
    from converters.inputs import config_file_kind

    path = Path(path)
    if not path.exists():
        return "nothing (no such file or directory)"
    if path.is_file():
        from converters.checkpoint import read_safetensors_index

        try:
            return f"a safetensors file of {len(read_safetensors_index(path)[0])} tensors"
        except ValueError:  # ConversionError: not one
            return f"a file of {path.stat().st_size} bytes, not safetensors"
    try:
        found = read_record(path)
    except ValueError as err:
        return f"an unreadable record: {err}"
    if found is not None:
        record, _ = found
        component = {"lm": "", "mimi": " Mimi"}.get(record.get("component", "lm"), "")
        return f"a {record['format']}{component} checkpoint written by {TOOL} ({_entries(path)})"
    if not any(path.iterdir()):
        return "an empty directory"
    what = []
    if shards := sorted(path.glob("*.safetensors")):
        what.append(f"{len(shards)} safetensors file(s)")
    if (path / "_CHECKPOINT_METADATA").exists() or (path / "manifest.ocdbt").exists():
        what.append("an Orbax checkpoint")
    upstream = path / UPSTREAM_CONFIG_NAME
    if upstream.is_file():
        try:
            what.append(f"a {config_file_kind(json.loads(upstream.read_text()))} {UPSTREAM_CONFIG_NAME}")
        except (ValueError, UnicodeDecodeError):
            what.append(f"a {UPSTREAM_CONFIG_NAME} that is no LM or Mimi config")
    return ", ".join([*what, f"no {CONFIG_NAME} (entries: {_entries(path)})"])


def check_paths(inp: Path, out: Path) -> None:
    """Refuses an OUT that is IN, lies inside IN, or contains IN (symlinks and hard links followed).

    Raises:
        UsageError: naming both paths and what would happen.
    """
    i, o = Path(os.path.realpath(inp)), Path(os.path.realpath(out))
    if i == o or (inp.exists() and out.exists() and os.path.samefile(inp, out)):
        raise UsageError(f"IN and OUT are the same path ({inp}): the conversion would replace its own input")
    if o in i.parents:
        raise UsageError(f"IN ({inp}) lies inside OUT ({out}): replacing OUT would delete IN")
    if i in o.parents:
        raise UsageError(f"OUT ({out}) lies inside IN ({inp}): the output would be written into the input")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


class Staging:
    """Writes OUT atomically: `with Staging(out, overwrite=...) as tmp:` fills `OUT.tmp-<pid>`, which becomes OUT only
    when the block ends without an exception. An earlier OUT (a file, a link or a directory) is moved aside to
    `OUT.old-<pid>` first, put back if the rename fails, and removed once the new OUT is in place. On any failure the
    temp directory and the parent directories this created are removed: nothing is left half-written.

    Raises (at construction, before any work):
        FileExistsError: OUT exists and overwrite is off, or OUT is a non-empty directory this tool did not write
            (no record): --overwrite never deletes a directory of other files.
    """

    def __init__(self, out: str | Path, *, overwrite: bool):
        self.out = Path(os.path.abspath(out))
        if not self.out.name:
            raise UsageError(f"OUT {out} has no name")
        if os.path.lexists(self.out):
            if not overwrite:
                raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
            real = self.out.is_dir() and not self.out.is_symlink()
            if real and any(self.out.iterdir()) and not (self.out / CONFIG_NAME).is_file():
                raise FileExistsError(
                    f"{out} is a directory this tool did not write (no {CONFIG_NAME}; entries: {_entries(self.out)}): "
                    "--overwrite replaces a file, an empty directory or an earlier OUT only; remove it yourself or "
                    "choose another OUT"
                )
        self.tmp = self.out.with_name(f"{self.out.name}.tmp-{os.getpid()}")
        self.old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
        self.created: list[Path] = []

    def __enter__(self) -> Path:
        self.created = [p for p in self.out.parents if not p.exists()]  # deepest first
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        done = False
        try:
            if kind is None:
                self._commit()
                done = True
        finally:
            _remove(self.tmp)
            if not done:
                for parent in self.created:
                    try:
                        parent.rmdir()
                    except OSError:  # not empty (someone else wrote there meanwhile)
                        break

    def _commit(self) -> None:
        if not os.path.lexists(self.out):
            os.replace(self.tmp, self.out)
            return
        os.replace(self.out, self.old)
        try:
            os.replace(self.tmp, self.out)
        except BaseException:
            os.replace(self.old, self.out)
            raise
        _remove(self.old)
