"""A run directory of `python -m train` (the config's `out`):

    config.json      the run config, normalized (every default filled in): a resumed run must be given the same one
    data.json        what the data was (source, rows, n_q, frames, sha256 of the codes): a resumed run reads the same
    metrics.jsonl    one JSON line per step: step, loss, text, audio, grad_norm, clip_factor, lr, beta1, tokens_per_s,
                     elapsed (seconds of training since the run began, summed over its invocations)
    checkpoints/     Orbax checkpoints of the train state (models_flax/training/checkpoint.py), the newest `keep`
    final/           the final model of a finished run (train/export.py)

A new run needs a directory that does not exist or is empty; `--resume` needs one holding config.json. A resumed run
whose config or data differ from the directory's is refused, naming every differing key, never mixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.config import RunConfig, differences

CONFIG_NAME = "config.json"
DATA_NAME = "data.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_NAME = "checkpoints"
FINAL_NAME = "final"
METRIC_KEYS = ("step", "loss", "text", "audio", "grad_norm", "clip_factor", "lr", "beta1", "tokens_per_s", "elapsed")


class RunDirError(ValueError):
    """A run directory that does not fit the command (exists without --resume, holds another config, ...)."""


class RunDir:
    """The files of one run directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / CONFIG_NAME
        self.data_file = self.path / DATA_NAME
        self.metrics_file = self.path / METRICS_NAME
        self.checkpoints = self.path / CHECKPOINTS_NAME
        self.final = self.path / FINAL_NAME

    def check(self, config: RunConfig, data: dict[str, Any], *, resume: bool, config_path: str) -> None:
        """Refuses what cannot work, before anything is built or written.

        Raises:
            RunDirError: a new run into a non-empty directory; --resume without a run there; a run there of another
                config (naming each differing key, with the run's value and the new one) or of other data.
        """
        if not resume:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                what = "holds a run (pass --resume to continue it)" if self.config_file.is_file() else "is not empty"
                raise RunDirError(f"out {self.path} {what}; choose another out")
            return
        if not self.config_file.is_file():
            raise RunDirError(f"--resume: {self.path} holds no run (no {CONFIG_NAME}); start it without --resume")
        stored = json.loads(self.config_file.read_text())
        diff = differences(stored, config.to_dict())
        if diff:
            raise RunDirError(
                f"--resume: {config_path} differs from the config of the run in {self.path} ({self.config_file}) in "
                f"{len(diff)} key(s): " + "; ".join(diff) + ". Resume with the run's config, or start a new run "
                "with another out"
            )
        held = json.loads(self.data_file.read_text()) if self.data_file.is_file() else None
        if held is not None and held != data:
            diff = differences(held, data)
            raise RunDirError(f"--resume: the data differs from what the run in {self.path} read: " + "; ".join(diff))

    def create(self, config: RunConfig, data: dict[str, Any]) -> None:
        """Makes the directory with its config.json and data.json (a resumed run's are left as they are)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.config_file.is_file():
            self.config_file.write_text(json.dumps(config.to_dict(), indent=1) + "\n")
            self.data_file.write_text(json.dumps(data, indent=1) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl."""
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def rewind(self, step: int) -> float:
        """Drops the metrics lines of steps after `step` (a run resumed from a checkpoint redoes them); returns the
        elapsed seconds at `step` (0 when none)."""
        kept = [m for m in self.metrics() if m["step"] <= step]
        self.metrics_file.write_text("".join(json.dumps(m) + "\n" for m in kept))
        return kept[-1]["elapsed"] if kept else 0.0

    def append(self, metrics: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps({key: metrics[key] for key in METRIC_KEYS}) + "\n")
