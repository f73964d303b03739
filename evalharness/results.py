"""Per-sample results of engine runs, and atomic file writes.

A `RunResult` is what one engine run produced: one `Sample` per requested prompt (missing ones included), the
run's status and error class, and its timings. Nothing here knows how the run was executed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (os.umask would race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: a killed writer never leaves half a file. The file
    gets the mode a plain open() would give it (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    """Read complete lines; a torn last line (a worker killed mid-write) is dropped, not misread."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


@dataclass
class Sample:
    index: int
    status: str  # ok | failed | missing
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    error: str | None = None


@dataclass
class RunResult:
    key: str
    # how the run ended: ok (every request finished), or a FAIL cause (failed_requests, crash, timeout, error), or
    # unsupported (SKIPPED)
    status: str
    samples: list[Sample]
    error_class: str | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(s.status != "ok" for s in self.samples)

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "RunResult":
        d = dict(d)
        d["samples"] = [Sample(**s) for s in d["samples"]]
        return cls(**d)
