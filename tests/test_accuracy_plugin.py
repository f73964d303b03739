"""The pytest plugin (evalharness.pytest_plugin, entry point pytest11), through inner pytest sessions (pytester).

Collection-only cases need no engine. One case runs a real suite on CPU with the tiny seeded Llama: `off` passes,
`varlen` skips (no CUDA: no graph is captured) and `on` with an injected `perturb` fault fails with STALE_GRAPH and
its evidence, and --junitxml carries every item's verdict as properties.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
# Imported here, before pytester snapshots sys.modules: modules an inner session imports are dropped afterwards, and
# numpy and datasets (its pyarrow extension types) cannot be loaded twice in one process.
import datasets  # noqa: F401
import lm_eval.tasks  # noqa: F401
import torch  # noqa: F401

pytest_plugins = ["pytester"]


def suite_toml(model: str, data: str, **extra) -> str:
    table = {"name": "tiny", "model": model, "data": data, "limit": 2, "fewshot": 0, "max_new_tokens": 12,
             "max_bt": 128, "dtype": "fp32", **extra}
    lines = ["[[suite]]"]
    for key, value in table.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
    return "\n".join(lines).replace("'", '"') + "\n"


OPT_IN = "[tool.evalharness]\n"


@pytest.fixture
def pytester(pytester):
    """An inner project that opts in to the plugin, as this repository does ([tool.evalharness] in pyproject)."""
    pytester.makepyprojecttoml(OPT_IN)
    return pytester


def junit_cases(path: Path) -> dict[str, dict]:
    """Per testcase: status, message, and its properties, which xunit2 keeps at testsuite level as NODEID::KEY."""
    root = ET.parse(path).getroot()
    suite_props: dict[str, dict] = {}
    for prop in root.iter("property"):
        nodeid, sep, key = prop.get("name").rpartition("::")
        if sep:
            suite_props.setdefault(nodeid.rpartition("::")[2], {})[key] = prop.get("value")
    out = {}
    for case in root.iter("testcase"):
        assert case.find("properties") is None, "xunit2 testcases carry no properties"
        props = suite_props.get(case.get("name"), {})
        status = "failed" if case.find("failure") is not None else (
            "error" if case.find("error") is not None else ("skipped" if case.find("skipped") is not None else "passed"))
        node = case.find("failure") if status == "failed" else case.find("skipped")
        out[case.get("name")] = {"props": props, "status": status,
                                 "message": (node.get("message", "") + (node.text or "")) if node is not None else ""}
    return out


def test_plain_run_collects_no_suite(pytester):
    pytester.makefile(".toml", accuracy=suite_toml("/nonexistent", "/nonexistent.jsonl"))
    pytester.makepyfile(test_plain="def test_ok():\n    pass\n")
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*accuracy.toml*")


def test_items_per_cell_and_gpu_suite_skips_with_reason(pytester, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pytester.makefile(".toml", accuracy=suite_toml("/nonexistent", "/nonexistent.jsonl", gpu=True,
                                                   graphs="off,on", max_bt="128,256"))
    result = pytester.runpytest("-m", "accuracy", "--collect-only", "-q")
    ids = [line for line in result.stdout.lines if "::" in line]
    assert ids == [f"accuracy.toml::tiny::{m}[max_bt={bt}]" for bt in (128, 256) for m in ("off", "on")]

    result = pytester.runpytest("-m", "accuracy and gpu", "-rs", "--junitxml=junit.xml", "-W", "error")
    result.assert_outcomes(skipped=4)
    # the skip points at the item (the suite file), not at the plugin's source
    result.stdout.fnmatch_lines(["SKIPPED * accuracy.toml*suite 'tiny' needs a CUDA GPU; torch.cuda.is_available() is "
                                 "False*"])
    result.stdout.no_fnmatch_line("*pytest_plugin.py*")
    cases = junit_cases(pytester.path / "junit.xml")
    assert set(cases) == {f"{m}[max_bt={bt}]" for bt in (128, 256) for m in ("off", "on")}
    for case in cases.values():
        assert case["status"] == "skipped" and case["props"] == {"suite": "tiny", "verdict": "NOT_RUN"}
    # a skip marker added by someone else's hook (as this repository's conftest does for `gpu`) reports cleanly
    pytester.makeconftest("import pytest\n\ndef pytest_collection_modifyitems(items):\n    for item in items:\n"
                          "        item.add_marker(pytest.mark.skip(reason='marked skip'))\n")
    result = pytester.runpytest("-m", "accuracy", "-rs")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*accuracy.toml*marked skip*"])
    # `not gpu` deselects the whole suite
    pytester.runpytest("-m", "accuracy and not gpu").assert_outcomes()


def test_inactive_where_the_project_does_not_opt_in(pytester):
    """Another project in the same environment: no markers registered, no suite file parsed even with -m accuracy;
    --accuracy=FILE opts in explicitly."""
    (pytester.path / "pyproject.toml").write_text("[tool.other]\nx = 1\n")
    pytester.makefile(".toml", accuracy="[[suite]\nthis file is not TOML\n")
    pytester.makepyfile(test_plain="def test_ok():\n    pass\n")
    result = pytester.runpytest("-m", "accuracy or not accuracy")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*cannot read suite file*")
    markers = pytester.runpytest("--markers").stdout.str()
    assert "evalharness accuracy measurement" not in markers
    result = pytester.runpytest("--accuracy=accuracy.toml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot read suite file*"])


def test_pyproject_table_and_attn_axis(pytester):
    pytester.makepyprojecttoml("[tool.evalharness.accuracy]\nmodel = \"m\"\ngraphs = [\"off\", \"varlen\"]\n"
                               "max_bt = \"128:256:128\"\nattn = [\"sdpa\", \"eager\"]\n")
    result = pytester.runpytest("--accuracy", "--collect-only", "-q")
    ids = [line for line in result.stdout.lines if "::" in line]
    assert len(ids) == 8 and ids[0] == "pyproject.toml::accuracy::off[max_bt=128,attn=sdpa]"
    assert "pyproject.toml::accuracy::varlen[max_bt=256,attn=eager]" in ids


@pytest.mark.parametrize("body, needle", [
    ('[[suite]]\nmodel = "m"\nlimt = 3\n', "unknown key(s) limt"),
    ('[[suite]]\nmodel = "m"\ngraphs = "off,bogus"\n', "unknown mode 'bogus'"),
    ('[[suite]]\nname = "a"\n[[suite]]\nname = "a"\n', "suite name 'a' is used twice"),
    ("[[suite]\n", "cannot read suite file"),
])
def test_bad_suite_file_is_one_collection_error(pytester, body, needle):
    pytester.makefile(".toml", accuracy=body)
    result = pytester.runpytest("-m", "accuracy")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{needle}*"])


def test_missing_data_file_skips_with_reason(pytester):
    pytester.makefile(".toml", accuracy=suite_toml("/nonexistent", "./missing/test.jsonl", graphs="off"))
    result = pytester.runpytest("-m", "accuracy", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*data file */missing/test.jsonl not found*"])


@pytest.mark.slow
def test_cpu_suite_pass_skip_fail_and_junit_verdicts(pytester, tiny_llama, gsm8k_test):
    pytester.makefile(".toml", accuracy=suite_toml(str(tiny_llama), str(gsm8k_test), graphs="off,on,varlen",
                                                   inject=["on=perturb"]))
    out = pytester.path / "reports"
    result = pytester.runpytest("-m", "accuracy", "-rs", "--junitxml=junit.xml", f"--accuracy-out={out}")
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*STALE_GRAPH: mode on at max_bt=128 (attn=sdpa):*samples differ from the padded-eager"
                                 " twin*", "*twin mismatches: */2 samples differ*",
                                 "*first mismatching sample * at token *: graph run token*"])
    result.stdout.fnmatch_lines(["*SKIPPED: CUDA is not available*"])
    cases = junit_cases(pytester.path / "junit.xml")
    assert {n: c["status"] for n, c in cases.items()} == {
        "off[max_bt=128]": "passed", "on[max_bt=128]": "failed", "varlen[max_bt=128]": "skipped"}
    on = cases["on[max_bt=128]"]
    assert on["props"]["verdict"] == "STALE_GRAPH" and int(on["props"]["twin_mismatches"]) >= 1
    assert on["props"]["first_mismatch"].startswith("sample ") and "p_value" in on["props"]
    assert "STALE_GRAPH" in on["message"]
    assert cases["off[max_bt=128]"]["props"]["verdict"] == "PASS"
    assert cases["varlen[max_bt=128]"]["props"]["verdict"] == "SKIPPED"
    assert all(c["props"]["suite"] == "tiny" and c["props"]["n"] == "2" for c in cases.values())
    # one evaluation for the suite, its reports kept where asked
    assert (out / "tiny" / "report.html").is_file() and (out / "tiny" / "summary.json").is_file()
    result.stdout.fnmatch_lines(["*evalharness accuracy reports*", f"*{out / 'tiny' / 'report.html'}*"])
