"""Configuration: graph modes, injected faults, and the plan of engine runs.

This module is pure: it turns what the user asked for (modes, max_batch_tokens values, faults) and what the device
can do (CUDA, decode fast path) into a set of *engine runs*, each described by the effective engine configuration
that determines its output. Runs with the same effective configuration are computed once and shared. The parsers of
the run-matrix options (--graphs, --max-bt, --inject, ...) are in parsers.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from .faults import FAULTS

# Graph mode -> transformers' ContinuousBatchingConfig.use_cuda_graph as (varlen path, decode path).
MODES: dict[str, tuple[bool, bool]] = {
    "off": (False, False),
    "on": (True, True),
    "varlen": (True, False),
    "decode": (False, True),
}
REFERENCE_MODE = "off"
# --oracle: what decides a graph run is stale. twin: the padded-eager twin (tokens); constants: the worker's
# stale-constant check alone (no twins: fast); both: twins and constants
ORACLES = ("twin", "constants", "both")

# Attention implementations that transformers treats as FlashAttention (no attention mask, async batching default)
FLASH_LIKE_ATTN = ("flash_attention_2", "flash_attention_3", "torch-flash")
# These have a decode fast path (flash_attn_with_kvcache, block tables) in transformers' CB engine on CUDA; torch-flash
# through its own paged decode kernel (engine/paged_decode.py), which transformers' FA2 decode path calls.
DECODE_FAST_PATH_ATTN = ("flash_attention_2", "flash_attention_3", "torch-flash")


class UsageError(ValueError):
    """A bad input from the user: reported as one line, exit code 2."""


@dataclass(frozen=True)
class Axes:
    """Engine knobs that are axes of the run matrix; None means the engine's own default."""

    attn: str
    use_async: bool | None = None
    compile_level: int | None = None
    decode_fast_path: bool | None = None

    def label(self) -> str:
        parts = [f"attn={self.attn}"]
        if self.use_async is not None:
            parts.append(f"async={'on' if self.use_async else 'off'}")
        if self.compile_level is not None:
            parts.append(f"compile={self.compile_level}")
        if self.decode_fast_path is not None:
            parts.append(f"decode_fast_path={'on' if self.decode_fast_path else 'off'}")
        return " ".join(parts)


def axes_matrix(attns: list[str], asyncs: list[bool | None], compiles: list[int | None],
                fast_paths: list[bool | None]) -> list[Axes]:
    return [Axes(a, u, c, f) for a in attns for u in asyncs for c in compiles for f in fast_paths]


@dataclass(frozen=True)
class Capabilities:
    """What the device offers, decided in the parent without touching CUDA state."""

    cuda: bool
    attn: str

    @property
    def decode_fast_path(self) -> bool:
        return self.fast_path(Axes(self.attn))

    def fast_path(self, axes: "Axes") -> bool:
        return self.cuda and axes.attn in DECODE_FAST_PATH_ATTN and axes.decode_fast_path is not False


@dataclass(frozen=True)
class EngineConfig:
    """The effective configuration of one engine run: everything that determines its generated tokens."""

    max_bt: int
    attn: str
    cuda_graph: tuple[bool, bool]
    engine: str = "default"  # which transformers build (see --engine); its path is part of the job hash
    compile_level: int | None = None  # ContinuousBatchingConfig.default_compile_level (None: engine default)
    decode_fast_path: bool | None = None  # False: max_blocks_per_request=0 (None: engine default)
    audit: str | None = None  # graph runs only: "first" or "all" (see audit.py)
    force_padding: bool = False  # pad like a graph run even though graphs are off (the padded-eager twin)
    pad_seqlen_k: bool | None = None  # pad max_seqlen_k like a varlen graph run would (None: engine default)
    use_async: bool | None = None  # None: transformers decides
    fault: str | None = None
    # which run of this configuration: 0 the first, then --repeat's repeats and confirmation re-runs. A distinct job
    # (its own key and cache entry, a fresh worker); `flaky` perturbs attempt 0 only
    attempt: int = 0

    @classmethod
    def from_json(cls, d: dict) -> "EngineConfig":
        """The configuration as a job, jobs.json or summary.json holds it (dataclasses.asdict: `cuda_graph` a list)."""
        return cls(**{**d, "cuda_graph": tuple(d["cuda_graph"])})

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        if not self.attempt:  # the first run keeps the key it had before attempts existed (caches stay valid)
            del fields["attempt"]
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        g = {v: k for k, v in MODES.items()}[tuple(self.cuda_graph)]
        parts = [f"graphs={g}", f"max_bt={self.max_bt}", f"attn={self.attn}"]
        if self.engine != "default":
            parts.insert(0, f"engine={self.engine}")
        if self.compile_level is not None:
            parts.append(f"compile={self.compile_level}")
        if self.decode_fast_path is not None:
            parts.append(f"decode_fast_path={'on' if self.decode_fast_path else 'off'}")
        if self.force_padding:
            parts.append("padded-eager")
        if self.pad_seqlen_k:
            parts.append("padded max_seqlen_k")
        if self.use_async is not None:
            parts.append(f"async={'on' if self.use_async else 'off'}")
        if self.fault:
            parts.append(f"fault={self.fault}")
        if self.audit:
            parts.append(f"audit={self.audit}")
        if self.attempt:
            parts.append(f"attempt={self.attempt}")
        return ", ".join(parts)


@dataclass
class ModePlan:
    """Which run serves a mode and which run is its padded-eager twin (None for `off`)."""

    mode: str
    max_bt: int
    run: str
    twin: str | None
    fault: str | None
    graphs_effective: tuple[bool, bool]
    notes: list[str] = field(default_factory=list)
    engine: str = "default"
    axes: Axes | None = None
    repeats: list[str] = field(default_factory=list)  # --repeat: runs of the same configuration, attempts 1..N-1
    reruns: list[str] = field(default_factory=list)  # confirmation re-runs of the graph run (confirm.py adds them)
    twin_reruns: list[str] = field(default_factory=list)  # re-runs of the twin, when its soundness is in doubt

    @property
    def graph_runs(self) -> list[str]:
        """Every run of this mode's configuration: the first, the repeats, the confirmation re-runs."""
        return [self.run, *self.repeats, *self.reruns]

    @property
    def cell_id(self) -> str:
        return cell_id(self.engine, self.max_bt, self.axes.label() if self.axes else "", self.mode)

    @property
    def group(self) -> tuple:
        """Cells of one group share their `off` reference: same engine, max_bt and axes."""
        return (self.engine, self.max_bt, self.axes)


def cell_id(engine: str, max_bt: int, axes_label: str, mode: str) -> str:
    return "/".join(p for p in (engine if engine != "default" else "", str(max_bt), axes_label, mode) if p)


@dataclass
class Plan:
    runs: dict[str, EngineConfig]
    modes: list[ModePlan]

    def served_by(self, key: str) -> list[str]:
        out = []
        for mp in self.modes:
            if mp.run == key:
                out.append(mp.mode)
            if key in mp.repeats:
                out.append(f"{mp.mode} repeat")
            if key in mp.reruns:
                out.append(f"{mp.mode} re-run")
            if mp.twin == key:
                out.append(f"{mp.mode} twin")
            if key in mp.twin_reruns:
                out.append(f"{mp.mode} twin re-run")
        return out

    def add(self, cfg: EngineConfig) -> str:
        self.runs.setdefault(cfg.key(), cfg)
        return cfg.key()


def plan_runs(modes: list[str], max_bts: list[int], caps: Capabilities,
              injections: dict[str, str] | None = None, engines: list[str] | None = None,
              axes: list[Axes] | None = None, audit: str | None = None, repeat: int = 1,
              oracle: str = "twin") -> Plan:
    """Map each (engine, max_bt, axes, mode) cell to engine runs, deduplicating runs with the same effective
    configuration.

    - `off` is graphs off with no padding: the accuracy reference of its group (same engine, max_bt, axes).
    - A graph mode runs with graphs on where the device can capture them on that path; its twin is the same
      configuration with padding forced on and graphs off, which reproduces every launch constant of the graph run.
    - Where no path of a mode can capture a graph (no CUDA; `decode` without a decode fast path), the mode's run is
      its own padded-eager twin: computed once, and the mode is SKIPPED unless the two still differ (a fault).
    - `repeat` N: a graph mode's run is made N times (attempts 0..N-1, distinct jobs), each checked against the twin.
    - `oracle` "constants": graph modes get no twin (the stale-constant check in the worker is the oracle).
    """
    injections = injections or {}
    engines = engines or ["default"]
    axes = axes or [Axes(caps.attn)]
    runs: dict[str, EngineConfig] = {}
    plans: list[ModePlan] = []

    def add(cfg: EngineConfig) -> str:
        runs.setdefault(cfg.key(), cfg)
        return cfg.key()

    for engine in engines:
        for ax in axes:
            base = dict(attn=ax.attn, engine=engine, compile_level=ax.compile_level,
                        decode_fast_path=ax.decode_fast_path)
            fast_path = caps.fast_path(ax)
            for bt in max_bts:
                for mode in modes:
                    gv, gd = MODES[mode]
                    fault = injections.get(f"{engine}:{mode}", injections.get(mode))
                    if mode == REFERENCE_MODE:
                        key = add(EngineConfig(max_bt=bt, cuda_graph=(False, False), use_async=ax.use_async,
                                               fault=fault, **base))
                        plans.append(ModePlan(mode, bt, key, None, fault, (False, False), [], engine, ax))
                        continue
                    eff = (gv and caps.cuda, gd and fast_path)
                    notes = []
                    if not caps.cuda:
                        notes.append("CUDA is not available: transformers turns CUDA graphs off, so no graph is "
                                     "captured")
                    elif gd and not fast_path:
                        notes.append(f"attention {ax.attn!r} has no decode fast path here: the decode path never "
                                     "captures a graph")
                    use_async = ax.use_async
                    if use_async is None:
                        use_async = caps.cuda and any(eff) and ax.attn in FLASH_LIKE_ATTN
                    twin_fault = fault if fault and FAULTS[fault].patches_twin else None
                    twin = EngineConfig(max_bt=bt, cuda_graph=(False, False), force_padding=True, pad_seqlen_k=gv,
                                        use_async=use_async, fault=twin_fault, **base)
                    if any(eff):
                        run = EngineConfig(max_bt=bt, cuda_graph=(gv, gd), use_async=use_async, fault=fault,
                                           audit=audit, **base)
                    else:
                        run = dataclasses.replace(twin, fault=fault)
                    twin_key = None if oracle == "constants" and any(eff) else add(twin)
                    run_key = add(run)
                    repeats = [add(dataclasses.replace(run, attempt=i)) for i in range(1, repeat)] \
                        if run_key != twin_key else []
                    plans.append(ModePlan(mode, bt, run_key, twin_key, fault, eff, notes, engine, ax, repeats))
    return Plan(runs, plans)
