"""`python -m train CONFIG.json [--steps N] [--resume] [--no-progress]`: fine-tune the LM after kyutai's recipe.

CONFIG is a run config (train/config.py); the data is checked whole (train/data.py) and, with --resume, the run
directory's config and data compared with CONFIG's (train/rundir.py) before any model is built. Then the LM (a preset
from the seed, or a flax checkpoint), its adapters (mode "lora"), the jitted train step (models_flax/training/step.py;
on a ('dp', 'fsdp') mesh when dp x fsdp > 1) and the train state: fresh, or restored from the run's latest checkpoint.
Each step reads the batch of its index (the same whatever the interruptions), shows loss, lr and tokens/s on a
progress bar (tokens: batch_size x frames x num_microbatches per step), appends its metrics to RUN_DIR/metrics.jsonl,
and stops the run with an error when its loss or gradient norm is not finite or a label was out of range. The state
is saved every checkpoint_every steps and when the invocation ends; a run that reached train.total_steps writes
RUN_DIR/final (train/export.py).

--steps N stops after step N (of total_steps; a checkpoint is saved there): `--resume` continues from the latest
checkpoint, bit for bit as if never stopped. Exit status: 0 done, 1 a config, data, run-directory or training error,
2 a usage error, 130 interrupted (the latest checkpoint stays).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from moshi_spec import LMConfig
from train import config as run_config
from train import data as run_data
from train.config import RunConfig
from train.model import lm_config
from train.rundir import RunDir


class TrainingError(RuntimeError):
    """A step whose metrics say the run cannot go on (non-finite loss or gradient, labels out of range)."""


@dataclass
class Prepared:
    """What a run needs besides the model: its config, LM config, checked data, run directory."""

    config: RunConfig
    lm: LMConfig
    data: run_data.Dataset
    run_dir: RunDir


def prepare(config_path: str | Path) -> Prepared:
    """Reads and checks the config and the data (no jax computation).

    Raises:
        RunConfigError, DataError, FileNotFoundError, ValueError: naming the file and the problem.
    """
    cfg = run_config.load(config_path)
    model = cfg.model
    lm = lm_config(preset=model.preset, checkpoint=model.checkpoint)
    if cfg.data.path is not None:
        data = run_data.load(cfg.data.path, lm)
    else:
        s = cfg.data.synthetic
        codes = run_data.synthesize(lm, rows=s.rows, frames=s.frames, seed=[s.seed, 0])
        data = run_data.from_arrays([("synthetic", codes)], lm, source=f"synthetic (rows {s.rows}, seed {s.seed})")
    cfg.train.loss.codebook_weights(lm.dep_q)  # a loss config the LM cannot use fails here, not at the first step
    cfg.train.loss.padding_ids(lm.text_card)
    return Prepared(cfg, lm, data, RunDir(cfg.out))


def make_trainer(cfg: RunConfig, lm: LMConfig) -> Any:
    """The model (train/model.py) and its Trainer, on a mesh when mesh.dp x mesh.fsdp > 1."""
    from models_flax.sharding import make_mesh
    from models_flax.training.step import Trainer
    from train.model import build

    mesh = make_mesh(cfg.mesh.dp, cfg.mesh.fsdp) if cfg.mesh.devices > 1 else None
    return Trainer(build(cfg, lm, mesh=mesh), cfg.train, mesh=mesh)


def merged_weights(model: Any) -> dict[str, Any]:
    """The flat flax state ({path: numpy array}, `converters.flax_state`'s keys) of `model` with its adapters merged
    (`merge_lora`, in one jitted program rather than op by op); `model` itself is left as it is."""
    import jax
    from flax import nnx

    from converters.arrays import from_jax
    from models_flax.training.lora import merge_lora

    graphdef, params = nnx.split(model)

    def merge(params: nnx.State) -> nnx.State:
        merged = nnx.merge(graphdef, params)
        merge_lora(merged)
        return nnx.state(merged, nnx.Param)

    flat = nnx.to_flat_state(jax.jit(merge)(params))
    return {".".join(map(str, path)): from_jax(variable.get_value()) for path, variable in flat}


def final_weights(trainer: Any, state: Any, cfg: RunConfig) -> tuple[dict | None, dict | None]:
    """(merged flax state or None, adapters {path: array} or None) of the trained model, as numpy, per `cfg.save`."""
    from converters.arrays import from_jax
    from models_flax.training.lora import lora_state

    model = trainer.model(state)  # detached: merging its adapters leaves the trainer alone
    adapters = {k: from_jax(v) for k, v in lora_state(model).items()} if cfg.save in ("adapters", "both") else None
    return (merged_weights(model) if cfg.save in ("merged", "both") else None), adapters


def _check_step(step: int, metrics: dict[str, float], latest: int | None) -> None:
    problems = [f"{name} {metrics[name]}" for name in ("loss", "grad_norm") if not math.isfinite(metrics[name])]
    if metrics["out_of_range"] > 0:
        problems.append(f"{int(metrics['out_of_range'])} label(s) outside their vocabulary (masked out of the loss)")
    if problems:
        where = f"its latest checkpoint is step {latest}" if latest is not None else "no checkpoint was saved"
        raise TrainingError(f"step {step}: " + ", ".join(problems) + f"; the run stopped ({where})")


def train(
    config_path: str | Path, *, steps: int | None = None, resume: bool = False, progress: bool = True,
    stdout: TextIO | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Runs (or resumes) the run of `config_path` up to step `steps` (default: total_steps); returns a summary.

    Raises:
        As `prepare`; RunDirError; ValueError (--steps out of range, a mesh the devices do not allow);
        CheckpointError; TrainingError.
    """
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from models_flax.training.checkpoint import TrainCheckpoints
    from train.export import write_final

    stdout = sys.stdout if stdout is None else stdout
    p = prepare(config_path)
    cfg, total = p.config, p.config.train.total_steps
    stop = total if steps is None else steps
    if not 1 <= stop <= total:
        raise ValueError(f"--steps {steps}: must be in [1, train.total_steps = {total}]")
    info = p.data.info()
    p.run_dir.check(cfg, info, resume=resume, config_path=str(config_path))
    trainer = make_trainer(cfg, p.lm)
    p.run_dir.create(cfg, info)
    k, b = cfg.train.num_microbatches, cfg.batch_size
    tokens = k * b * p.data.frames
    with TrainCheckpoints(p.run_dir.checkpoints, keep=cfg.keep) as checkpoints:
        latest = checkpoints.latest()
        state = trainer.init() if latest is None else checkpoints.restore(trainer.abstract_state())
        if trainer.mesh is None:  # committed, as a restored state is: one compiled step for fresh and resumed runs
            state = jax.device_put(state, jax.devices()[0])
        start = int(jax.device_get(state.step))
        elapsed0 = p.run_dir.rewind(start)
        began = time.monotonic()
        bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr, disable=not progress)
        try:
            for s in range(start, stop):
                codes = p.data.batch(s, batch_size=b, num_microbatches=k, seed=cfg.seed)
                t = time.monotonic()
                state, metrics = trainer.step(state, jnp.asarray(codes))
                metrics = {name: float(v) for name, v in jax.device_get(metrics).items()}
                now = time.monotonic()
                metrics |= {"step": s + 1, "tokens_per_s": tokens / (now - t), "elapsed": elapsed0 + now - began}
                p.run_dir.append(metrics)
                _check_step(s + 1, metrics, checkpoints.latest())
                if (s + 1) % cfg.checkpoint_every == 0:
                    checkpoints.save(state)
                bar.set_postfix(loss=f"{metrics['loss']:.4g}", lr=f"{metrics['lr']:.3g}",
                                tok_s=f"{metrics['tokens_per_s']:.0f}")  # fmt: skip
                bar.update()
        finally:
            bar.close()
        checkpoints.save(state)
        saved = checkpoints.steps()
    done = int(jax.device_get(state.step))
    summary = {"run": str(p.run_dir.path), "start": start, "step": done, "total_steps": total, "checkpoints": saved,
               "seconds": round(time.monotonic() - began, 3), "final": None}  # fmt: skip
    line = f"steps {start + 1}..{done} of {total}" if done > start else f"no step to run (at step {done} of {total})"
    print(f"{line} in {summary['seconds']} s; checkpoints of steps {saved} in {p.run_dir.checkpoints}", file=stdout)
    if done < total:
        print(f"stopped at step {done}; continue with: python -m train {config_path} --resume", file=stdout)
        return summary
    merged, adapters = final_weights(trainer, state, cfg)
    trained = {"step": done, "run_config": cfg.to_dict()}
    files = write_final(
        p.run_dir.final, p.lm, merged=merged, adapters=adapters, lora=cfg.train.lora,
        source=str(p.run_dir.path.absolute()), trained=trained, progress=progress,
    )  # fmt: skip
    summary["final"] = str(p.run_dir.final)
    print(f"wrote {p.run_dir.final}: {', '.join(files)}", file=stdout)
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("config", metavar="CONFIG", type=Path, help="the run config, JSON (train/config.py)")
    p.add_argument("--steps", type=int, help="stop after this step (default: train.total_steps)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (see the module docstring)."""
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.steps is not None and args.steps < 1:
        p.print_usage(sys.stderr)
        print(f"error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    try:
        train(args.config, steps=args.steps, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted; continue from the latest checkpoint with --resume", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
