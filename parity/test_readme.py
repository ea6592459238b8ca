"""Every code block of README.md runs, so that none can rot: blocks are read from the README itself and run in a fresh
directory, with the substitutions listed here (the tiny preset where the README shows 7B, small run lengths for the
benchmarks, a records file in the temporary directory). A block this file does not know fails the test: a new block
must say here how it runs.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from moshi_spec import LMConfig, MimiConfig
from parity.harness.adapters import kyutai
from parity.harness.implementations import build

ROOT = Path(__file__).resolve().parents[1]
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"  # kyutai's released Mimi's name, for a tiny one here
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of README.md, in order."""
    return FENCE.findall((ROOT / "README.md").read_text())


LM_BLOCK = "python -m converters --src kyutai --dst flax --preset moshi_7b"
MIMI_BLOCK = "python -m converters --src kyutai --dst flax --preset mimi "
# Each block, by its first line, and how it runs here: substitutions applied to its text, the block that must run
# before it in the same directory, or why it is not run.
RUNS: dict[str, dict] = {
    "python3 -m venv .venv": {
        "why": "the suite itself: CI runs it verbatim (.ci/run check-readme keeps 3 copies equal)"
    },
    ". .venv/bin/activate && pytest parity": {
        "subs": [
            (". .venv/bin/activate && ", ""),
            (
                "pytest parity -n auto",
                "python -m pytest {root}/parity/test_rmsnorm.py -k kyutai_to_hf -q -p no:cacheprovider",
            ),
            ("reports/out/", "out/"),
        ],
    },
    LM_BLOCK: {"subs": [("--preset moshi_7b", "--preset tiny")]},
    "NIGHTLY_OUT=reports/out/nightly": {
        "why": "the nightly job's command: parity/test_nightly_script.py runs it end to end on a one-test selection"
    },
    "pytest parity -m full_size": {"why": "7B needs an accelerator; the suite runs the same tests at the tiny preset"},
    MIMI_BLOCK: {"subs": [("--preset mimi ", "--preset mimi_tiny ")]},
    "import models_flax.mimi": {"after": MIMI_BLOCK},
    "python bench/attention.py": {  # the device checks: parsed, not run
        "subs": [
            ("bash bench/gpu_check.sh", "bash -n bench/gpu_check.sh"),
            ("bash bench/tpu_check.sh", "bash -n bench/tpu_check.sh"),
        ]
    },
    "NO_TORCH_COMPILE=1 python bench/step.py": {
        "subs": [("python bench/step.py  ", "python bench/step.py --preset tiny --frames 2 --warmup 0  ")],
        "argv_only": "# a GPU",  # lines ending so are a GPU's: their arguments are parsed by the script, not run
    },
    "import jax": {"after": LM_BLOCK},
    "python bench/mimi.py": {
        "subs": [("python bench/mimi.py  ", "python bench/mimi.py --preset tiny --seconds 0.2 --repeats 1 --steps 2  ")]
    },
    "python -m train.data synth": {},
    # a synthetic records file stands in for the suite's (the pytest block writes the real one)
    "python -m reports history add": {
        "subs": [
            ("reports/out/", "out/"),
            (
                "python -m reports history add",
                "mkdir -p out && python -c 'from pathlib import Path; from parity.harness.record_cases import fixture, "
                'write; write(Path("out/records.jsonl"), fixture())\' && python -m reports history add',
            ),
        ]
    },
    # one fast mutant (its test is a numpy/torch bit-pattern check) instead of a sample of 8, each minutes of tests
    "python -m parity.harness.mutation": {
        "subs": [("--sample 8", "--only conv_bf16_through_float32 --no-kill-check")],
    },
}
PYTHON = re.compile(r"(?<![\w/.-])python(?= )")  # `python` where a command starts: this interpreter


def _spec(first: str) -> dict:
    """The RUNS entry of the block whose first line is `first`: the longest key it starts with."""
    matches = sorted((start for start in RUNS if first.startswith(start)), key=len)
    assert matches, f"README block starting {first!r} has no entry in test_readme.RUNS: say how it runs"
    return RUNS[matches[-1]]


def _prepared(text: str) -> str:
    for old, new in _spec(text.splitlines()[0]).get("subs", []):
        assert old in text, f"substitution {old!r} no longer matches a README block: update test_readme.RUNS"
        text = text.replace(old, new.format(root=ROOT))
    return text


def _split_gpu_lines(text: str, marker: str | None) -> str:
    """Drops the lines for a GPU from a block, after checking that their script parses their arguments."""
    if marker is None:
        return text
    kept = []
    for line in text.splitlines():
        if not line.rstrip().endswith(marker):
            kept.append(line)
            continue
        script, *argv = shlex.split(line.split("#")[0])[1:]
        module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
        module.parser().parse_args(argv)  # SystemExit (a failed test) on an argument the script does not take
    return "\n".join(kept)


def _run(lang: str, text: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_TORCH_COMPILE": "1"}
    if lang == "python":
        argv = [sys.executable, "-c", text]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", PYTHON.sub(sys.executable, text.replace("bench/", f"{ROOT}/bench/"))]
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, (
        f"README block failed (rc {result.returncode}):\n{text}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """What the conversion blocks read: a tiny kyutai LM checkpoint and its kyutai LM kwargs; a tiny kyutai Mimi under
    the released file's name and its get_mimi config."""
    from safetensors.numpy import save_file

    from parity.harness.mimi import kyutai_config

    path = tmp_path_factory.mktemp("readme-inputs")
    models = build("lm", LMConfig.tiny(), "float32", impls=("kyutai",))
    save_file(models.states["kyutai"], str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "lm_kwargs.json").write_text(json.dumps(kyutai.lm_kwargs(LMConfig.tiny())))
    mimi = build("mimi", MimiConfig.tiny(), "float32", impls=("kyutai",))
    save_file(mimi.states["kyutai"], str(path / MIMI_FILE), metadata={"format": "pt"})
    (path / "mimi_config.json").write_text(json.dumps(kyutai_config(MimiConfig.tiny())))
    return path


def test_every_block_is_known():
    assert blocks() and all(lang in ("bash", "python") for lang, _ in blocks())
    for _, text in blocks():
        _prepared(text)


def _prerequisite(text: str) -> bool:
    """Whether a block runs before another one (its "after"): it is run there, not twice."""
    return any(text.startswith(spec.get("after", "\0")) for spec in RUNS.values())


@pytest.mark.parametrize("index", [i for i, (_, text) in enumerate(blocks()) if not _prerequisite(text)])
def test_block_runs(index, inputs, tmp_path):
    """Each block runs (a block another one runs after is run by that one, first, in the same directory)."""
    lang, text = blocks()[index]
    spec = _spec(text.splitlines()[0])
    if "why" in spec:
        pytest.skip(spec["why"])
    for name in ("model.safetensors", "lm_kwargs.json", MIMI_FILE, "mimi_config.json"):
        (tmp_path / name).symlink_to(inputs / name)
    if "after" in spec:
        before = next((lg, t) for lg, t in blocks() if t.startswith(spec["after"]))
        _run(before[0], _prepared(before[1]), tmp_path)
    out = _run(lang, _split_gpu_lines(_prepared(text), spec.get("argv_only")), tmp_path)
    if "pytest" in text:
        assert "parity report:" in out and (tmp_path / "out" / "html" / "report.html").is_file()
