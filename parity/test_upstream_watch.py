"""The upstream drift watch (`python -m reports upstream`, reports/upstream.py) on synthetic records and junit XML."""

from __future__ import annotations

import pytest

from parity.harness.record_cases import rec, write
from reports import upstream
from reports.__main__ import main

PINS = {"torch": "==2.13.0", "transformers": "==5.24.*", "jax": "==0.10.2", "flax": "==0.12.8", "moshi": "==0.2.13"}
LM = "parity/test_lm.py::test_expected_divergence_hf_ignores_context_window"
ROPE = "parity/test_rope.py::test_expected_divergence_hf_frequencies"
LOSS = "parity/test_loss.py::test_expected_divergence_hf_depth_loss"
TRAIN = "parity/test_training.py::test_control_accumulation_sums"
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="3" skipped="1" tests="6">
<testcase classname="parity.test_lm" name="test_expected_divergence_hf_ignores_context_window">
  <failure message="[XPASS(strict)] HF's temporal forward has no context window">[XPASS(strict)] HF's ...</failure>
</testcase>
<testcase classname="parity.test_mimi" name="test_bf16_codebooks">
  <skipped type="pytest.xfail" message="kyutai's codebooks use torch.cdist" />
</testcase>
<testcase classname="parity.test_attention" name="test_to_flax[hf-&gt;flax]">
  <failure message="ParityError: attention hf-&gt;flax float32: max_abs 3.1e-02 &gt; atol 1e-05">tb</failure>
</testcase>
<testcase classname="parity.test_imports" name="test_import_moshi">
  <error message="failed on setup with &quot;ImportError: cannot import name 'LMGen'&quot;">tb</error>
</testcase>
<testcase classname="parity.test_config.TestPresets" name="test_7b[moshi_7b]">
  <failure message="AssertionError: 7687729152 != 7687729153">tb</failure>
</testcase>
<testcase classname="parity.test_rope" name="test_to_flax[ref-&gt;flax]" />
<testcase classname="parity.test_training" name="test_control_accumulation_sums" />
<testcase classname="" name="parity.test_history"><error message="collection failure">SyntaxError</error></testcase>
</testsuite></testsuites>
"""


def _versions(r, **v):
    r["versions"] = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "moshi": "0.2.13", "jax": "0.10.2", **v}
    return r


def _run():
    """A run against newer releases: one divergence fixed (all its comparisons pass), one still divergent after a
    passing hypothesis example, a failing comparison, a failing negative control and passes."""
    return [
        _versions(r, torch="2.15.0+cpu", transformers="5.30.1")
        for r in (
            rec("rmsnorm"),
            rec("text_logits", pair=("kyutai", "hf"), node_id=LM, expected_divergence="HF ignores sliding_window"),
            rec("rope", pair=("hf", "ref"), node_id=ROPE, expected_divergence="hf inv_freq rounding"),
            rec(
                "rope",
                pair=("hf", "ref"),
                node_id=ROPE,
                verdict="expected_divergence",
                expected_divergence="hf inv_freq rounding",
                max_abs=2e-4,
            ),
            rec("loss", node_id=LOSS, verdict="expected_divergence", expected_divergence="HF depth loss", max_abs=0.03),
            rec("attention", node_id="parity/test_attention.py::test_to_flax[hf->flax]", verdict="fail", max_abs=3e-2),
            rec("rmsnorm", control="eps_1e-5", verdict="fail", max_abs=1e-2),
            # a control's first check, recorded without the control's name: its test passed, so it expected the failure
            rec("train_grad", pair=("kyutai", "flax"), node_id=TRAIN, verdict="fail", max_abs=2.37),
        )
    ]


def test_lists_fixed_divergences_new_failures_and_versions(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    cases = upstream.read_junit(tmp_path / "junit.xml")
    w = upstream.watch(_run(), cases, pinned=PINS)
    assert [(f["node_id"], f["reason"], f["pairs"]) for f in w.fixed] == [
        (LM, "HF ignores sliding_window", ["kyutai->hf"])
    ]
    assert [c.node_id for c in w.xpassed] == [LM]
    assert [(f["node_id"], f["component"], f["pair"], f["dtype"]) for f in w.failing] == [
        ("parity/test_attention.py::test_to_flax[hf->flax]", "attention", "hf->flax", "float32")
    ]
    assert [(c.node_id, c.kind) for c in w.failing_tests] == [
        ("parity/test_attention.py::test_to_flax[hf->flax]", "failure"),
        ("parity/test_imports.py::test_import_moshi", "error"),
        ("parity/test_config.py::TestPresets::test_7b[moshi_7b]", "failure"),
        ("parity/test_history.py", "error"),
    ]
    assert [f["node_id"] for f in w.expected_failing] == [TRAIN]
    assert w.changed
    versions = {v["package"]: (v["run"], v["status"]) for v in w.versions}
    assert versions["torch"] == (["2.15.0+cpu"], "newer")
    assert versions["transformers"] == (["5.30.1"], "newer")
    assert versions["moshi"] == (["0.2.13"], "at pin")
    assert versions["flax"] == ([None], "not installed")

    text = upstream.markdown(w, records_path="r.jsonl", junit_path="j.xml")
    fixed, failing, table = text.split("### ")[1:]
    assert f"`{LM}` | HF ignores sliding_window | text_logits | kyutai->hf | float32 | 1 |" in fixed
    assert "[XPASS(strict)] HF's temporal forward has no context window" in fixed
    assert ROPE not in fixed and LOSS not in fixed  # still divergent: not fixed
    assert "**changed**: 1 test(s) with a documented divergence now pass, 4 test(s) now fail." in text
    assert (
        "`parity/test_attention.py::test_to_flax[hf->flax]` | attention | hf->flax | float32 | 1 | - | 0.03 |"
        in failing
    )
    assert "ImportError: cannot import name 'LMGen'" in failing
    assert "eps_1e-5" not in text and "rmsnorm" not in failing  # the failing control is no news
    assert "Not news: 1 failing comparison(s) in 1 test(s) that passed or xfailed" in failing
    assert f"| `{TRAIN}`" not in failing
    assert "| torch | ==2.13.0 | 2.15.0+cpu | newer |" in table


def test_without_junit_every_failing_comparison_is_listed():
    w = upstream.watch(_run(), [], pinned=PINS)
    assert {f["node_id"] for f in w.failing} == {TRAIN, "parity/test_attention.py::test_to_flax[hf->flax]"}
    assert not w.expected_failing


def test_negative_control_and_standing_divergence_are_not_news():
    """A control that fails and an expected divergence that still fails (one passing example besides) list nothing."""
    run = [r for r in _run() if r["verdict"] != "fail" or r["control"]]
    assert any(r["control"] and r["verdict"] == "fail" for r in run)
    run = [r for r in run if r["node_id"] != LM]
    w = upstream.watch(run, [], pinned=PINS)
    assert not (w.fixed or w.failing or w.crashes or w.failing_tests or w.empty)
    assert not w.changed
    assert "**nothing changed**" in upstream.markdown(w, records_path="r.jsonl")


def test_command_exit_status_and_output(tmp_path, capsys):
    records = write(tmp_path / "records.jsonl", _run())
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    out = tmp_path / "upstream.md"
    assert main(["upstream", str(records), "--junit", str(junit), "-o", str(out)]) == 1
    assert "changed; wrote" in capsys.readouterr().out
    assert "Expected divergences that now pass" in out.read_text()

    quiet = write(tmp_path / "quiet.jsonl", [rec("rmsnorm"), rec("rmsnorm", control="c", verdict="fail")])
    assert main(["upstream", str(quiet)]) == 0
    assert "**nothing changed**" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "missing.jsonl: No such file or directory"),
        ("config.jsonl", '{"a": 1}\n', "no parity record"),
    ],
)
def test_records_input_errors(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    assert main(["upstream", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m reports upstream: error: ") and message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "No such file or directory"), ("<testsuites", "not a junit XML file"), ("<html/>", "<html>")],
)
def test_junit_input_errors(tmp_path, capsys, content, message):
    records = write(tmp_path / "records.jsonl", [rec("rmsnorm")])
    junit = tmp_path / "junit.xml"
    if content is not None:
        junit.write_text(content)
    assert main(["upstream", str(records), "--junit", str(junit)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m reports upstream: error: ") and message in err


def test_empty_run_is_a_change():
    assert upstream.watch([], [], pinned=PINS).changed


def test_pins_of_this_checkout():
    pinned = upstream.pins()
    assert pinned["torch"].startswith("==") and pinned["moshi"].startswith("==") and pinned["jax"].startswith("==")
    assert upstream.against_pin("5.24.3", "==5.24.*") == "at pin"
    assert upstream.against_pin("5.25.0", "==5.24.*") == "newer"
    assert upstream.against_pin("2.13.0+cpu", "==2.13.0") == "at pin"
    assert upstream.against_pin("0.10.1", "==0.10.2") == "older"
    assert upstream.against_pin("2.13", "==2.13.0") == "at pin"
