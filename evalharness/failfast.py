"""`--fail-fast`: stop a cell's runs as soon as its graph run and padded-eager twin disagree on one sample.

The pool calls `check(job_key)` as a job reports finished requests; the run and its twin are compared on the
samples both have finished (their results.jsonl, written as requests finish). Greedy decoding of the same prompt
under the same configuration, padding aside, should agree token for token, so one differing sample decides; but it
is not confirmed (neither run is repeated: the H200 once gave a twin that generated token 0 throughout, see
confirm.py), so the verdict says "not confirmed by a re-run". Once found, the cell's verdict is STALE_GRAPH whatever
the rest would show, so its runs stop:
the graph run at once, the twin once every cell it serves has a finding (`on` and `varlen` share one twin), the
`off` reference never (it decides ACCURACY_DROP for the other cells). Stopped runs are not cached.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


def finished_tokens(path: Path) -> dict[int, list[int]]:
    """index -> generated tokens of the requests that finished ok so far (a partly written last line is skipped)."""
    out: dict[int, list[int]] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("status") == "ok":
            out[row["index"]] = row["token_ids"]
    return out


def first_mismatch(a: dict[int, list[int]], b: dict[int, list[int]]) -> int | None:
    both = sorted(set(a) & set(b))
    return next((i for i in both if a[i] != b[i]), None)


class FailFast:
    def __init__(self, plan, jobs, min_interval_s: float = 1.0):
        self.dirs = {j.key: j.job_dir for j in jobs}
        # (cell, run, twin) for every cell with a twin of its own (not a run that is its own twin)
        self.pairs = [(mp.cell_id, mp.run, mp.twin) for mp in plan.modes if mp.twin and mp.twin != mp.run]
        self.serves: dict[str, set[str]] = {}
        for mp in plan.modes:
            for key in (mp.run, mp.twin):
                if key:
                    self.serves.setdefault(key, set()).add(mp.cell_id)
        self.found: dict[str, int] = {}  # cell -> first mismatching sample index
        self.min_interval_s = min_interval_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, key: str, force: bool = False) -> set[str]:
        """After `key` reported progress: the run keys to stop now (possibly empty)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last.get(key, 0.0) < self.min_interval_s:
                return set()
            self._last[key] = now
            for cell, run, twin in self.pairs:
                if cell in self.found or key not in (run, twin) or run not in self.dirs or twin not in self.dirs:
                    continue
                index = first_mismatch(finished_tokens(self.dirs[run] / "results.jsonl"),
                                       finished_tokens(self.dirs[twin] / "results.jsonl"))
                if index is not None:
                    self.found[cell] = index
            return {k for k, cells in self.serves.items() if k in self.dirs and cells <= set(self.found)}
