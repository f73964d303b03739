"""The typed summary of a run: `Summary` (what a run found), its run-level `Header` (summary_header.py) and its
`Cell`s (one per engine x axes x max_bt x graph mode). summarise (summary.py) builds them once from the scored
outcomes; the writers (report.md, report.html and its figures, the history file, the CLI's lines, the pytest
plugin's JUnit properties) only read their attributes.

`Summary.to_json` is summary.json (the contract other tools read, see the README): the header's `Header.to_json`
and each cell's `Cell.to_json`, with exactly the keys the dicts had before the summary was typed; `Header.from_json`
and `Cell.from_json` read them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .history import HistoryCheck
from .summary_header import Header, Record
from .verdict import ModeOutcome, Verdict, exit_code


@dataclass(frozen=True)
class Cell(Record):
    """One cell of summary.json (Record: to_json gives its keys, from_json reads them, keys an older file lacks at
    their defaults)."""

    # which cell
    id: str  # e.g. "384/attn=sdpa/on"
    engine: str
    axes: str
    max_bt: int
    mode: str
    # its verdict and accuracy
    verdict: str
    reason: str = ""
    accuracy: float | None = None
    finished: int | None = None  # samples that finished (None: the run did not report)
    accuracy_ci: list[float] | None = None  # 95% Wilson interval
    n: int = 0
    correct: int | None = None
    p_value: float | None = None  # McNemar vs off
    delta_vs_off: float | None = None
    # the twin check
    twin_mismatches: int | None = None
    twin_compared: int | None = None
    failed_requests: int | None = None
    twin_failed_requests: int | None = None
    first_mismatches: list[dict] = field(default_factory=list)  # [{"index": sample, "token": position}], <= 5
    # the runs that served it
    inject: str | None = None
    error_class: str | None = None
    run: str | None = None  # run key
    twin: str | None = None
    served_by: str = ""
    run_id: str | None = None  # the run's folder name under runs/
    twin_id: str | None = None
    notes: list[str] = field(default_factory=list)
    transformers: str | None = None
    resolved_engine: dict = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)
    worker_log: str | None = None  # a failed run's worker.log
    # the staleness evidence beyond the twin
    attribution: dict | None = None  # --audit: the first mismatching replay's graph key and launch constant
    confirmation: dict | None = None  # confirm.py: the confirmation re-runs
    repeats: dict | None = None  # --repeat N: {"runs": N, "matched": M}
    stale_constants: list | None = None  # the worker's stale-constant check: its first findings
    stale_constants_total: int | None = None
    constant_check: dict | None = None
    # the run's figures
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    wall_s: float | None = None
    peak_mem_gb: float | None = None


def worst_per_mode(cells) -> dict[str, Cell]:
    """Mode -> its cell (one max_bt), or the most severe of its cells (a sweep)."""
    modes: dict[str, Cell] = {}
    for c in cells:
        if c.mode not in modes or Verdict(c.verdict).severity > Verdict(modes[c.mode].verdict).severity:
            modes[c.mode] = c
    return modes


@dataclass(frozen=True)
class Summary:
    """What a run found, built once; every report writer only reads it."""

    header: Header  # summary.json's run-level keys: model, data, n, prompt, versions, runs, engines, ab, pool, ...
    cells: tuple[Cell, ...]  # one per outcome, in the same order
    outcomes: list[ModeOutcome]  # one per cell, with its evidence (twin comparison, per-sample correctness)
    samples: list[dict] = field(default_factory=list)  # samples.jsonl rows
    history: HistoryCheck | None = None  # --history: the drift against the history's baseline

    @property
    def cells_by_id(self) -> dict[str, Cell]:
        return {c.id: c for c in self.cells}

    @property
    def exit_code(self) -> int:
        drift = 1 if self.history is not None and self.history.significant else 0
        return max(exit_code(self.outcomes), drift)

    def to_json(self) -> dict:
        """summary.json: the run-level keys, the cells, each mode's worst cell and the cells by id."""
        cells = [c.to_json() for c in self.cells]
        return {**self.header.to_json(), "cells": cells, "cells_by_id": {c["id"]: c for c in cells},
                "modes": {mode: c.to_json() for mode, c in worst_per_mode(self.cells).items()}}
