"""Configuration parsing and the run plan: which engine runs serve which modes, deduplicated."""

from __future__ import annotations

import dataclasses
import json

import pytest

from evalharness.config import FAULTS, MODES, Axes, Capabilities, EngineConfig, UsageError, plan_runs
from evalharness.parsers import parse_injections, parse_max_bt, parse_modes

ALL = ["off", "on", "varlen", "decode"]


def by_mode(plan, bt=None):
    return {mp.mode: mp for mp in plan.modes if bt is None or mp.max_bt == bt}


# --- parsing ------------------------------------------------------------------------------------------------------

def test_parse_modes():
    assert parse_modes("off,on,varlen,decode") == ALL
    assert parse_modes(" on , off ,on,") == ["on", "off"]  # order kept, repeats and blanks dropped


@pytest.mark.parametrize("text,needle", [("", "no mode"), (" , ", "no mode"), ("off,bogus", "'bogus'"),
                                         ("ON", "'ON'")])
def test_parse_modes_errors(text, needle):
    with pytest.raises(UsageError, match="--graphs") as e:
        parse_modes(text)
    assert needle in str(e.value)


@pytest.mark.parametrize("text,expected", [("384", [384]), ("128,256, 128", [128, 256]),
                                           ("128:512:128", [128, 256, 384, 512]), ("64:100:64", [64]),
                                           (256, [256])])
def test_parse_max_bt(text, expected):
    assert parse_max_bt(text) == expected


@pytest.mark.parametrize("text", ["0", "-5", "abc", "", "128,0", "1:2", "128:64:0", "128:512:-64", "0:128:64",
                                  "12.5", "1:2:3:4"])
def test_parse_max_bt_errors(text):
    with pytest.raises(UsageError, match="--max-bt"):
        parse_max_bt(text)


def test_parse_injections():
    assert parse_injections(None, ALL) == {}
    assert parse_injections(["on=perturb", "off=abort"], ALL) == {"on": "perturb", "off": "abort"}
    assert parse_injections(["on=perturb", "on=hang"], ALL) == {"on": "hang"}  # the last one wins


@pytest.mark.parametrize("item", ["on", "on:perturb", "bogus=perturb", "on=bogus", "=perturb", "on="])
def test_parse_injections_errors(item):
    with pytest.raises(UsageError, match="--inject"):
        parse_injections([item], ALL)


def test_parse_injections_mode_not_requested():
    with pytest.raises(UsageError, match="not among --graphs"):
        parse_injections(["decode=perturb"], ["off", "on"])


# --- engine configurations ----------------------------------------------------------------------------------------

def test_engine_config_key_is_stable_and_content_addressed():
    a = EngineConfig(max_bt=384, attn="sdpa", cuda_graph=(True, True))
    assert a.key() == EngineConfig(max_bt=384, attn="sdpa", cuda_graph=(True, True)).key()
    assert len(a.key()) == 12
    assert a.key() != EngineConfig(max_bt=256, attn="sdpa", cuda_graph=(True, True)).key()
    assert a.key() != EngineConfig(max_bt=384, attn="sdpa", cuda_graph=(True, True), fault="perturb").key()
    twin = EngineConfig(max_bt=384, attn="sdpa", cuda_graph=(False, False), force_padding=True, pad_seqlen_k=True,
                        use_async=False, fault="pre45323")
    assert twin.describe() == ("graphs=off, max_bt=384, attn=sdpa, padded-eager, padded max_seqlen_k, async=off, "
                               "fault=pre45323")
    # as a job, jobs.json or summary.json hold it, and back: the same configuration and key
    for cfg in (a, twin, dataclasses.replace(twin, attempt=2)):
        back = EngineConfig.from_json(json.loads(json.dumps(dataclasses.asdict(cfg))))
        assert back == cfg and back.key() == cfg.key() and isinstance(back.cuda_graph, tuple)


def test_capabilities_decode_fast_path():
    assert not Capabilities(cuda=False, attn="flash_attention_2").decode_fast_path
    assert Capabilities(cuda=True, attn="flash_attention_2").decode_fast_path
    assert Capabilities(cuda=True, attn="torch-flash").decode_fast_path  # its own paged decode kernel
    assert not Capabilities(cuda=False, attn="torch-flash").decode_fast_path
    assert not Capabilities(cuda=True, attn="sdpa").decode_fast_path
    assert not Capabilities(cuda=True, attn="torch-flash").fast_path(Axes("torch-flash", decode_fast_path=False))


# --- the plan -----------------------------------------------------------------------------------------------------

def test_cpu_plan_shares_twins_and_runs_no_graphs():
    plan = plan_runs(ALL, [384], Capabilities(cuda=False, attn="sdpa"))
    m = by_mode(plan)
    # off: its own unpadded run, no twin
    off = plan.runs[m["off"].run]
    assert m["off"].twin is None and not off.force_padding and off.cuda_graph == (False, False)
    # on and varlen: one padded-eager run (with padded max_seqlen_k) that is both their run and their twin
    assert m["on"].run == m["on"].twin == m["varlen"].run == m["varlen"].twin
    shared = plan.runs[m["on"].run]
    assert shared.force_padding and shared.pad_seqlen_k is True and shared.cuda_graph == (False, False)
    # decode: its own twin (varlen path not padded for max_seqlen_k)
    assert m["decode"].run == m["decode"].twin != m["on"].run
    assert plan.runs[m["decode"].run].pad_seqlen_k is False
    assert len(plan.runs) == 3
    for mode in ("on", "varlen", "decode"):
        assert m[mode].graphs_effective == (False, False)
        assert "CUDA is not available" in m[mode].notes[0]
    assert all(not cfg.cuda_graph[0] and not cfg.cuda_graph[1] for cfg in plan.runs.values())
    assert sorted(plan.served_by(m["on"].run)) == ["on", "on twin", "varlen", "varlen twin"]


def test_cuda_plan_with_torch_flash():
    plan = plan_runs(ALL, [384], Capabilities(cuda=True, attn="torch-flash"))
    m = by_mode(plan)
    # decode: a real decode graph run, and its padded-eager twin (decode batches padded, max_seqlen_k not)
    assert m["decode"].graphs_effective == (False, True) and not m["decode"].notes
    assert plan.runs[m["decode"].run].cuda_graph == (False, True)
    decode_twin = plan.runs[m["decode"].twin]
    assert m["decode"].run != m["decode"].twin
    assert decode_twin.force_padding and decode_twin.pad_seqlen_k is False and decode_twin.cuda_graph == (False, False)
    # on and varlen: real graph runs, different configurations, one shared twin
    on, varlen = plan.runs[m["on"].run], plan.runs[m["varlen"].run]
    assert on.cuda_graph == (True, True) and varlen.cuda_graph == (True, False)
    assert m["on"].run != m["varlen"].run
    assert m["on"].twin == m["varlen"].twin != m["decode"].twin
    twin = plan.runs[m["on"].twin]
    assert twin.force_padding and twin.pad_seqlen_k and twin.cuda_graph == (False, False)
    assert on.use_async is True and twin.use_async is True  # flash-like attention: async batching like the run
    assert decode_twin.use_async is True
    assert m["on"].graphs_effective == (True, True) and m["varlen"].graphs_effective == (True, False)
    assert len(plan.runs) == 6  # off, on, varlen, on/varlen twin, decode, decode twin


def test_cuda_plan_with_torch_flash_and_the_decode_fast_path_off():
    plan = plan_runs(ALL, [384], Capabilities(cuda=True, attn="torch-flash"),
                     axes=[Axes("torch-flash", decode_fast_path=False)])
    m = by_mode(plan)
    # no decode fast path: decode collapses to its own twin, with the reason
    assert m["decode"].run == m["decode"].twin
    assert m["decode"].graphs_effective == (False, False)
    assert "no decode fast path" in m["decode"].notes[0]
    assert m["on"].graphs_effective == (True, False)


def test_decode_coarse_fault_leaves_the_twins_clean():
    plan = plan_runs(ALL, [384], Capabilities(cuda=True, attn="torch-flash"),
                     {"on": "decode-coarse", "decode": "decode-coarse"})
    m = by_mode(plan)
    assert not FAULTS["decode-coarse"].patches_twin
    assert plan.runs[m["decode"].run].fault == "decode-coarse" and plan.runs[m["decode"].twin].fault is None
    assert plan.runs[m["on"].run].fault == "decode-coarse" and plan.runs[m["on"].twin].fault is None
    assert plan.runs[m["varlen"].run].fault is None


def test_cuda_plan_with_flash_attention_2_captures_decode():
    plan = plan_runs(ALL, [384], Capabilities(cuda=True, attn="flash_attention_2"))
    m = by_mode(plan)
    assert m["decode"].graphs_effective == (False, True)
    assert plan.runs[m["decode"].run].cuda_graph == (False, True)
    assert m["decode"].run != m["decode"].twin
    assert plan.runs[m["decode"].twin].pad_seqlen_k is False
    assert m["on"].graphs_effective == (True, True) and not m["on"].notes


def test_plan_per_max_bt():
    plan = plan_runs(["off", "on"], [128, 256], Capabilities(cuda=False, attn="sdpa"))
    assert [(mp.max_bt, mp.mode) for mp in plan.modes] == [(128, "off"), (128, "on"), (256, "off"), (256, "on")]
    assert len(plan.runs) == 4
    assert {cfg.max_bt for cfg in plan.runs.values()} == {128, 256}


def test_fault_that_does_not_patch_the_twin():
    plan = plan_runs(ALL, [384], Capabilities(cuda=False, attn="sdpa"), {"on": "perturb"})
    m = by_mode(plan)
    assert not FAULTS["perturb"].patches_twin
    assert plan.runs[m["on"].run].fault == "perturb"
    assert m["on"].run != m["on"].twin  # the faulty run is no longer its own twin
    assert plan.runs[m["on"].twin].fault is None
    assert m["on"].twin == m["varlen"].run == m["varlen"].twin  # varlen still shares the clean twin
    assert m["on"].fault == "perturb" and m["varlen"].fault is None


def test_fault_that_patches_the_twin():
    plan = plan_runs(ALL, [384], Capabilities(cuda=True, attn="torch-flash"), {"varlen": "pre45323"})
    m = by_mode(plan)
    assert FAULTS["pre45323"].patches_twin
    assert plan.runs[m["varlen"].run].fault == "pre45323"
    assert plan.runs[m["varlen"].twin].fault == "pre45323"  # so only graph staleness can differ
    assert m["varlen"].twin != m["on"].twin  # on keeps its clean twin
    assert plan.runs[m["on"].twin].fault is None


def test_fault_on_the_reference():
    plan = plan_runs(["off", "on"], [384], Capabilities(cuda=False, attn="sdpa"), {"off": "abort"})
    m = by_mode(plan)
    assert plan.runs[m["off"].run].fault == "abort" and m["off"].fault == "abort"
    assert plan.runs[m["on"].run].fault is None


def test_modes_table():
    assert MODES == {"off": (False, False), "on": (True, True), "varlen": (True, False), "decode": (False, True)}
