"""The run-level header of a typed summary (summary_doc.Summary.header): what was evaluated and how (model, data,
prompt, thresholds, versions, command), one `RunRow` per engine run, the engines compared with their `AbRow`s, and
the worker pool's account (`PoolRecord`). summary.py builds it once; the writers only read its attributes.

Every record is summary.json's object of the same name: `to_json` gives exactly the keys and values it had before
the header was typed, `from_json` reads it back. A key that a summary.json lacks (older evidence predates e.g. a run's
`id`, `folder` and worker figures, the `pool`, the `engines` and their `ab` rows) reads as the field's default and is
remembered in `absent`, so `to_json` leaves it out again: a committed summary.json round-trips unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


def _json(value: Any) -> Any:
    """A field's value as summary.json holds it (records as objects, tuples as lists)."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Record:
    """A summary.json object as a frozen dataclass; `absent`: the keys its JSON lacked (left out by to_json)."""

    absent: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False)
    # field -> what its JSON value becomes: a Record (an object, or None), ("list", Record), ("map", Record), tuple
    NESTED: ClassVar[dict[str, Any]] = {}

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "absent"]

    def to_json(self) -> dict:
        return {k: _json(getattr(self, k)) for k in self.keys() if k not in self.absent}

    @classmethod
    def from_json(cls, d: dict, strict: bool = False):
        """The record of a JSON object: its keys this record does not know are ignored (a newer summary), or with
        `strict` (building from the live run, where every key must be typed) a ValueError."""
        keys = cls.keys()
        unknown = sorted(set(d) - set(keys))
        if strict and unknown:
            raise ValueError(f"{cls.__name__} has no field for {', '.join(unknown)}")
        given = {k: _decode(cls.NESTED.get(k), v, strict) for k, v in d.items() if k in keys}
        return cls(**given, absent=frozenset(k for k in keys if k not in d))


def _decode(spec: Any, value: Any, strict: bool) -> Any:
    """A JSON value as the typed field `spec` (Record.NESTED) says."""
    if spec is None:
        return value
    if spec is tuple:
        return tuple(value)
    if isinstance(spec, tuple):
        shape, kind = spec
        if shape == "list":
            return tuple(kind.from_json(v, strict) for v in value)
        return {k: kind.from_json(v, strict) for k, v in value.items()}
    return None if value is None else spec.from_json(value, strict)


@dataclass(frozen=True)
class Versions(Record):
    """What the first run that reported them ran on (engine/transformers_cb.versions); any may be missing."""

    python: str | None = None
    torch: str | None = None
    transformers: str | None = None
    cuda: str | None = None  # only with CUDA
    device: str | None = None  # "cpu" or the GPU's name


@dataclass(frozen=True)
class Thresholds(Record):
    alpha: float
    min_drop: float


@dataclass(frozen=True)
class EngineInfo(Record):
    """One engine of --engines: its interpreter and what its probe read (a failed probe: only `error`)."""

    path: str | None = None  # its python (None: this interpreter)
    python: str | None = None
    torch: str | None = None
    transformers: str | None = None
    cuda: str | None = None
    device: str | None = None
    tuple_graphs: bool | None = None  # whether its transformers takes a (prefill, decode) use_cuda_graph pair
    # whether its transformers gives the model the decode fast path: {available, layer_types, blocked} (None: unknown;
    # transformers_cb.decode_path); where it does not, `decode` is planned out and SKIPPED (plan.unsupported_modes)
    decode_path: dict | None = None
    error: str | None = None  # why the probe failed


@dataclass(frozen=True)
class RunRow(Record):
    """One engine run (a job): its configuration, the cells it served, how it ended, its figures and its worker."""

    config: str  # EngineConfig.describe()
    engine: dict  # the EngineConfig's fields (dataclasses.asdict)
    served: tuple[str, ...]  # the modes it served
    status: str
    error_class: str | None = None
    error: str | None = None
    resolved: dict = field(default_factory=dict)  # what transformers resolved, read back after the run
    notes: tuple[str, ...] = ()
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    wall_s: float | None = None  # the time inside generate_batch
    peak_mem_gb: float | None = None
    generated_tokens: int = 0
    # added with the job folders and the worker pool (older summaries lack them)
    id: str | None = None  # its folder's name under runs/
    folder: str | None = None
    job_wall_s: float | None = None  # the worker's whole time on the job
    load_s: float | None = None  # the model load it paid (0 or None: the worker had it loaded)
    generate_s: float | None = None
    worker_pid: int | None = None
    attempts: int | None = None
    # the worker's account of the rest of job_wall_s (meta.json "timings": worker_start_s, imports_s, setup_s,
    # finish_s); empty in older summaries
    timings: dict = field(default_factory=dict)
    NESTED: ClassVar = {"served": tuple, "notes": tuple}


@dataclass(frozen=True)
class AbRow(Record):
    """Engine A/B: one cell of the first engine (a) against the same cell under another engine (b), paired."""

    max_bt: int
    axes: str
    mode: str
    a: str
    b: str
    accuracy_a: float | None
    accuracy_b: float | None
    delta: float | None  # b - a on the samples both finished (None: none)
    p_value: float  # exact McNemar on the flipped samples
    flipped_down: int  # right under a, wrong under b
    flipped_up: int
    samples_per_s_a: float | None
    samples_per_s_b: float | None
    samples_per_s_change_pct: float | None
    tokens_per_s_a: float | None
    tokens_per_s_b: float | None
    tokens_per_s_change_pct: float | None
    peak_mem_gb_a: float | None
    peak_mem_gb_b: float | None
    verdict_a: str
    verdict_b: str


@dataclass(frozen=True)
class WorkerRecord(Record):
    """One worker process of the pool."""

    id: int
    device: str | None  # the GPU it was pinned to (None: no --devices)
    threads: int
    load_s: float | None  # its model load (None: it never loaded one)
    jobs: tuple[str, ...]  # the run keys it ran, in order
    end: str | None  # why it was retired
    mps: bool | None = None  # it ran through the invocation's MPS daemon (--mps); absent in older summaries
    # "early" or "with its first job": written only by the withdrawn early-workers experiment, whose recordings
    # (reports/h200-speed/early-workers/, mps-own/) keep it
    started: str | None = None
    NESTED: ClassVar = {"jobs": tuple}


@dataclass(frozen=True)
class PoolRecord(Record):
    """The worker pool's account (engine/pool.PoolReport.to_json)."""

    workers: int
    threads_per_worker: int
    why: str  # how the worker count and thread budget were chosen
    model_loads: int
    processes: tuple[WorkerRecord, ...]
    # seconds of the invocation (from evaluate(), after the interpreter's imports): "prepare_s" (settings, task,
    # probes, plan) before the first job starts, "jobs_s" the first round of jobs, "confirm_s" the confirmation
    # re-runs; the rest (scores, reports) follows. Absent in summaries written before it.
    phases: dict | None = None
    # prepare_s by step (plan.Prepared.timings): "task_s", "cuda_s", "probes_s", "plan_s"; absent in older summaries
    prepare: dict | None = None
    NESTED: ClassVar = {"processes": ("list", WorkerRecord)}


@dataclass(frozen=True)
class Header(Record):
    """summary.json's run-level keys."""

    model: str
    data: str
    n: int
    prompt: str  # e.g. "chat, 0-shot"
    filter: str | None
    attn: str
    dtype: str
    max_new_tokens: int
    max_bt: int  # the first of max_bts
    max_bts: tuple[int, ...]
    thresholds: Thresholds
    versions: Versions
    runs: dict[str, RunRow]  # run key -> its row
    command: str
    created: str
    exit_code: int  # the verdicts' exit code (a drift's is Summary.exit_code's)
    engines: dict[str, EngineInfo] = field(default_factory=dict)  # --engines name -> its interpreter and probe
    ab: tuple[AbRow, ...] = ()  # one row per cell pair when there are two engines or more
    pool: PoolRecord | None = None  # None when every run came from the cache
    NESTED: ClassVar = {"max_bts": tuple, "thresholds": Thresholds, "versions": Versions, "runs": ("map", RunRow),
                        "engines": ("map", EngineInfo), "ab": ("list", AbRow), "pool": PoolRecord}

    @property
    def task_label(self) -> str:
        """What identifies the task in the history: data, prompt and filter."""
        return f"{self.data} | {self.prompt} | {self.filter}"
