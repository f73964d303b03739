"""The typed summary (evalharness.summary_doc, summary_header): a Cell has exactly the keys summary.json's cells have,
the Header and its records (runs, engines, A/B rows, pool) exactly the run-level keys, and Summary.to_json gives back
summary.json as the dict-built summary wrote it (checked on the committed GPU evidence)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from evalharness.summary_doc import Cell, Summary, worst_per_mode
from evalharness.summary_header import AbRow, EngineInfo, Header, PoolRecord, RunRow, Versions

REPORTS = Path(__file__).resolve().parent.parent / "reports"
FIELDS = set(Cell.keys())  # summary.json keys of a cell (the dataclass fields but Record.absent)
# summary.json files whose cells have every field of Cell (older evidence predates some, e.g. confirmation)
CURRENT = [p for p in sorted(REPORTS.glob("**/summary.json"))
           if all(FIELDS <= set(c) for c in json.loads(p.read_text())["cells"])]


def test_some_committed_evidence_has_the_current_layout():
    assert len(CURRENT) >= 3


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: str(p.relative_to(REPORTS).parent))
def test_committed_summary_round_trips_through_the_typed_summary(path):
    doc = json.loads(path.read_text())
    cells = tuple(Cell.from_json(c) for c in doc["cells"])
    assert [c.to_json() for c in cells] == doc["cells"]  # no key lost, none added, values as written
    info = {k: v for k, v in doc.items() if k not in ("cells", "cells_by_id", "modes")}
    header = Header.from_json(info, strict=True)  # every run-level key (and every key of its objects) is typed
    assert header.to_json() == info
    assert Summary(header, cells, []).to_json() == doc  # modes (each mode's worst cell) and cells_by_id re-derived
    for key, run in header.runs.items():  # the writers read typed values
        assert isinstance(run, RunRow) and run.status == doc["runs"][key]["status"]
        assert list(run.served) == doc["runs"][key]["served"] and run.load_s == doc["runs"][key].get("load_s")
    assert header.versions.transformers == doc["versions"]["transformers"]
    assert header.thresholds.alpha == doc["thresholds"]["alpha"]
    if doc.get("pool"):
        assert isinstance(header.pool, PoolRecord)
        assert [w.load_s for w in header.pool.processes] == [w["load_s"] for w in doc["pool"]["processes"]]


def test_keys_older_summaries_lack_read_as_defaults_and_stay_absent():
    """An older summary.json (no engines, ab or pool; runs without the worker's figures) reads with those fields at
    their defaults, and writes back without them; a key written as null stays null."""
    old_run = {"config": "graphs=off", "engine": {"max_bt": 384}, "served": ["off"], "status": "ok", "error": None,
               "error_class": None, "resolved": {}, "notes": [], "generated_tokens": 10, "wall_s": 1.0,
               "tokens_per_s": 10.0, "samples_per_s": 2.0, "peak_mem_gb": None}
    old = {"model": "m", "data": "d", "n": 2, "prompt": "chat, 0-shot", "filter": "flexible-extract", "attn": "sdpa",
           "dtype": "bf16", "max_new_tokens": 8, "max_bt": 384, "max_bts": [384],
           "thresholds": {"alpha": 0.05, "min_drop": 0.02}, "versions": {"torch": "2", "device": "cpu"},
           "runs": {"k": old_run}, "command": "evalharness gsm8k", "created": "2026-01-01T00:00:00Z", "exit_code": 0}
    h = Header.from_json(old)
    assert (h.engines, h.ab, h.pool) == ({}, (), None) and "pool" in h.absent
    run = h.runs["k"]
    assert (run.id, run.load_s, run.worker_pid, run.attempts) == (None, None, None, None) and "id" in run.absent
    assert (h.versions.transformers, h.versions.device) == (None, "cpu")
    assert h.to_json() == old
    now = Header.from_json({**old, "pool": None, "runs": {"k": {**old_run, "id": "abc", "load_s": None}}})
    assert now.pool is None and "pool" not in now.absent
    assert now.to_json()["pool"] is None and now.to_json()["runs"]["k"]["load_s"] is None
    assert now.task_label == "d | chat, 0-shot | flexible-extract"


def test_live_records_must_type_every_key():
    """Built from the live run (strict), a key a record has no field for is an error, not a silent loss; read from a
    file (a newer summary.json), it is ignored."""
    probe = {"path": None, "transformers": "5.17.0", "tuple_graphs": True, "cuda_arch": "9.0"}
    with pytest.raises(ValueError, match="EngineInfo has no field for cuda_arch"):
        EngineInfo.from_json(probe, strict=True)
    assert EngineInfo.from_json(probe).to_json() == {"path": None, "transformers": "5.17.0", "tuple_graphs": True}
    with pytest.raises(ValueError, match="WorkerRecord has no field for gpu"):
        PoolRecord.from_json({"workers": 1, "threads_per_worker": 2, "why": "1 job", "model_loads": 1,
                              "processes": [{"id": 1, "device": None, "threads": 2, "load_s": 1.0, "jobs": ["k"],
                                             "end": "idle", "gpu": 0}]}, strict=True)


def test_this_interpreters_versions_and_probe_are_typed():
    from evalharness.engine.transformers_cb import probe, versions

    assert Versions.from_json(versions(), strict=True).to_json() == versions()
    read = {"path": None, **{k: v for k, v in probe().items() if k != "cb_fields"}}
    assert EngineInfo.from_json(read, strict=True).to_json() == read


def test_ab_rows_are_frozen_and_round_trip():
    row = {"max_bt": 384, "axes": "", "mode": "on", "a": "main", "b": "pr", "accuracy_a": 0.5, "accuracy_b": 0.25,
           "delta": -0.25, "p_value": 0.5, "flipped_down": 2, "flipped_up": 0, "samples_per_s_a": 2.0,
           "samples_per_s_b": 1.0, "samples_per_s_change_pct": -50.0, "tokens_per_s_a": None, "tokens_per_s_b": 1.0,
           "tokens_per_s_change_pct": None, "peak_mem_gb_a": None, "peak_mem_gb_b": None, "verdict_a": "PASS",
           "verdict_b": "ACCURACY_DROP"}
    ab = AbRow.from_json(row, strict=True)
    assert ab.to_json() == row and ab.flipped_down == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        ab.delta = 0.0


def test_worst_cell_per_mode_and_frozen_cells():
    def cell(bt, mode, verdict):
        return Cell(id=f"{bt}/{mode}", engine="default", axes="", max_bt=bt, mode=mode, verdict=verdict)

    cells = [cell(128, "off", "PASS"), cell(128, "on", "PASS"), cell(256, "on", "STALE_GRAPH"),
             cell(512, "on", "SKIPPED"), cell(256, "off", "FAIL")]
    worst = worst_per_mode(cells)
    assert (worst["on"].id, worst["off"].id) == ("256/on", "256/off")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cells[0].verdict = "FAIL"
    assert Cell.from_json({**cells[0].to_json(), "added_later": 1}) == cells[0]  # a newer key is ignored
