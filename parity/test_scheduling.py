"""The suite's own scheduling holds: `--dist loadfile` (pyproject's addopts) runs every module on one xdist worker, so
that its module and session fixtures (training runs, built models, compiled programs, cached results) are built once
and its tests share the worker's compiled programs.

Measured on the 2-core CI machine, back to back: modules that compile many programs of their own gain (test_pallas 54 s
against 63 s with the tests handed out one by one, test_mimi 21 against 28, test_lm 14 against 19), modules that
reused programs another module had compiled on the same worker lose (test_lm_family, test_mimi_hf); over the whole
suite the two are about even. What `loadfile` buys is that no module needs an `xdist_group` mark to build its
fixtures once, and that it does not depend on how pytest and xdist pass a group (pytest 9.2 lost it).

Each test here records the worker it ran on; every later one checks that its module's earlier tests ran on its own
worker. Under a scheduler that spreads a module (`--dist load`, `loadgroup`) the eight are split over the workers
and a later test finds an earlier one's worker differ, or finds it not run yet.
"""

import os
from pathlib import Path

import pytest

RUNS = 8


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this run sees (the parent of the workers' own temporary folders)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("runs under xdist only (pytest -n N)")
    folder = tmp_path_factory.getbasetemp().parent / "scheduling_check"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.mark.parametrize("index", range(RUNS))
def test_a_module_runs_on_one_worker(ledger: Path, index: int) -> None:
    worker = os.environ["PYTEST_XDIST_WORKER"]
    (ledger / str(index)).write_text(worker)
    earlier = {i: (ledger / str(i)).read_text() if (ledger / str(i)).exists() else None for i in range(index)}
    elsewhere = {i: w for i, w in earlier.items() if w != worker}
    assert not elsewhere, (
        f"test {index} ran on {worker}, earlier tests of its module on {elsewhere} (None: not run yet): the scheduler "
        f"spreads a module over the workers (pyproject's addopts should say --dist loadfile)"
    )


def test_run_first_names_existing_modules() -> None:
    """conftest.RUN_FIRST orders modules by file name: a renamed or misspelt one would silently lose its place."""
    import conftest

    here = Path(__file__).parent
    assert not [name for name in conftest.RUN_FIRST if not (here / name).is_file()]
    assert len(set(conftest.RUN_FIRST)) == len(conftest.RUN_FIRST)
