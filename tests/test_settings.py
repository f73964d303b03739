"""Settings: one frozen dataclass from which the CLI, accuracy suites, --resume and settings.json are derived."""

from __future__ import annotations

import dataclasses
import json

import pytest

from evalharness import settings
from evalharness.cli import build_parser
from evalharness.config import UsageError
from evalharness.settings import Settings


def parse(*argv):
    return settings.from_args(build_parser().parse_args(["gsm8k", *argv]))


def test_cli_defaults_are_the_field_defaults():
    assert parse() == Settings()
    assert Settings().modes == ["off", "on", "varlen", "decode"] and Settings().max_bts == [384]
    assert Settings().attn == "sdpa" and Settings().engines == {"default": None} and Settings().progress


def test_every_option_reaches_its_field():
    s = parse("--graphs", "off,on", "--max-bt", "128:256:128", "--attn", "eager,sdpa", "--async", "on,off",
              "--compile", "0,2", "--decode-fast-path", "off", "--inject", "on=perturb", "--inject", "off=abort",
              "--engine", "a=/x", "--engine", "b=/y", "--devices", "0,1", "--jobs", "3", "--audit-all",
              "--no-progress", "--limit", "4", "--alpha", "0.1", "--prompt", "chat", "--history", "h.jsonl")
    assert (s.modes, s.max_bts, s.attns, s.attn) == (["off", "on"], [128, 256], ["eager", "sdpa"], "eager")
    assert (s.asyncs, s.compiles, s.fast_paths) == ([True, False], [0, 2], [False])
    assert s.inject == ["on=perturb", "off=abort"] and s.engines == {"a": "/x", "b": "/y"}
    assert (s.devices, s.jobs, s.audit, s.progress, s.limit, s.alpha, s.prompt) == (["0", "1"], 3, "all", False, 4,
                                                                                   0.1, "chat")
    assert parse("--audit").audit == "first"


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().prompt = "chat"


def test_settings_json_round_trip_through_json_text(tmp_path):
    s = parse("--graphs", "off,on", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"), "--attn",
              "sdpa,eager", "--history", str(tmp_path / "h"))
    assert settings.from_json(json.loads(json.dumps(settings.to_json(s)))) == s
    legacy = {**settings.to_json(Settings()), "attn": "eager", "attns": None}  # written before attns was required
    assert settings.from_json(legacy).attns == ["eager"]
    with pytest.raises(UsageError, match="unknown fields bogus"):
        settings.from_json({"bogus": 1})


def test_suite_keys_are_the_flags_without_dashes():
    keys = settings.suite_keys()
    assert keys["graphs"] == "modes" and keys["max_bt"] == "max_bts" and keys["attn"] == "attns"
    assert "jobs" not in keys and "out" not in keys
    s = settings.from_suite({"graphs": ["off", "on"], "max_bt": 128, "attn": ["sdpa", "eager"],
                             "inject": "on=perturb", "limit": 3})
    assert (s.modes, s.max_bts, s.attns, s.inject, s.limit) == (["off", "on"], [128], ["sdpa", "eager"],
                                                               ["on=perturb"], 3)
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
    assert (s.modes, s.jobs, s.devices, s.progress, s.out) == (["off"], 2, ["0"], False, "d")
    args = build_parser().parse_args(["gsm8k", "--resume", "d", "--limit", "3", "--audit-all"])
    assert settings.resume_conflicts(args) == ["--audit-all", "--limit"]
    assert set(settings.resume_flags()) == {"--jobs", "--devices", "--no-progress", "--history"}
