"""Checkpoint files: safetensors (a file or a directory of shards) and Orbax, read and written as flat numpy states.

safetensors is read from its header (shapes and dtypes without touching the data) and memory-mapped (arrays are
read-only views of the file, paged in when a converter touches them), and written tensor by tensor, so a 7B conversion
holds no second copy of the weights for serialization. Dtypes travel bit for bit (bfloat16 as ml_dtypes.bfloat16).

Orbax (Flax): a flat state `{"a.b.0.c": array}` is saved as the nested dict `{"a": {"b": {"0": {"c": array}}}}` with
`orbax.checkpoint.StandardCheckpointer`; orbax is imported only when an Orbax checkpoint is read or written. Its save
is one call, so its progress is the bytes that have reached the disk, polled while it runs.

The converted checkpoint directory (the CLI's OUT) that holds these files is described in converters/outdir.py.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from converters.accounting import ConversionError

State = dict[str, np.ndarray]
Progress = Callable[[int], object]

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
HEADER_LIMIT = 100 * 2**20  # safetensors' own bound on the JSON header


def safetensors_files(path: str | Path) -> list[Path]:
    """The file itself, or a directory's `*.safetensors` shards in name order.

    Raises:
        FileNotFoundError: no such path, or a directory without shards.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if files:
            return files
        raise FileNotFoundError(f"{path}: a directory with no *.safetensors files")
    raise FileNotFoundError(f"{path}: no such safetensors file or directory")


def _header(path: Path) -> tuple[dict[str, Any], int, int]:
    """(header dict, offset of the data section, file size) of one safetensors file."""
    size_on_disk = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > HEADER_LIMIT or 8 + size > size_on_disk:
            raise ConversionError(
                f"{path}: not a safetensors file, or truncated: its first 8 bytes announce a header of {size} bytes, "
                f"the file has {size_on_disk}"
            )
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConversionError(f"{path}: not a safetensors file (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header, 8 + size, size_on_disk


def _is_index(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class TensorInfo:
    """Where one tensor lives: file, dtype, shape and byte range (`start`, `end` relative to the data section,
    `offset` absolute).

    Raises:
        ConversionError: a header entry that is not `{"dtype", "shape", "data_offsets"}` with a known dtype,
            non-negative integer dims and offsets, and a byte range of exactly shape x itemsize bytes.
    """

    def __init__(self, file: Path, key: str, entry: object, base: int):
        where = f"{file}: header entry {key!r}"
        if not isinstance(entry, Mapping) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise ConversionError(f"{where} is not {{dtype, shape, data_offsets}}: {entry!r}"[:300])
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise ConversionError(f"{where} has dtype {entry['dtype']!r}; supported: {list(SAFETENSORS_DTYPES)}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
            raise ConversionError(f"{where} has shape {shape!r}, not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_index(x) for x in offsets):
            raise ConversionError(f"{where} has data_offsets {offsets!r}, not [start, end] in bytes")
        self.file, self.key = file, key
        self.dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        self.shape = tuple(shape)
        self.start, self.end = offsets
        self.offset, self.nbytes = base + self.start, self.end - self.start
        want = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if self.nbytes != want:
            raise ConversionError(
                f"{where}: data_offsets {offsets} span {self.nbytes} bytes, but {list(self.shape)} x "
                f"{entry['dtype']} needs {want}"
            )

    def load(self) -> np.ndarray:
        """A read-only memory-mapped view (an empty array for zero-size tensors)."""
        if self.nbytes == 0:
            return np.empty(self.shape, self.dtype)
        return np.memmap(self.file, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)


def _check_layout(file: Path, infos: list[TensorInfo], data_size: int) -> None:
    """The tensors' byte ranges tile the data section exactly, as every safetensors reader requires: no overlap, no
    gap, nothing past the end of the file (a truncated download), nothing after the last tensor.

    Raises:
        ConversionError: naming the file, its size, and the tensors concerned.
    """
    problems: list[str] = []
    ranges = sorted(infos, key=lambda i: (i.start, i.end))
    at, last = 0, None
    for info in ranges:
        if info.start < at:
            problems.append(f"{info.key} (bytes {info.start}-{info.end}) overlaps {last.key} (ends at {at})")
        elif info.start > at:
            problems.append(f"bytes {at}-{info.start} before {info.key} belong to no tensor")
        if info.end >= at:
            at, last = info.end, info
    past = [i.key for i in ranges if i.end > data_size]
    if past:
        problems.append(
            f"truncated: the header's tensors need {at} data bytes, the file holds {data_size} "
            f"({at - data_size} missing); {len(past)} tensor(s) lie past its end: {', '.join(past[:5])}"
            + (f", ... ({len(past) - 5} more)" if len(past) > 5 else "")
        )
    elif at < data_size:
        problems.append(f"{data_size - at} bytes after the last tensor belong to no tensor")
    if problems:
        raise ConversionError(
            f"{file} ({data_size} data bytes after its header) is not a valid safetensors file: " + "; ".join(problems)
        )


def read_safetensors_index(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """({key: TensorInfo}, metadata of the first file) from the headers of a file or a directory of shards.

    Every file's header is checked against the file's size before anything else is read.

    Raises:
        ConversionError: a malformed header or entry, an unsupported dtype, byte ranges that overlap, leave gaps or
            run past the end of the file (truncated), or a key present in two shards.
    """
    index: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for i, file in enumerate(safetensors_files(path)):
        header, base, size = _header(file)
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ConversionError(f"{file}: header __metadata__ is not a JSON object of strings: {meta!r}"[:300])
        if i == 0:
            metadata = dict(meta)
        infos = [TensorInfo(file, key, entry, base) for key, entry in header.items() if key != "__metadata__"]
        _check_layout(file, infos, size - base)
        for info in infos:
            if info.key in index:
                raise ConversionError(f"{info.key} is in two shards: {index[info.key].file} and {file}")
            index[info.key] = info
    return index, metadata


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a safetensors file or directory of shards, from the headers alone (for `validate_shapes`)."""
    return {key: info.shape for key, info in read_safetensors_index(path)[0].items()}


def load_safetensors(index: Mapping[str, TensorInfo], keys: Iterable[str] | None = None) -> State:
    """Memory-maps the tensors of `index` (all, or `keys`)."""
    return {key: index[key].load() for key in (index if keys is None else keys)}


def save_safetensors(
    state: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> None:
    """Writes `state` as one safetensors file, tensor by tensor (keys sorted), readable by every safetensors loader.

    Raises:
        TypeError: an array dtype safetensors cannot hold.
    """
    entries: dict[str, Any] = {}
    if metadata:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    keys = sorted(state)
    for key in keys:
        array = state[key]
        if array.dtype not in SAFETENSORS_NAMES:
            raise TypeError(f"save_safetensors: {key} has dtype {array.dtype}, which safetensors cannot hold")
        entries[key] = {
            "dtype": SAFETENSORS_NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for key in keys:
            array = np.ascontiguousarray(state[key])
            f.write(array.reshape(-1).view(np.uint8).data)
            if progress:
                progress(1)


# ----------------------------------------------------------------------------------------------------------------------
# Orbax


def nest(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """{"a.b.c": x} -> {"a": {"b": {"c": x}}}.

    Raises:
        ValueError: a key is both a leaf and a prefix of another key.
    """
    tree: dict[str, Any] = {}
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"nest: {key} lies under a leaf")
        if leaf in node:
            raise ValueError(f"nest: {key} is both a leaf and a prefix")
        node[leaf] = value
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of `nest`."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _bytes_under(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # renamed or removed by the writer meanwhile
                pass
    return total


def save_orbax(
    state: Mapping[str, np.ndarray], path: str | Path, *, progress: Progress | None = None, interval: float = 0.25
) -> None:
    """Saves the state as an Orbax checkpoint at `path` (which must not exist), waiting until it is committed.

    Args:
        progress: called with the number of bytes newly written under `path`'s parent directory (where Orbax also
            stages its temporary directory), every `interval` seconds while the save runs and once at its end. Orbax
            compresses, so the calls add up to less than the arrays' size.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    stop = threading.Event()
    seen = [_bytes_under(path.parent)]

    def poll() -> None:
        now = _bytes_under(path.parent)
        if progress is not None and now > seen[0]:
            progress(now - seen[0])
            seen[0] = now

    def watch() -> None:
        while not stop.wait(interval):
            poll()

    watcher = threading.Thread(target=watch, name="orbax-save-progress", daemon=True)
    watcher.start()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path, nest(state))
            checkpointer.wait_until_finished()
    finally:
        stop.set()
        watcher.join()
    poll()


def orbax_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of an Orbax checkpoint from its metadata, reading no array."""
    import orbax.checkpoint as ocp

    from converters.outdir import describe

    path = Path(path)
    if not (path / "_CHECKPOINT_METADATA").is_file():
        raise ConversionError(f"{path}: not an Orbax checkpoint (no _CHECKPOINT_METADATA); it holds {describe(path)}")
    with ocp.StandardCheckpointer() as checkpointer:
        meta = checkpointer.metadata(path.absolute())
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        tree = getattr(meta, "item_metadata", None)
    if not isinstance(tree, Mapping):
        raise ConversionError(f"{path}: an Orbax checkpoint without the metadata of a tree of arrays")
    return {key: (tuple(m.shape), np.dtype(m.dtype)) for key, m in flatten(tree).items()}


def load_orbax(path: str | Path) -> State:
    """Restores an Orbax checkpoint saved by `save_orbax` as a flat state of numpy arrays (dtypes as stored)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(Path(path).absolute())
    return {key: np.asarray(value) for key, value in flatten(tree).items()}
