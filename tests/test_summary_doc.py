"""The typed summary (evalharness.summary_doc): a Cell has exactly the keys summary.json's cells have, and
Summary.to_json gives back summary.json as the dict-built summary wrote it (checked on the committed GPU evidence)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from evalharness.summary_doc import Cell, Summary, worst_per_mode

REPORTS = Path(__file__).resolve().parent.parent / "reports"
FIELDS = {f.name for f in dataclasses.fields(Cell)}
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
    assert Summary(info, cells, []).to_json() == doc  # modes (each mode's worst cell) and cells_by_id re-derived


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
