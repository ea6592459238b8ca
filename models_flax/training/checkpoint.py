"""Orbax checkpoints of a `TrainState` (step, fp32 master parameters, optimizer state): one directory per saved step
under one root, written by orbax.checkpoint's CheckpointManager, the newest `keep` kept.

    checkpoints = TrainCheckpoints(run_dir / "checkpoints", keep=3)
    checkpoints.save(state)                                  # at step int(state.step); once per step
    state = checkpoints.restore(trainer.abstract_state())    # the latest step, with the trainer's shardings

A restored state is the saved one bit for bit, so a run resumed from it continues exactly as the uninterrupted run
would have (the step is a pure function of the state and the batch; `python -m train` makes the batch a function of
the step). Restoring onto `Trainer.abstract_state()` places every array with the trainer's sharding (a mesh run
restores sharded, without gathering a parameter on one device). Saves are synchronous: the step donates the state it
is given, so a background save could read freed buffers.

Imports jax, flax and orbax only (never torch).
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from models_flax.training.step import TrainState


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be restored onto the trainer's state (the message says why)."""


class TrainCheckpoints:
    """The checkpoints of one run (see the module docstring); a context manager that closes the manager.

    Raises (at construction):
        ValueError: keep < 1.
    """

    def __init__(self, directory: str | Path, *, keep: int):
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"TrainCheckpoints: keep must be an int >= 1, got {keep!r}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest(self) -> int | None:
        """The newest saved step (None: nothing saved)."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, state: TrainState) -> bool:
        """Saves `state` at its step, unless that step is saved already; returns whether it saved."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()
        return True

    def delete(self, step: int) -> None:
        """Removes the checkpoint of `step`."""
        self._manager.delete(step)

    def restore(self, abstract: TrainState, step: int | None = None) -> TrainState:
        """The state saved at `step` (default: the latest), restored onto `abstract` (`Trainer.abstract_state()`:
        shapes, dtypes and shardings).

        Raises:
            FileNotFoundError: no checkpoint at that step (naming the saved ones).
            CheckpointError: the saved tree does not fit `abstract` (another model, mode or LoRA rank), or its step
                count is not the step it is saved under.
        """
        steps = self.steps()
        step = steps[-1] if step is None and steps else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint saved")
        if step not in steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint at step {step}; saved steps: {steps}")
        try:
            state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{self.directory}: the checkpoint of step {step} does not fit this trainer's state (another model, "
                f"mode or LoRA rank?): {err}"
            ) from err
        saved = int(jax.device_get(state.step))
        if saved != step:
            raise CheckpointError(f"{self.directory}: the checkpoint of step {step} holds a state at step {saved}")
        return state

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
