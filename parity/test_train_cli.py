"""`python -m train` (train/) end to end on the tiny preset, in process through its `main(argv)`.

One module-scoped set of runs, from synthetic on-disk data (`python -m train.data synth`): a 6-step LoRA run, and the
same run stopped after step 3 (`--steps 3`) then resumed (`--resume`). Checked: the resumed run's final master
parameters and optimizer state equal the uninterrupted run's bit for bit, and so do its metrics lines (timings
aside); the merged final checkpoint loads with `models_flax.from_checkpoint` and computes the trained model's logits
bit for bit; the kyutai-layout adapter file holds exactly the keys `converters.lora.sites()` names and the trained
factors; bad configs, bad data and a resume with another config are refused with messages naming the problem.

Negative controls: resuming from the step-3 checkpoint with a fresh optimizer state is not bit-equal (so the resume
comparison can fail); the untrained model's logits differ from the checkpoint's; the step-0 adapters differ from the
file's; each refused input's valid twin is accepted.

The invocations share one compiled train step: each builds its own Trainer, and every Trainer of the same model
structure and config calls the same jitted step (models_flax/training/step.py). The runs are session-scoped fixtures,
built once per worker (11 s) even if the module's tests reach a worker between other modules' tests, as they did
while pytest 9.2 dropped xdist groups (parity/test_scheduling.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models_flax
from converters import flax_state, load_flax
from converters.checkpoint import load_safetensors, read_safetensors_index
from converters.lora import kyutai_to_flax, sites
from models_flax.training.checkpoint import TrainCheckpoints
from models_flax.training.lora import lora_state
from moshi_spec import LMConfig
from train import cli
from train import data as train_data
from train.export import ADAPTERS_NAME, KYUTAI_CONFIG_NAME
from train.rundir import METRIC_KEYS

# One xdist worker runs this module (pyproject's --dist loadfile): its runs (session fixtures) happen once.

CFG = LMConfig.tiny()
TOTAL = 6
TIMINGS = ("tokens_per_s", "elapsed")  # the metrics that measure the machine, not the run
RUN = {
    "model": {"preset": "tiny"},
    "train": {
        "mode": "lora",
        "lora": {"rank": 4},
        "optim": {"lr": 1e-2, "pct_start": 0.3},  # a large lr: 6 steps move the adapters visibly
        "loss": {"first_codebook_weight_multiplier": 100.0, "text_padding_weight": 0.5, "text_padding_ids": [0, 3]},
        "total_steps": TOTAL,
        "num_microbatches": 2,
    },
    "batch_size": 2,
    "checkpoint_every": 2,
    "keep": 3,
    "seed": 0,
    "save": "both",
}


def _write_config(path: Path, **changes) -> Path:
    path.write_text(json.dumps(RUN | changes))
    return path


def _main(*argv: str) -> int:
    return cli.main([*map(str, argv), "--no-progress"])


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The data, a 6-step run ("full") and the same run stopped after 3 steps and resumed ("split")."""
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    synth = ["synth", str(data), "--preset", "tiny", "--files", "2", "--rows", "6", "--frames", "12"]
    assert train_data.main(synth) == 0
    paths = {"root": root, "data": data}
    for name in ("full", "split"):
        paths[f"{name}.json"] = _write_config(root / f"{name}.json", data={"path": str(data)}, out=str(root / name))
        paths[name] = root / name
    assert _main(paths["full.json"]) == 0
    assert _main(paths["split.json"], "--steps", 3) == 0
    assert not (paths["split"] / "final").exists()  # stopped, not finished
    paths["split@3"] = root / "split@3"
    shutil.copytree(paths["split"] / "checkpoints", paths["split@3"])  # the checkpoints as the interruption left them
    shutil.copy(paths["split"] / "metrics.jsonl", root / "split@3.jsonl")
    assert _main(paths["split.json"], "--resume") == 0
    return paths


@pytest.fixture(scope="session")
def trainer(runs):
    """The runs' Trainer (the same model, seed and config as the CLI builds), its data and abstract state."""
    prepared = cli.prepare(runs["full.json"])
    trainer = cli.make_trainer(prepared.config, prepared.lm)
    return trainer, prepared, trainer.abstract_state()


def _restore(trainer, directory: Path, step: int | None = None):
    trainer, _, abstract = trainer
    with TrainCheckpoints(directory, keep=RUN["keep"]) as checkpoints:
        return checkpoints.restore(abstract, step)


@pytest.fixture(scope="session")
def final_state(runs, trainer):
    """The uninterrupted run's final train state (never donated: nothing steps it)."""
    return _restore(trainer, runs["full"] / "checkpoints")


def _fresh(trainer):
    """A fresh state, committed to the device as the CLI commits it (so the programs compiled for it are reused)."""
    return jax.device_put(trainer.init(), jax.devices()[0])


def _leaves_equal(a, b) -> list[bool]:
    return [np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                                         strict=True)]  # fmt: skip


def _metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, TOTAL + 1)) and all(tuple(m) == METRIC_KEYS for m in lines)
    return [{k: v for k, v in m.items() if k not in TIMINGS} for m in lines]


def test_resume_is_bit_exact(runs, trainer, final_state):
    full, split = final_state, _restore(trainer, runs["split"] / "checkpoints")
    assert int(full.step) == int(split.step) == TOTAL
    assert jax.tree.structure(full) == jax.tree.structure(split)
    assert all(_leaves_equal(full.master, split.master)), "master parameters differ after resuming"
    assert all(_leaves_equal(full.opt_state, split.opt_state)), "optimizer state differs after resuming"
    assert _metrics(runs["split"]) == _metrics(runs["full"])
    assert TrainCheckpoints(runs["full"] / "checkpoints", keep=3).steps() == [2, 4, 6]  # every 2 steps, the last 3
    assert TrainCheckpoints(runs["split"] / "checkpoints", keep=3).steps() == [3, 4, 6]  # + the stop at step 3
    assert TrainCheckpoints(runs["split@3"], keep=3).steps() == [2, 3]
    # The resumed invocation ran steps 4..6 only: the lines of steps 1..3, timings included, are the first one's.
    first = (runs["root"] / "split@3.jsonl").read_text().splitlines()
    assert len(first) == 3 and (runs["split"] / "metrics.jsonl").read_text().splitlines()[:3] == first

    # Negative control: steps 4..6 from the step-3 checkpoint with a fresh optimizer state are not bit-equal.
    state = _restore(trainer, runs["split@3"], 3)
    trainer, prepared, _ = trainer
    state = state.replace(opt_state=_fresh(trainer).opt_state)
    cfg, control = prepared.config, []
    for s in range(3, TOTAL):
        codes = prepared.data.batch(s, batch_size=cfg.batch_size, num_microbatches=2, seed=cfg.seed)
        state, metrics = trainer.step(state, jnp.asarray(codes))
        control.append({k: float(v) for k, v in metrics.items()})
    assert not all(_leaves_equal(full.master, state.master))
    assert not all(_leaves_equal(full.opt_state, state.opt_state))
    assert [m["loss"] for m in control] != [m["loss"] for m in _metrics(runs["full"])[3:]]


_forward = nnx.jit(lambda model, codes: model(codes))


def _logits(model, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = _forward(model, codes)
    return np.asarray(out.text_logits), np.asarray(out.audio_logits)


def test_merged_checkpoint_computes_the_trained_model(runs, trainer, final_state):
    trainer, prepared, _ = trainer
    loaded = models_flax.from_checkpoint(runs["full"] / "final")
    record = json.loads((runs["full"] / "final" / "moshi_parity_config.json").read_text())
    assert record["format"] == "flax" and record["trained"]["step"] == TOTAL
    trained = cli.merged_weights(trainer.model(final_state))  # merge_lora of the trained model
    untrained = cli.merged_weights(trainer.model(_fresh(trainer)))
    stored = flax_state(loaded)
    assert set(stored) == set(trained) and all(np.array_equal(stored[k], trained[k]) for k in stored)
    assert not all(np.array_equal(stored[k], untrained[k]) for k in stored)  # negative control
    # The logits: the loaded model, and the same graph holding the trained (untrained) merged weights.
    codes = prepared.data.batch(0, batch_size=2, num_microbatches=1, seed=1)[0]
    got = _logits(loaded, codes)
    for weights, equal in ((trained, True), (untrained, False)):  # the untrained model: the negative control
        model = nnx.clone(loaded)
        load_flax(model, weights)
        want = _logits(model, codes)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype == np.float32 and np.isfinite(g).any()
            assert np.array_equal(g, w, equal_nan=True) == equal


def test_adapters_file_is_kyutai_layout(runs, trainer, final_state):
    trainer, _, _ = trainer
    final = runs["full"] / "final"
    state = load_safetensors(read_safetensors_index(final / ADAPTERS_NAME)[0])
    assert set(state) == {f"{m}.lora_{f}.weight" for site in sites(CFG) for m in site.kyutai for f in "AB"}
    kwargs = json.loads((final / KYUTAI_CONFIG_NAME).read_text())
    assert (kwargs["lora"], kwargs["lora_rank"], kwargs["lora_scaling"]) == (True, 4, 2.0)
    trained = lora_state(trainer.model(final_state))
    ours = kyutai_to_flax(state, CFG)
    assert set(ours) == set(trained)
    assert all(np.array_equal(ours[k], np.asarray(trained[k])) for k in trained)
    # Negative control: the step-0 adapters (B zero) are not the file's.
    initial = lora_state(trainer.model(trainer.init()))
    assert not all(np.array_equal(ours[k], np.asarray(initial[k])) for k in initial)


def test_batches_depend_on_seed_and_step_only(runs):
    a, b = train_data.load(runs["data"], CFG), train_data.load(runs["data"], CFG)
    kw = dict(batch_size=2, num_microbatches=2)
    assert a.batch(5, seed=0, **kw).shape == (2, 2, 1 + CFG.n_q, 12)
    a.batch(1, seed=0, **kw)  # reading other steps first changes nothing
    assert np.array_equal(a.batch(5, seed=0, **kw), b.batch(5, seed=0, **kw))
    assert not np.array_equal(a.batch(5, seed=0, **kw), a.batch(5, seed=1, **kw))  # negative controls
    assert not np.array_equal(a.batch(5, seed=0, **kw), a.batch(4, seed=0, **kw))
    # every row once per epoch (12 rows, 4 per step: steps 0..2)
    rows = np.concatenate([a.batch_rows(s, seed=0, **kw) for s in range(3)])
    assert sorted(rows) == list(range(12))
    # the synthetic data exercises the weighted loss: zero tokens, kyutai's padding 3 and the end padding 0
    codes = np.concatenate(a.arrays)
    assert (codes[:, 1:] == -1).any() and (codes[:, 0] == 3).any() and (codes[:, 0] == 0).any()
    # the in-memory synthetic data of a config is the one-file `synth` output
    memory = train_data.synthesize(CFG, rows=6, frames=12, seed=[0, 0])
    assert np.array_equal(memory, a.arrays[0]) and not np.array_equal(memory, a.arrays[1])


def _refused(capsys, *argv) -> str:
    capsys.readouterr()
    assert _main(*argv) == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batchsize": 2}, "unknown key(s) ['batchsize'] in the run config"),
        ({"mesh": {"dp": 1, "fsdpp": 1}}, "unknown key(s) ['fsdpp'] in mesh"),
        ({"save": "weights"}, "unknown save 'weights'"),
        ({"mesh": {"dp": 0}}, "mesh.dp must be >= 1, got 0"),
        ({"batch_size": "2"}, "batch_size must be an int, got '2'"),
        ({"model": {"preset": "huge"}}, "unknown model.preset 'huge'"),
        ({"model": {"preset": "tiny", "checkpoint": "x"}}, "model must hold exactly one of ['preset', 'checkpoint']"),
        ({"train": {**RUN["train"], "optim": {"lr": -1.0}}}, "train: OptimConfig: lr must be > 0, got -1.0"),
        ({"train": {**RUN["train"], "step": 3}}, "train: unknown setting(s) ['step']"),
        ({"train": {**RUN["train"], "mode": "full"}}, "save 'both' needs train.mode 'lora'"),
    ],
)
def test_bad_config_is_refused(runs, tmp_path, capsys, changes, message):
    good = {"data": {"path": str(runs["data"])}, "out": str(tmp_path / "run")}
    cli.prepare(_write_config(tmp_path / "good.json", **good))  # negative control: the valid twin is accepted
    err = _refused(capsys, _write_config(tmp_path / "bad.json", **good | changes))
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_bad_data_is_refused(runs, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(runs["data"], data)
    config = _write_config(tmp_path / "run.json", data={"path": str(data)}, out=str(tmp_path / "run"))
    cli.prepare(config)  # negative control: the intact copy is accepted
    codes = np.load(data / "00001.npy")
    codes[4, 3, 7] = CFG.card
    np.save(data / "00001.npy", codes)
    err = _refused(capsys, config)
    assert f"00001.npy: audio code {CFG.card} at row 4, stream 3, frame 7 is outside [0, {CFG.card})" in err, err
    codes[4, 3, 7], codes[2, 0, 1] = -1, -1  # a zero token is valid audio, never a text id
    np.save(data / "00001.npy", codes)
    assert "00001.npy: text id -1 at row 2, stream 0, frame 1 is outside [0, 48)" in _refused(capsys, config)


def test_resume_checks_the_run_dir(runs, tmp_path, capsys):
    split = json.loads(runs["split.json"].read_text())
    changed = _write_config(tmp_path / "changed.json", **split | {"train": split["train"] | {"optim": {"lr": 0.02}}})
    err = _refused(capsys, changed, "--resume")
    assert "differs from the config of the run" in err and "train.optim.lr: 0.01 -> 0.02" in err, err
    assert "train.optim.pct_start: 0.3 -> 0.05" in err, err  # every differing key, defaults included
    err = _refused(capsys, runs["split.json"])  # an existing run without --resume
    assert "holds a run (pass --resume to continue it)" in err, err
    err = _refused(capsys, _write_config(tmp_path / "new.json", **split | {"out": str(tmp_path / "new")}), "--resume")
    assert "holds no run" in err, err
    # Negative control: the run's own config passes the same check.
    prepared = cli.prepare(runs["split.json"])
    prepared.run_dir.check(prepared.config, prepared.data.info(), resume=True, config_path="split.json")


def test_a_failed_step_stops_the_run():
    metrics = {"loss": float("nan"), "grad_norm": 1.0, "out_of_range": 0.0}
    with pytest.raises(cli.TrainingError, match=r"step 7: loss nan; the run stopped \(its latest checkpoint is step 6"):
        cli._check_step(7, metrics, 6)
    with pytest.raises(cli.TrainingError, match="step 2: 3 label"):
        cli._check_step(2, {"loss": 1.0, "grad_norm": 1.0, "out_of_range": 3.0}, None)
    cli._check_step(7, {"loss": 1.0, "grad_norm": 1.0, "out_of_range": 0.0}, 6)  # negative control
