"""Configuration: graph modes, injected faults, and the plan of engine runs.

This module is pure: it turns what the user asked for (modes, max_batch_tokens values, faults) and what the device
can do (CUDA, decode fast path) into a set of *engine runs*, each described by the effective engine configuration
that determines its output. Runs with the same effective configuration are computed once and shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

# Graph mode -> transformers' ContinuousBatchingConfig.use_cuda_graph as (varlen path, decode path).
MODES: dict[str, tuple[bool, bool]] = {
    "off": (False, False),
    "on": (True, True),
    "varlen": (True, False),
    "decode": (False, True),
}
REFERENCE_MODE = "off"

# Attention implementations that transformers treats as FlashAttention (no attention mask, async batching default)
FLASH_LIKE_ATTN = ("flash_attention_2", "flash_attention_3", "torch-flash")
# Only these have a decode fast path (flash_attn_with_kvcache) in transformers' CB engine.
DECODE_FAST_PATH_ATTN = ("flash_attention_2", "flash_attention_3")


class UsageError(ValueError):
    """A bad input from the user: reported as one line, exit code 2."""


@dataclass(frozen=True)
class Fault:
    name: str
    description: str
    patches_twin: bool  # the padded-eager twin gets the same patch, so only graph staleness can differ
    needs_graphs: bool = False


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("pre45323", "varlen graph key without max_seqlen_k and raw (unpadded) max_seqlen_q/k passed to the "
              "kernel: the behaviour before transformers PR #45323", patches_twin=True, needs_graphs=True),
        Fault("coarse-key", "varlen graph key reduced to (num_q_tokens,)", patches_twin=False, needs_graphs=True),
        Fault("perturb", "every 7th forward step replaces the first sampled token with token+1 (a corrupted engine "
              "that needs no GPU)", patches_twin=False),
        Fault("abort", "the worker aborts (SIGABRT) after its first finished request", patches_twin=False),
        Fault("hang", "the worker sleeps past its timeout after its first finished request", patches_twin=False),
    )
}


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise UsageError("--graphs: no mode given (choose from off,on,varlen,decode)")
    for m in modes:
        if m not in MODES:
            raise UsageError(f"--graphs: unknown mode {m!r} (choose from {','.join(MODES)})")
    # keep order, drop repeats
    return list(dict.fromkeys(modes))


def parse_max_bt(text: str) -> list[int]:
    """'384', '128,256,384' or 'START:STOP:STEP' (STOP included)."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            values = list(range(start, stop + 1, step))
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--max-bt: {text!r} is not a positive integer, a list 128,256 or a range 128:1024:128")
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"--max-bt: {text!r} must give positive integers")
    return list(dict.fromkeys(values))


def parse_injections(items: list[str] | None, modes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        mode, sep, fault = item.partition("=")
        if not sep or mode not in MODES or fault not in FAULTS:
            raise UsageError(f"--inject: {item!r} must be MODE=FAULT with MODE in {','.join(MODES)} and FAULT in "
                             f"{','.join(FAULTS)}")
        if mode not in modes:
            raise UsageError(f"--inject: mode {mode!r} is not among --graphs {','.join(modes)}")
        out[mode] = fault
    return out


@dataclass(frozen=True)
class Capabilities:
    """What the device offers, decided in the parent without touching CUDA state."""

    cuda: bool
    attn: str

    @property
    def decode_fast_path(self) -> bool:
        return self.cuda and self.attn in DECODE_FAST_PATH_ATTN


@dataclass(frozen=True)
class EngineConfig:
    """The effective configuration of one engine run: everything that determines its generated tokens."""

    max_bt: int
    attn: str
    cuda_graph: tuple[bool, bool]
    force_padding: bool = False  # pad like a graph run even though graphs are off (the padded-eager twin)
    pad_seqlen_k: bool | None = None  # pad max_seqlen_k like a varlen graph run would (None: engine default)
    use_async: bool | None = None  # None: transformers decides
    fault: str | None = None

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        g = {v: k for k, v in MODES.items()}[tuple(self.cuda_graph)]
        parts = [f"graphs={g}", f"max_bt={self.max_bt}", f"attn={self.attn}"]
        if self.force_padding:
            parts.append("padded-eager")
        if self.pad_seqlen_k:
            parts.append("padded max_seqlen_k")
        if self.use_async is not None:
            parts.append(f"async={'on' if self.use_async else 'off'}")
        if self.fault:
            parts.append(f"fault={self.fault}")
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


@dataclass
class Plan:
    runs: dict[str, EngineConfig]
    modes: list[ModePlan]

    def served_by(self, key: str) -> list[str]:
        out = []
        for mp in self.modes:
            if mp.run == key:
                out.append(mp.mode)
            if mp.twin == key:
                out.append(f"{mp.mode} twin")
        return out


def plan_runs(modes: list[str], max_bts: list[int], caps: Capabilities,
              injections: dict[str, str] | None = None) -> Plan:
    """Map each (max_bt, mode) to engine runs, deduplicating runs with the same effective configuration.

    - `off` is graphs off with no padding: the accuracy reference.
    - A graph mode runs with graphs on where the device can capture them on that path; its twin is the same
      configuration with padding forced on and graphs off, which reproduces every launch constant of the graph run.
    - Where no path of a mode can capture a graph (no CUDA; `decode` without a decode fast path), the mode's run is
      its own padded-eager twin: computed once, and the mode is SKIPPED unless the two still differ (a fault).
    """
    injections = injections or {}
    runs: dict[str, EngineConfig] = {}
    plans: list[ModePlan] = []

    def add(cfg: EngineConfig) -> str:
        runs.setdefault(cfg.key(), cfg)
        return cfg.key()

    for bt in max_bts:
        for mode in modes:
            gv, gd = MODES[mode]
            fault = injections.get(mode)
            if mode == REFERENCE_MODE:
                key = add(EngineConfig(max_bt=bt, attn=caps.attn, cuda_graph=(False, False), fault=fault))
                plans.append(ModePlan(mode, bt, key, None, fault, (False, False)))
                continue
            eff = (gv and caps.cuda, gd and caps.decode_fast_path)
            notes = []
            if not caps.cuda:
                notes.append("CUDA is not available: transformers turns CUDA graphs off, so no graph is captured")
            elif gd and not caps.decode_fast_path:
                notes.append(f"attention {caps.attn!r} has no decode fast path: the decode path never captures a "
                             "graph")
            use_async = caps.cuda and any(eff) and caps.attn in FLASH_LIKE_ATTN
            twin_fault = fault if fault and FAULTS[fault].patches_twin else None
            twin = EngineConfig(max_bt=bt, attn=caps.attn, cuda_graph=(False, False), force_padding=True,
                                pad_seqlen_k=gv, use_async=use_async, fault=twin_fault)
            if any(eff):
                run = EngineConfig(max_bt=bt, attn=caps.attn, cuda_graph=(gv, gd), use_async=use_async, fault=fault)
            else:
                run = dataclasses.replace(twin, fault=fault)
            plans.append(ModePlan(mode, bt, add(run), add(twin), fault, eff, notes))
    return Plan(runs, plans)
