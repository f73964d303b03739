"""Settings: one frozen dataclass of frozen groups, from which the CLI, accuracy suites, --resume and settings.json
are derived."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from evalharness import options, settings, store
from evalharness.cli import build_parser
from evalharness.config import UsageError
from evalharness.settings import MatrixSettings, Settings

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def parse(*argv):
    return settings.from_args(build_parser().parse_args(["gsm8k", *argv]))


def test_cli_defaults_are_the_field_defaults():
    assert parse() == Settings()
    m = Settings().matrix
    assert m.modes == ["off", "on", "varlen", "decode"] and m.max_bts == [384]
    assert m.attn == "sdpa" and m.engines == {"default": None} and Settings().execution.progress


def test_every_option_reaches_its_field():
    s = parse("--graphs", "off,on", "--max-bt", "128:256:128", "--attn", "eager,sdpa", "--async", "on,off",
              "--compile", "0,2", "--decode-fast-path", "off", "--inject", "on=perturb", "--inject", "off=abort",
              "--engine", "a=/x", "--engine", "b=/y", "--devices", "0,1", "--jobs", "3", "--audit-all",
              "--no-progress", "--limit", "4", "--alpha", "0.1", "--prompt", "chat", "--history", "h.jsonl")
    m, run = s.matrix, s.execution
    assert (m.modes, m.max_bts, m.attns, m.attn) == (["off", "on"], [128, 256], ["eager", "sdpa"], "eager")
    assert (m.asyncs, m.compiles, m.fast_paths) == ([True, False], [0, 2], [False])
    assert m.inject == ["on=perturb", "off=abort"] and m.engines == {"a": "/x", "b": "/y"}
    assert (run.devices, run.jobs, m.audit, run.progress) == (["0", "1"], 3, "all", False)
    assert (s.workload.limit, s.verdict.alpha, s.workload.prompt) == (4, 0.1, "chat")
    assert s.output.history == Path("h.jsonl") and parse("--model", "m").model.name == "m"
    assert parse("--audit").matrix.audit == "first"


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().workload = Settings().workload
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().workload.prompt = "chat"


def test_make_and_replace_take_options_by_name():
    s = settings.make(limit=3, out="o", modes=["off"])
    assert (s.workload.limit, s.output.folder, s.matrix.modes) == (3, "o", ["off"])
    assert settings.replace(s, prompt="chat", model="m") == settings.make(limit=3, out="o", modes=["off"],
                                                                          prompt="chat", model="m")
    assert s.workload.prompt == "fewshot" and s.model == Settings().model  # s itself is unchanged
    with pytest.raises(TypeError, match="unknown options bogus"):
        settings.make(bogus=1)
    # each option name is unique across the groups, and every field of every group is an option
    groups = options.groups(Settings)
    assert set(groups) == {"model", "workload", "matrix", "verdict", "execution", "output"}
    assert len(settings.entries()) == 1 + sum(len(dataclasses.fields(g)) for g in groups.values())  # 1: command


def test_help_has_one_section_per_group(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gsm8k", "--help"])
    text = capsys.readouterr().out
    assert "the run matrix:" in text and "how the jobs run:" in text
    matrix = text[text.index("the run matrix:"):text.index("the oracle and the verdict:")]
    assert "--graphs" in matrix and "--inject" in matrix and "--jobs" not in matrix


def test_settings_json_round_trip_through_json_text(tmp_path):
    s = parse("--graphs", "off,on", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--attn",
              "sdpa,eager", "--history", str(tmp_path / "h"))
    saved = store.settings_json(s)
    assert store.settings_from_json(json.loads(json.dumps(saved))) == s
    assert saved["matrix"]["modes"] == ["off", "on"] and saved["output"]["folder"] == str(tmp_path / "o")
    assert store.settings_from_json({}) == Settings()
    with pytest.raises(UsageError, match="unknown fields bogus, matrix.graphs"):
        store.settings_from_json({"bogus": 1, "matrix": {"graphs": "off"}})


def flat(s: Settings) -> dict:
    """The format-1 settings.json of `s`: flat, keyed by option names (as the flat Settings wrote it)."""
    return {name: e.option.to_json(e.get(s)) if e.option else e.get(s) for name, e in settings.entries().items()}


def test_flat_settings_json_of_format_1_is_still_read(tmp_path):
    s = parse("--graphs", "off,on", "--out", str(tmp_path / "o"), "--model", "m", "--history", str(tmp_path / "h"))
    assert store.settings_from_flat_json(json.loads(json.dumps(flat(s)))) == s
    legacy = {**flat(Settings()), "attn": "eager", "attns": None}  # written before attns was required
    assert store.settings_from_flat_json(legacy).matrix.attns == ["eager"]
    with pytest.raises(UsageError, match="unknown fields bogus"):
        store.settings_from_flat_json({"bogus": 1})


COMMITTED = {p: json.loads(p.read_text())["format"] for p in REPORTS.glob("**/settings.json")}


def test_committed_settings_are_of_both_formats():
    assert set(COMMITTED.values()) == {1, 2}


@pytest.mark.parametrize("path", sorted(p for p, f in COMMITTED.items() if f == 2),
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_committed_nested_settings_resume(path, tmp_path):
    """The GPU evidence recorded since the nested Settings (format 2): a resume reads it, and writing it back gives
    the same document, plus the options added since it was written, at their defaults."""
    doc = json.loads(path.read_text())
    (tmp_path / store.SETTINGS_FILE).write_text(path.read_text())
    s = store.load_settings(tmp_path)
    assert s.model.gguf_file == doc["settings"]["model"]["gguf_file"]
    assert s.matrix.modes == doc["settings"]["matrix"]["modes"]
    back, defaults = store.settings_json(s), store.settings_json(Settings())
    added = {(group, k) for group, d in back.items() if isinstance(d, dict) for k in d
             if k not in doc["settings"].get(group, {})}
    assert all(back[g][k] == defaults[g][k] for g, k in added)
    for g, k in added:
        del back[g][k]
    if isinstance(mps := doc["settings"]["execution"].get("mps"), bool):  # before MPS was the default: --mps or not
        assert back["execution"]["mps"] == ("on" if mps else "auto")
        back["execution"]["mps"] = mps
    assert doc["format"] == 2 and back == doc["settings"]


@pytest.mark.parametrize("path", sorted(p for p, f in COMMITTED.items() if f == 1),
                         ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_committed_flat_settings_reach_their_fields(path, tmp_path):
    """The committed GPU evidence's settings.json (format 1, flat): every value lands in its group's field, and a
    resume reads the file (store.load_settings picks the reader by format); the options added since are at their
    defaults."""
    doc = json.loads(path.read_text())
    (tmp_path / store.SETTINGS_FILE).write_text(path.read_text())
    s = store.load_settings(tmp_path)
    back, defaults = flat(s), flat(Settings())
    added = set(back) - set(doc["settings"])
    assert all(back[k] == defaults[k] for k in added)
    assert s == store.settings_from_flat_json(doc["settings"])
    assert {k: v for k, v in back.items() if k not in added} == doc["settings"]
    assert s.model.gguf_file == doc["settings"]["gguf_file"] and s.matrix.modes == doc["settings"]["modes"]
    assert store.settings_from_json(json.loads(json.dumps(store.settings_json(s)))) == s


def test_suite_keys_are_the_flags_without_dashes():
    keys = settings.suite_keys()
    assert keys["graphs"] == "modes" and keys["max_bt"] == "max_bts" and keys["attn"] == "attns"
    assert keys["model"] == "model" and settings.entries()["model"].field == "name"
    assert "jobs" not in keys and "out" not in keys
    s = settings.from_suite({"graphs": ["off", "on"], "max_bt": 128, "attn": ["sdpa", "eager"],
                             "inject": "on=perturb", "limit": 3})
    assert s.matrix == MatrixSettings(modes=["off", "on"], max_bts=[128], attns=["sdpa", "eager"],
                                      inject=["on=perturb"])
    assert s.workload.limit == 3
    assert settings.from_suite({}) == Settings()
    with pytest.raises(UsageError, match="--prompt: invalid choice 'x'"):
        settings.from_suite({"prompt": "x"})
    with pytest.raises(UsageError, match="--limit"):
        settings.from_suite({"limit": 0})


def test_resume_allows_only_options_that_do_not_change_results():
    args = build_parser().parse_args(["gsm8k", "--resume", "d", "--jobs", "2", "--no-progress"])
    assert settings.resume_conflicts(args) == []
    saved = parse("--graphs", "off", "--jobs", "1", "--devices", "0")
    s = settings.resume_overrides(saved, args, out="d")
    assert (s.matrix.modes, s.execution.jobs, s.execution.devices, s.execution.progress, s.output.folder) == (
        ["off"], 2, ["0"], False, "d")
    args = build_parser().parse_args(["gsm8k", "--resume", "d", "--limit", "3", "--audit-all"])
    assert settings.resume_conflicts(args) == ["--audit-all", "--limit"]
    assert set(settings.resume_flags()) == {"--jobs", "--devices", "--mps", "--no-progress", "--history"}


def test_mps_is_auto_unless_asked_and_old_settings_read_as_they_were_meant():
    """--mps insists on MPS, --no-mps turns it off, neither is the default (auto: wherever workers share a GPU); either
    may accompany --resume. A settings.json from before the default was auto has a bool: --mps given or not."""
    assert [parse(*flags).execution.mps for flags in ((), ("--mps",), ("--no-mps",))] == ["auto", "on", "off"]
    args = build_parser().parse_args(["gsm8k", "--resume", "d", "--no-mps"])
    assert settings.resume_conflicts(args) == []
    assert settings.resume_overrides(parse("--mps"), args, out="d").execution.mps == "off"
    for old, now in ((True, "on"), (False, "auto"), ("off", "off")):
        assert store.settings_from_json({"execution": {"mps": old}}).execution.mps == now
    assert store.settings_from_flat_json({"mps": True}).execution.mps == "on"
