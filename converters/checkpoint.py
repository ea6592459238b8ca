"""Checkpoint files: safetensors (a file or a directory of shards) and Orbax, read and written as flat numpy states.

safetensors is read from its header (shapes and dtypes without touching the data) and memory-mapped (arrays are
read-only views of the file, paged in when a converter touches them), and written tensor by tensor, so a 7B conversion
holds no second copy of the weights for serialization. Dtypes travel bit for bit (bfloat16 as ml_dtypes.bfloat16).

Orbax (Flax): a flat state `{"a.b.0.c": array}` is saved as the nested dict `{"a": {"b": {"0": {"c": array}}}}` with
`orbax.checkpoint.StandardCheckpointer`; orbax is imported only when an Orbax checkpoint is read or written.

The file names of a converted checkpoint directory (the CLI's OUT, read back by `models_flax.checkpoint`) live here,
so that the writer and every reader agree on them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from converters.accounting import ConversionError

State = dict[str, np.ndarray]
Progress = Callable[[int], object]

CONFIG_NAME = "moshi_parity_config.json"
"""In a converted checkpoint directory: the record (format, LMConfig as `lm_config`, source, tool version, keys)."""
SAFETENSORS_NAME = "model.safetensors"
"""In a converted checkpoint directory: the weights of a torch-layout format."""
ORBAX_NAME = "params"
"""In a converted checkpoint directory: the Orbax checkpoint of an orbax-stored format (flax)."""

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


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """(header dict, offset of the data section) of one safetensors file."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > HEADER_LIMIT:
            raise ConversionError(f"{path}: not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConversionError(f"{path}: not a safetensors file (header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header, 8 + size


class TensorInfo:
    """Where one tensor lives: file, dtype, shape and byte range (absolute offsets)."""

    def __init__(self, file: Path, key: str, entry: Mapping[str, Any], base: int):
        if entry.get("dtype") not in SAFETENSORS_DTYPES:
            raise ConversionError(
                f"{file}: {key} has dtype {entry.get('dtype')!r}; supported: {list(SAFETENSORS_DTYPES)}"
            )
        self.file, self.key = file, key
        self.dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        self.shape = tuple(int(d) for d in entry["shape"])
        start, end = (int(x) for x in entry["data_offsets"])
        self.offset, self.nbytes = base + start, end - start
        if self.nbytes != int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize:
            raise ConversionError(f"{file}: {key} spans {self.nbytes} bytes, not {self.shape} x {self.dtype}")

    def load(self) -> np.ndarray:
        """A read-only memory-mapped view (an empty array for zero-size tensors)."""
        if self.nbytes == 0:
            return np.empty(self.shape, self.dtype)
        return np.memmap(self.file, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)


def read_safetensors_index(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """({key: TensorInfo}, metadata of the first file) from the headers of a file or a directory of shards.

    Raises:
        ConversionError: a malformed header, an unsupported dtype, or a key present in two shards.
    """
    index: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for i, file in enumerate(safetensors_files(path)):
        header, base = _header(file)
        if i == 0:
            metadata = dict(header.get("__metadata__") or {})
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            if key in index:
                raise ConversionError(f"{key} is in two shards: {index[key].file} and {file}")
            index[key] = TensorInfo(file, key, entry, base)
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


def save_orbax(state: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Saves the state as an Orbax checkpoint at `path` (which must not exist), waiting until it is committed."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(path).absolute(), nest(state))
        checkpointer.wait_until_finished()


def orbax_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of an Orbax checkpoint from its metadata, reading no array."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        meta = checkpointer.metadata(Path(path).absolute())
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
    if tree is None:
        tree = meta.item_metadata
    return {key: (tuple(m.shape), np.dtype(m.dtype)) for key, m in flatten(tree).items()}


def load_orbax(path: str | Path) -> State:
    """Restores an Orbax checkpoint saved by `save_orbax` as a flat state of numpy arrays (dtypes as stored)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(Path(path).absolute())
    return {key: np.asarray(value) for key, value in flatten(tree).items()}
