"""Training data of `python -m train`: the on-disk format, its validating loader, deterministic batches, and a
synthetic generator.

The format, a directory:

    manifest.json   {"format": "moshi-parity train data", "version": 1, "n_q": 8, "frames": 12,
                     "files": {"00000.npy": 16, "00001.npy": 16}}          (file name -> its row count)
    00000.npy ...   int32 arrays (N, 1 + n_q, T), T = frames: one row per training example, the codes as kyutai's
                    LMModel.forward takes them (undelayed, text first): row 0 the text ids, in [0, text_card); rows
                    1..n_q the audio codes, in [0, card), or -1, the zero token (no audio there: the model embeds it
                    as zeros and the loss does not score it).

Text padding is ordinary text ids (kyutai's padding 3, `LMConfig.existing_text_padding_id`, and the end padding 0);
the loss weighs them by `train.loss.text_padding_weight` when listed in `text_padding_ids` (the recipe: 0.5, (0, 3)).

The loader (`load`) checks everything before training starts, naming the file and the first bad entry: the manifest
(its keys, format, version, n_q equal to the LM's, frames, one entry per `.npy` file of the directory, no file
unlisted), and every file (a plain .npy, int32, rank 3, (rows, 1 + n_q, frames) as listed, every text id and audio
code in its range). Files are memory-mapped: a batch reads only its rows.

Batches (`Dataset.batch`): step s (0-based: the step that makes the train state's step s + 1) reads K x B rows
(K = num_microbatches, B = batch_size) at positions s*K*B ... (s+1)*K*B - 1 of an endless stream of epochs, each
epoch a permutation of all rows drawn from (seed, epoch). The batch of step s depends only on (seed, s), so a resumed
run reads the batches the uninterrupted run would have. Shape (K, B, 1 + n_q, T), int32.

Synthetic data (`synthesize`, `python -m train.data synth OUT --preset tiny --files 2 --rows 16 --frames 12`):
random text ids and audio codes, each row with a span of text padding (3), odd rows ending in end padding (0), and a
span of zero tokens (-1) on some codebooks, so that every weight of the loss is exercised. `python -m train.data
check DIR --preset tiny` validates a directory. Exit status: 0 done, 1 a data error, 2 a usage error.

Imports numpy and moshi_spec only (no jax): writing or checking data is quick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moshi_spec import LMConfig

MANIFEST = "manifest.json"
FORMAT = "moshi-parity train data"
VERSION = 1
ZERO_TOKEN = -1
END_PADDING = 0
MANIFEST_KEYS = ("format", "version", "n_q", "frames", "files")


class DataError(ValueError):
    """Training data that does not fit the format or the LM; the message names the file and the entry."""


CHUNK = 4096  # rows checked at a time (a memory-mapped file is never read whole into temporaries)


def check_codes(codes: np.ndarray, cfg: LMConfig, where: str) -> None:
    """Raises a DataError naming `where`, the first bad entry (row, stream, frame), its value, the valid range and
    the number of bad entries, unless codes (N, 1 + n_q, T) holds text ids in [0, text_card) (stream 0) and audio
    codes in [0, card) or -1 (streams 1..n_q). With kyutai's head options a text id must be one the text embedding
    takes (text_vocab: muxed pairs with demux_second_text_stream) and the text head scores (text_out)."""
    text_ids = min(cfg.text_vocab, cfg.text_out)
    named = "text_card" if text_ids == cfg.text_card else "text_vocab and text_out"
    ranges = {
        "text id": f"[0, {text_ids}) ({named})",
        "audio code": f"[0, {cfg.card}) (card) or {ZERO_TOKEN} (the zero token)",
    }
    first: dict[str, tuple[int, tuple[int, int, int]]] = {}
    counts = dict.fromkeys(ranges, 0)
    for start in range(0, len(codes), CHUNK):
        chunk = np.asarray(codes[start : start + CHUNK])
        text, audio = chunk[:, :1], chunk[:, 1:]
        bad = {
            "text id": (text < 0) | (text >= text_ids),
            "audio code": ((audio < 0) & (audio != ZERO_TOKEN)) | (audio >= cfg.card),
        }
        for what, mask in bad.items():
            count = int(np.count_nonzero(mask))
            counts[what] += count
            if count and what not in first:
                row, stream, frame = (int(i) for i in np.argwhere(mask)[0])
                stream += what == "audio code"
                first[what] = (int(chunk[row, stream, frame]), (start + row, stream, frame))
    for what, (value, (row, stream, frame)) in first.items():
        raise DataError(
            f"{where}: {what} {value} at row {row}, stream {stream}, frame {frame} is outside {ranges[what]}; "
            f"{counts[what]} bad {what}(s) in this file"
        )


@dataclass(frozen=True)
class Dataset:
    """Validated rows: `arrays` (each (N_i, 1 + n_q, frames) int32) named `names`; `fingerprint` the sha256 of the
    shapes and the codes (what a resumed run checks it reads the same data)."""

    source: str
    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    n_q: int
    frames: int
    fingerprint: str
    _starts: np.ndarray = field(init=False, repr=False, compare=False)
    _epoch: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", np.cumsum([0] + [len(a) for a in self.arrays]))

    @property
    def rows(self) -> int:
        return int(self._starts[-1])

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "n_q": self.n_q, "frames": self.frames,
                "sha256": self.fingerprint}  # fmt: skip

    def row(self, index: int) -> np.ndarray:
        """Row `index` of the concatenated files, (1 + n_q, frames) int32."""
        file = int(np.searchsorted(self._starts, index, side="right")) - 1
        return np.asarray(self.arrays[file][index - self._starts[file]])

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._epoch:
            self._epoch.clear()  # one epoch at a time (a step spans at most a few)
            self._epoch[key] = np.random.default_rng([seed, epoch]).permutation(self.rows)
        return self._epoch[key]

    def batch_rows(self, step: int, *, batch_size: int, num_microbatches: int, seed: int) -> np.ndarray:
        """The row indices of step `step`'s batch (see the module docstring), (num_microbatches * batch_size,)."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"Dataset.batch: step must be an int >= 0, got {step!r}")
        per = batch_size * num_microbatches
        positions = np.arange(step * per, (step + 1) * per, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.rows)
        return np.asarray([self._permutation(seed, int(e))[o] for e, o in zip(epochs, offsets, strict=True)])

    def batch(self, step: int, *, batch_size: int, num_microbatches: int, seed: int) -> np.ndarray:
        """Step `step`'s codes, (num_microbatches, batch_size, 1 + n_q, frames) int32."""
        rows = self.batch_rows(step, batch_size=batch_size, num_microbatches=num_microbatches, seed=seed)
        codes = np.stack([self.row(int(i)) for i in rows])
        return codes.reshape(num_microbatches, batch_size, 1 + self.n_q, self.frames)


def _fingerprint(n_q: int, frames: int, named: Sequence[tuple[str, np.ndarray]]) -> str:
    digest = hashlib.sha256(json.dumps({"n_q": n_q, "frames": frames}).encode())
    for _, array in named:
        digest.update(json.dumps(list(array.shape)).encode())
        for start in range(0, len(array), CHUNK):
            digest.update(np.ascontiguousarray(array[start : start + CHUNK]).tobytes())
    return digest.hexdigest()


def from_arrays(named: Sequence[tuple[str, np.ndarray]], cfg: LMConfig, *, source: str) -> Dataset:
    """A Dataset of in-memory arrays, each checked as a file would be (named by its name).

    Raises:
        DataError: an array that is not int32 (N >= 1, 1 + n_q, T) with T shared, or a code out of its range.
    """
    if not named:
        raise DataError(f"{source}: no rows")
    frames = None
    for name, array in named:
        where = f"{source}: {name}"
        if array.dtype != np.int32:
            raise DataError(f"{where}: dtype {array.dtype}, expected int32")
        if array.ndim != 3 or array.shape[1] != 1 + cfg.n_q or array.shape[0] < 1 or array.shape[2] < 1:
            raise DataError(f"{where}: shape {array.shape}, expected (rows >= 1, 1 + n_q = {1 + cfg.n_q}, frames >= 1)")
        frames = array.shape[2] if frames is None else frames
        if array.shape[2] != frames:
            raise DataError(f"{where}: {array.shape[2]} frames, the other files {frames}")
        check_codes(array, cfg, where)
    names, arrays = zip(*named, strict=True)
    return Dataset(source, names, arrays, cfg.n_q, frames, _fingerprint(cfg.n_q, frames, named))


def _manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not path.is_dir():
        raise DataError(f"{path}: no such data directory")
    if not file.is_file():
        raise DataError(f"{path}: no {MANIFEST} (a data directory of `python -m train.data synth` holds one)")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{file}: not JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise DataError(f"{file}: not a JSON object")
    unknown, missing = sorted(set(manifest) - set(MANIFEST_KEYS)), [k for k in MANIFEST_KEYS if k not in manifest]
    if unknown or missing:
        raise DataError(f"{file}: unknown key(s) {unknown}, missing key(s) {missing}; keys: {list(MANIFEST_KEYS)}")
    if manifest["format"] != FORMAT or manifest["version"] != VERSION:
        raise DataError(
            f"{file}: format {manifest['format']!r} version {manifest['version']!r}, expected {FORMAT!r} version "
            f"{VERSION}"
        )
    for key in ("n_q", "frames"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{file}: {key} must be an int >= 1, got {value!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise DataError(f"{file}: files must be a non-empty object {{file name: row count}}, got {files!r}")
    for name, rows in files.items():
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise DataError(f"{file}: files[{name!r}] must be a row count (an int >= 1), got {rows!r}")
        if Path(name).name != name or not name.endswith(".npy"):
            raise DataError(f"{file}: files[{name!r}] must name a .npy file inside {path}")
    return manifest


def load(path: str | Path, cfg: LMConfig) -> Dataset:
    """The data directory at `path`, every file checked against the manifest and `cfg` (see the module docstring).

    Raises:
        DataError: naming the file and the problem.
    """
    path = Path(path)
    manifest = _manifest(path)
    if manifest["n_q"] != cfg.n_q:
        raise DataError(f"{path / MANIFEST}: n_q {manifest['n_q']}, but the LM has n_q {cfg.n_q}")
    files = manifest["files"]
    present = sorted(p.name for p in path.glob("*.npy"))
    missing, unlisted = sorted(set(files) - set(present)), sorted(set(present) - set(files))
    if missing or unlisted:
        raise DataError(f"{path}: files listed in {MANIFEST} but absent {missing}; .npy files not listed {unlisted}")
    named = []
    for name, rows in files.items():
        file = path / name
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"{file}: not a .npy array ({err})") from err
        expected = (rows, 1 + cfg.n_q, manifest["frames"])
        if array.dtype != np.int32 or array.shape != expected:
            raise DataError(
                f"{file}: {array.dtype} {tuple(array.shape)}, expected int32 {expected} (rows from {MANIFEST}, "
                "1 + n_q, frames)"
            )
        named.append((name, array))
    return from_arrays(named, cfg, source=str(path))


def synthesize(cfg: LMConfig, *, rows: int, frames: int, seed: int | Sequence[int]) -> np.ndarray:
    """(rows, 1 + n_q, frames) int32 codes of the format (see the module docstring), drawn from `seed`."""
    pad = cfg.existing_text_padding_id
    if not 0 <= pad < cfg.text_card or cfg.text_card <= END_PADDING:
        raise ValueError(
            f"synthesize: the padding ids {pad}, {END_PADDING} must be text ids (text_card {cfg.text_card})"
        )
    if rows < 1 or frames < 2:
        raise ValueError(f"synthesize: rows must be >= 1 and frames >= 2, got rows={rows}, frames={frames}")
    rng = np.random.default_rng(seed)
    codes = np.empty((rows, 1 + cfg.n_q, frames), np.int32)
    codes[:, 0] = rng.integers(0, cfg.text_card, (rows, frames))
    codes[:, 1:] = rng.integers(0, cfg.card, (rows, cfg.n_q, frames))
    for r in range(rows):
        start = int(rng.integers(0, frames - 1))
        codes[r, 0, start : int(rng.integers(start + 1, frames + 1))] = pad
        if r % 2:
            codes[r, 0, int(rng.integers(frames // 2, frames)) :] = END_PADDING
        books = 1 + rng.choice(cfg.n_q, size=int(rng.integers(1, cfg.n_q + 1)), replace=False)
        start = int(rng.integers(0, frames - 1))
        codes[r, books, start : int(rng.integers(start + 1, frames + 1))] = ZERO_TOKEN
    return codes


def file_name(index: int) -> str:
    return f"{index:05d}.npy"


def write(out: str | Path, arrays: Sequence[np.ndarray]) -> Path:
    """Writes the arrays as a data directory at `out` (which must not exist), atomically (`out.tmp-<pid>` first).

    Raises:
        FileExistsError: `out` exists.
        DataError: arrays of another dtype, rank or shape than the format's (n_q and frames shared).
    """
    out = Path(out)
    if os.path.lexists(out):
        raise FileExistsError(f"{out} exists; choose another directory")
    shapes = {a.shape[1:] for a in arrays}
    if not arrays or len(shapes) != 1 or any(a.dtype != np.int32 or a.ndim != 3 for a in arrays):
        raise DataError(
            f"write: expected int32 arrays (N, 1 + n_q, T) of one (1 + n_q, T), got {[a.shape for a in arrays]}"
        )
    (streams, frames), = shapes  # fmt: skip
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        for i, array in enumerate(arrays):
            np.save(tmp / file_name(i), array, allow_pickle=False)
        manifest = {"format": FORMAT, "version": VERSION, "n_q": streams - 1, "frames": frames,
                    "files": {file_name(i): len(a) for i, a in enumerate(arrays)}}  # fmt: skip
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write synthetic data in the format")
    check = sub.add_parser("check", help="validate a data directory against an LM config")
    for q in (synth, check):
        which = q.add_mutually_exclusive_group(required=True)
        which.add_argument("--preset", choices=("tiny", "small", "moshi_7b"), help="the LM config: a preset")
        which.add_argument("--checkpoint", type=Path, help="the LM config: a flax OUT of `python -m converters`")
    synth.add_argument("out", metavar="OUT", type=Path)
    synth.add_argument("--files", type=int, default=2, help="number of .npy files (default 2)")
    synth.add_argument("--rows", type=int, default=16, help="rows per file (default 16)")
    synth.add_argument("--frames", type=int, default=12, help="frames per row, T (default 12)")
    synth.add_argument("--seed", type=int, default=0, help="file i is drawn from (seed, i) (default 0)")
    check.add_argument("path", metavar="DIR", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 done, 1 data error, 2 usage error)."""
    from train.model import lm_config

    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        cfg = lm_config(preset=args.preset, checkpoint=args.checkpoint)
        if args.command == "synth":
            if args.files < 1 or args.rows < 1 or args.frames < 2 or args.seed < 0:
                p.print_usage(sys.stderr)
                print("error: --files and --rows must be >= 1, --frames >= 2, --seed >= 0", file=sys.stderr)
                return 2
            arrays = [
                synthesize(cfg, rows=args.rows, frames=args.frames, seed=[args.seed, i]) for i in range(args.files)
            ]
            write(args.out, arrays)
            print(f"wrote {args.out}: {args.files} file(s) x {args.rows} rows x (1 + {cfg.n_q}, {args.frames}) int32")
        else:
            data = load(args.path, cfg)
            print(
                f"{args.path}: {data.rows} rows x (1 + {data.n_q}, {data.frames}) in {len(data.arrays)} file(s), valid"
            )
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
