"""The mutation job (parity/harness/mutation): its catalogue applies to today's source, its runner classifies a tiny
twin of the real job correctly, and the report shows the score and every survivor.

The twin plants two mutants in copies of the repository and runs one fast, jax-only test against each: an eps bug in
models_flax/norm.py (must be killed) and a docstring edit (harmless: must survive).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity.harness.mutation.catalogue import CATALOGUE, Mutation, MutationError
from parity.harness.mutation.runner import Job, select, shadows_install
from reports import mutations
from reports.__main__ import main as cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"models_flax", "models_ref", "converters"}


@pytest.mark.parametrize("mutation", CATALOGUE, ids=lambda m: m.id)
def test_catalogue_entry_applies_exactly_once(mutation: Mutation) -> None:
    source = (ROOT / mutation.file).read_text(encoding="utf-8")
    assert mutation.package in PACKAGES and mutation.original != mutation.replacement
    assert mutation.apply(source) != source
    assert mutation.diff(source).startswith(f"--- a/{mutation.file}")
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{mutation.id}: no test file for {test}"


def test_catalogue_ids_are_unique_and_cover_the_three_packages() -> None:
    ids = [m.id for m in CATALOGUE]
    assert len(ids) == len(set(ids))
    assert {m.package for m in CATALOGUE} == PACKAGES


def test_every_listed_test_is_collected() -> None:
    """A renamed test (a new parametrization id) would leave its mutants with nothing to run: each listed node id
    must still be collected (pytest exits 4 on an id it cannot find)."""
    ids = sorted({test for m in CATALOGUE for test in m.tests})
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", *ids],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_a_snippet_that_does_not_occur_once_is_an_error() -> None:
    with pytest.raises(MutationError, match="occurs 2 times"):
        Mutation("twice", "f.py", "x", "y", "eps", (), "").apply("x = x")


def test_sample_is_deterministic_and_spans_the_packages() -> None:
    picked = select(CATALOGUE, sample=6, seed=3)
    assert picked == select(CATALOGUE, sample=6, seed=3) and len({m.id for m in picked}) == 6
    assert {m.package for m in picked} == PACKAGES
    assert select(CATALOGUE, sample=6, seed=4) != picked
    with pytest.raises(ValueError, match="unknown mutation id"):
        select(CATALOGUE, only=["no_such_bug"])


TWIN_TEST = "parity/test_mutation.py::test_flax_rmsnorm_matches_its_formula_where_eps_matters"


def test_flax_rmsnorm_matches_its_formula_where_eps_matters() -> None:
    """The twin's target (a fast check without torch): flax RMSNorm at rms 1e-4, where eps 1e-8 and 1e-5 differ."""
    import jax.numpy as jnp

    from models_flax.norm import RMSNorm

    x = (1e-4 * np.random.default_rng(0).standard_normal((2, 3, 8))).astype(np.float32)
    got = np.asarray(RMSNorm(8, eps=1e-8)(jnp.asarray(x)))
    want = x / np.sqrt(np.mean(np.square(x.astype(np.float64)), axis=-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-5)


TWIN = (
    Mutation(
        "twin_eps",
        "models_flax/norm.py",
        "keepdims=True) + self.eps)",
        "keepdims=True) + 1e-5)",
        "eps",
        (TWIN_TEST,),
        "a hard-coded eps",
    ),
    Mutation(
        "twin_docstring",
        "models_flax/norm.py",
        '"""The norms of kyutai',
        '"""The norms, of kyutai',
        "harmless",
        (TWIN_TEST,),
        "a docstring edit: nothing can notice it",
    ),
)


def test_runner_kills_a_real_bug_and_keeps_a_harmless_edit(tmp_path: Path) -> None:
    job = Job(ROOT, timeout=120, check_kills=False)
    assert shadows_install(job.copy(tmp_path)) == []  # the copies import their own (mutated) files
    results = {r["id"]: r for r in job.run_all(TWIN, jobs=2)}
    killed, kept = results["twin_eps"], results["twin_docstring"]
    assert killed["verdict"] == "killed", killed
    assert killed["failing"] == [TWIN_TEST] and "+ 1e-5)" in killed["diff"]
    assert kept["verdict"] == "survived" and kept["failing"] == [] and kept["reason"] is None, kept
    assert (ROOT / "models_flax/norm.py").read_text().count("+ self.eps)") == 1  # the working tree is untouched
    for r in results.values():
        assert mutations.problems(r) == []


def test_runner_reports_a_snippet_that_is_gone_as_invalid() -> None:
    gone = Mutation("gone", "models_flax/norm.py", "no such text", "x", "eps", (TWIN_TEST,), "")
    result = Job(ROOT).run(gone)
    assert result["verdict"] == "invalid" and "occurs 0 times" in result["reason"]


def _result(id_: str, verdict: str, *, cls: str = "eps", package: str = "models_flax", **kw) -> dict:
    return {
        "id": id_,
        "class": cls,
        "package": package,
        "file": f"{package}/x.py",
        "verdict": verdict,
        "duration_s": 2.0,
        "tests": ["parity/test_x.py::test_y"],
        "failing": ["parity/test_x.py::test_y"] if verdict == "killed" else [],
        "reason": "pytest exit status 2" if verdict == "invalid" else None,
        "diff": f"--- a/{package}/x.py\n+++ b/{package}/x.py\n@@ -1 +1 @@\n-{id_} before\n+{id_} after\n",
        **kw,
    }


def test_report_shows_the_score_per_class_and_package_and_every_survivor(tmp_path: Path, capsys) -> None:
    results = [
        _result("k1", "killed"),
        _result("k2", "killed", cls="mask off by one", package="models_ref"),
        _result("s1", "survived", cls="mask off by one", package="converters"),
        _result("i1", "invalid"),
    ]
    path = tmp_path / "mutations.jsonl"
    path.write_text("".join(mutations.line(r) + "\n" for r in results) + "not json\n")
    assert cli(["render", "--mutations", str(path), "-o", str(tmp_path / "html")]) == 0
    out = capsys.readouterr().out
    assert "mutation score 0.667 (2 killed of 3 measured); 1 survived, 0 timeouts, 1 invalid; 4 mutants" in out
    assert "skipped malformed mutation result: not JSON" in out

    html = (tmp_path / "html" / "report.html").read_text()
    assert 'id="mutations"' in html and "mutation score 0.667" in html
    survivors = html.split('id="survivor-table"')[1].split("</table>")[0]
    assert "s1" in survivors and "+s1 after" in survivors and "k1" not in survivors
    assert "pytest exit status 2" in html  # the invalid mutant, with its reason

    s = json.loads((tmp_path / "html" / "summary.json").read_text())["mutations"]
    assert s["counts"] | {"killed": 2, "survived": 1, "invalid": 1, "total": 4} == s["counts"]
    by_class = {r["class"]: r for r in s["by_class"]}
    assert by_class["eps"]["score"] == 1.0 and by_class["mask off by one"]["score"] == 0.5
    assert {r["package"]: r["score"] for r in s["by_package"]} == {
        "converters": 0.0,
        "models_flax": 1.0,
        "models_ref": 1.0,
    }
    assert [r["id"] for r in s["survivors"]] == ["s1"] and s["malformed_lines"][0]["line"] == 5


def test_render_needs_records_or_mutations(capsys) -> None:
    assert cli(["render", "-o", "unused"]) == 2
    assert "give RECORDS, --mutations FILE or both" in capsys.readouterr().err
