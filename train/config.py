"""The run config of `python -m train`: one JSON file.

    {
      "model": {"preset": "tiny"},                 # or {"checkpoint": "DIR"}: a flax OUT of `python -m converters`
      "data": {"path": "DIR"},                     # or {"synthetic": {"rows": 64, "frames": 12, "seed": 0}}
      "train": {"mode": "lora", "lora": {"rank": 8}, "optim": {"lr": 1e-3, "pct_start": 0.1}, "total_steps": 20},
      "batch_size": 2,
      "mesh": {"dp": 1, "fsdp": 1},
      "checkpoint_every": 10,
      "keep": 3,
      "seed": 0,
      "out": "runs/demo",
      "save": "merged"
    }

- model: a preset's random weights (drawn from `seed`) or a converted flax checkpoint (`models_flax.from_checkpoint`,
  cast to `train.param_dtype`).
- data: a directory in the format of train/data.py, or synthetic rows generated in memory by the same generator as
  `python -m train.data synth` (rows, frames, seed).
- train: moshi_spec.training.TrainConfig's fields (`TrainConfig.from_dict`): mode, lora, optim, loss, total_steps,
  num_microbatches, param_dtype, remat.
- batch_size: rows per micro-batch; a step reads num_microbatches x batch_size rows. mesh: dp x fsdp devices
  (1 x 1: no mesh); batch_size must divide by dp * fsdp (the batch is split over both axes).
- checkpoint_every: save the train state every N steps (and at the end of every invocation); keep: how many
  checkpoints stay. seed: the preset's weights, the adapters' initialisation and the data order.
- out: the run directory. save: what the finished run writes to OUT/final: "merged" (a flax checkpoint with the
  adapters merged, loadable with `models_flax.from_checkpoint`), "adapters" (kyutai's `lora.safetensors`), "both".

Required: model, data, batch_size, out. Paths are relative to the working directory. Every unknown key is an error
naming it and the known ones; every bad value is an error naming the key and the value (all of a file's bad values
together, as moshi_spec's Checker reports them).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moshi_spec.training import TrainConfig
from moshi_spec.validation import Checker, ConfigError

PRESETS = ("tiny", "small", "moshi_7b")
SAVES = ("merged", "adapters", "both")


class RunConfigError(ValueError):
    """A run config that cannot work; the message names the file, the keys and the values."""


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Exactly one of: a moshi_spec preset name, a flax checkpoint directory."""

    preset: str | None = None
    checkpoint: str | None = None


@dataclass(frozen=True, kw_only=True)
class SyntheticData:
    """Rows generated in memory (train.data.synthesize): rows x (1 + n_q, frames), from seed."""

    rows: int = 64
    frames: int = 12
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """Exactly one of: a data directory (train/data.py's format), synthetic rows."""

    path: str | None = None
    synthetic: SyntheticData | None = None


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    dp: int = 1
    fsdp: int = 1

    @property
    def devices(self) -> int:
        return self.dp * self.fsdp


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One run (see the module docstring). Checked at construction: a ConfigError naming every bad key and value."""

    model: ModelSource
    data: DataSource
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint_every: int = 100
    keep: int = 3
    seed: int = 0
    out: str
    save: str = "merged"

    def __post_init__(self) -> None:
        c = Checker(self)
        if _exactly_one(c, "model", self.model, ("preset", "checkpoint")):
            if self.model.preset is not None:
                c.choice("model.preset", PRESETS)
            else:
                _path(c, "model.checkpoint")
        if _exactly_one(c, "data", self.data, ("path", "synthetic")):
            if self.data.path is not None:
                _path(c, "data.path")
            else:
                c.integer("data.synthetic.rows")
                c.integer("data.synthetic.frames")
                c.integer("data.synthetic.seed", minimum=0)
        c.integer("batch_size")
        c.integer("mesh.dp")
        c.integer("mesh.fsdp")
        c.integer("checkpoint_every")
        c.integer("keep")
        c.integer("seed", minimum=0)
        _path(c, "out")
        c.choice("save", SAVES)
        if c.valid("batch_size", "mesh.dp", "mesh.fsdp"):
            c.require(
                "batch_size",
                self.batch_size % self.mesh.devices == 0,
                f"batch_size {self.batch_size} must divide by mesh dp x fsdp = {self.mesh.devices} (the batch is "
                "split over both axes)",
            )
        if c.valid("save") and self.save != "merged":
            if self.train.mode != "lora":
                c.fail("save", f"save {self.save!r} needs train.mode 'lora' (mode {self.train.mode!r} has no adapters)")
            elif self.train.lora.ft_embed:
                c.fail(
                    "save",
                    f"save {self.save!r} writes the adapters only, but train.lora.ft_embed also trains the embeddings, "
                    "which lora.safetensors would drop; use save 'merged'",
                )
        c.raise_if_any()

    def to_dict(self) -> dict[str, Any]:
        """The normalized config (every default filled in, JSON types): what the run directory keeps."""
        out = dataclasses.asdict(self)
        out["model"] = {k: v for k, v in out["model"].items() if v is not None}
        out["data"] = {k: v for k, v in out["data"].items() if v is not None}
        return json.loads(json.dumps(out))


def _exactly_one(c: Checker, name: str, section: Any, keys: tuple[str, ...]) -> bool:
    given = [k for k in keys if getattr(section, k) is not None]
    if len(given) != 1:
        shown = {k: getattr(section, k) for k in given}
        return c.fail(name, f"{name} must hold exactly one of {list(keys)}, got {shown or 'none'}", value=shown)
    return True


def _path(c: Checker, name: str) -> bool:
    value = c.value(name)
    if not isinstance(value, str):
        return c.wrong_type(name, "a path (a string)")
    return c.require(name, bool(value.strip()), f"{name} must be a non-empty path, got {value!r}")


REQUIRED = ("model", "data", "batch_size", "out")


def _fields(kind: type) -> list[str]:
    return [f.name for f in dataclasses.fields(kind)]


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RunConfigError(f"{where} must be a JSON object, got {raw!r} ({type(raw).__name__})")
    return raw


def _known(raw: Any, kind: type, where: str) -> dict[str, Any]:
    raw = _mapping(raw, where)
    known = _fields(kind)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise RunConfigError(f"unknown key(s) {unknown} in {where}; known: {known}")
    return raw


def from_dict(raw: Any) -> RunConfig:
    """The RunConfig of a JSON-like dict.

    Raises:
        RunConfigError: an unknown or missing key, a section that is not an object, or a bad value (naming each).
    """
    raw = dict(_known(raw, RunConfig, "the run config"))
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise RunConfigError(f"the run config lacks the required key(s) {missing}")
    model = ModelSource(**_known(raw["model"], ModelSource, "model"))
    data = dict(_known(raw["data"], DataSource, "data"))
    if data.get("synthetic") is not None:
        data["synthetic"] = SyntheticData(**_known(data["synthetic"], SyntheticData, "data.synthetic"))
    mesh = MeshConfig(**_known(raw.get("mesh", {}), MeshConfig, "mesh"))
    try:
        train = TrainConfig.from_dict(_mapping(raw.get("train", {}), "train"))
    except (ValueError, TypeError) as err:  # TrainConfig names the field, and its section when nested
        message = str(err)
        raise RunConfigError(message if message.startswith("train: ") else f"train: {message}") from err
    try:
        return RunConfig(**{**raw, "model": model, "data": DataSource(**data), "mesh": mesh, "train": train})
    except ConfigError as err:
        raise RunConfigError(str(err)) from err


def load(path: str | Path) -> RunConfig:
    """The run config of a JSON file.

    Raises:
        FileNotFoundError: no such file.
        RunConfigError: not JSON, or any problem of `from_dict`, prefixed with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such run config file")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunConfigError(f"{path}: not JSON ({err})") from err
    try:
        return from_dict(raw)
    except RunConfigError as err:
        raise RunConfigError(f"{path}: {err}") from err


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two normalized configs, each with both values."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, missing), b.get(key, missing)
        if x != y:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            lines.append(f"{key}: {show(x)} -> {show(y)}")
    return lines


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else key)
    return out
