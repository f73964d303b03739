"""Attribution of a stale graph: which graph key, on which path, with which launch constant baked in.

The worker (engine/audit_hooks.py) reports every graph capture and every replay to an `Auditor`, with the launch
constants the attention call received (max_seqlen_q, max_seqlen_k per layer type) and the batch's shape
(num_q_tokens, max_kv_read, number of sequences). At a replay it also runs the same step eagerly on the same static
inputs and hands over both sampled token vectors. The auditor compares them and, for a mismatch, names the constants
that differ between capture and replay. Pure: no torch, no transformers; written by hand since no library audits
CUDA-graph replays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

CONSTANTS = ("max_seqlen_q", "max_seqlen_k", "num_q_tokens", "max_kv_read", "num_sequences")


@dataclass(frozen=True)
class Launch:
    path: str  # "varlen" or "decode"
    key: tuple
    max_seqlen_q: int
    max_seqlen_k: dict  # layer type -> value (a single value is stored under "full_attention")
    num_q_tokens: int
    max_kv_read: int
    num_sequences: int

    def constants(self) -> dict:
        return {name: getattr(self, name) for name in CONSTANTS}


@dataclass
class Finding:
    step: int
    path: str
    key: list
    differing: dict  # constant -> {"captured": x, "replayed": y}
    requests: list[str]
    mismatched_positions: list[int]
    max_logit_diff: float | None = None


@dataclass
class Auditor:
    keep_all: bool = False  # False: stop at the first mismatching replay (--audit); True: keep going (--audit-all)
    # called with to_json() after every recorded finding, so the worker can save it before a crash or timeout
    on_finding: Callable[[dict], None] | None = None
    captured: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    replays: int = 0
    captures: int = 0
    mismatches: int = 0  # every mismatching replay that was re-run
    not_audited: int = 0  # replays after the audit stopped (--audit stops at the first mismatch)

    @property
    def stopped(self) -> bool:
        """--audit stops re-running replays after the first mismatch: the attribution is what it is for, and the
        eager re-runs cost as much as the graph run itself."""
        return not self.keep_all and bool(self.findings)

    def on_capture(self, launch: Launch) -> None:
        self.captures += 1
        self.captured[(launch.path, launch.key)] = launch

    def on_replay(self, step: int, launch: Launch, graph_tokens: list[int], eager_tokens: list[int],
                  requests: list[str], max_logit_diff: float | None = None) -> Finding | None:
        self.replays += 1
        positions = [i for i, (a, b) in enumerate(zip(graph_tokens, eager_tokens)) if a != b]
        if len(graph_tokens) != len(eager_tokens):
            positions.append(min(len(graph_tokens), len(eager_tokens)))
        if not positions:
            return None
        self.mismatches += 1
        captured = self.captured.get((launch.path, launch.key))
        differing = {}
        if captured is not None:
            for name in CONSTANTS:
                was, now = getattr(captured, name), getattr(launch, name)
                if was != now:
                    differing[name] = {"captured": was, "replayed": now}
        finding = Finding(step, launch.path, list(launch.key), differing, list(requests), positions, max_logit_diff)
        if self.keep_all or not self.findings:
            self.findings.append(finding)
            if self.on_finding is not None:
                self.on_finding(self.to_json())
        return finding

    @property
    def first(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    def to_json(self) -> dict:
        return {"captures": self.captures, "replays_audited": self.replays,
                "mismatching_replays": self.mismatches, "replays_not_audited": self.not_audited,
                "keep_all": self.keep_all,
                "first": asdict(self.first) if self.first else None,
                "findings": [asdict(f) for f in self.findings]}


def describe(attribution: dict | None) -> str:
    """One line for reports: the first mismatching replay and the constants that differed."""
    if not attribution:
        return "not audited"
    first = attribution.get("first")
    if not first:
        return (f"audit: {attribution['replays_audited']} graph replays re-run eagerly, none differed "
                f"({attribution['captures']} graphs captured)")
    consts = ", ".join(f"{k} {v['captured']} at capture vs {v['replayed']} at replay"
                       for k, v in first["differing"].items()) or "no recorded constant differed"
    return (f"first stale replay at step {first['step']}: {first['path']} graph key {tuple(first['key'])}, {consts}; "
            f"{len(first['mismatched_positions'])} of {len(first['requests'])} sampled tokens differ "
            f"(requests {', '.join(first['requests'][:5])}{'…' if len(first['requests']) > 5 else ''})")


# --- the stale-constant check ----------------------------------------------------------------------------------
# Cheap, on by default in every graph run: no eager re-run, only the host-side launch constants. At a capture the
# worker records the constants the forward received for that graph key; at every replay it records the constants the
# eager (padded) forward of the batch being replayed would receive (the same host-side code computed them for this
# batch: the graph ignores them) and compares. Constants are named as the forward's keyword arguments: an int is its
# value (`max_seqlen_q`), a per-layer-type dict one entry per type (`max_seqlen_k[sliding_attention]`), a tensor its
# shape (`cu_seq_lens_q.shape`: padded sequence count; `block_table.shape`: block-table width), a list of tensors
# one shape per item (`read_index[0].shape`).

SHOWN_FINDINGS = 10  # stale constants kept in full per run (all are counted)


@dataclass
class ConstantCheck:
    on_finding: Callable[[dict], None] | None = None  # called with to_json() at the first finding
    captured: dict = field(default_factory=dict)  # (io id, path, key) -> constants
    captures: int = 0
    replays_checked: int = 0
    stale_replays: int = 0
    total: int = 0  # stale (replay, constant) pairs
    names: dict = field(default_factory=dict)  # constant name -> count
    first: list = field(default_factory=list)

    def on_capture(self, io: int, path: str, key: tuple, constants: dict) -> None:
        self.captures += 1
        self.captured[(io, path, tuple(key))] = constants

    def on_replay(self, io: int, step: int, path: str, key: tuple, constants: dict) -> list[dict]:
        """Compare a replay's needed constants with its capture's; returns the stale ones (also recorded)."""
        self.replays_checked += 1
        captured = self.captured.get((io, path, tuple(key)))
        if captured is None:  # captured before the check was installed, or by another IO: nothing to compare
            return []
        def js(v):
            return list(v) if isinstance(v, tuple) else v

        stale = [{"key": list(key), "path": path, "step": step, "name": name, "captured": js(captured.get(name)),
                  "needed": js(value)}
                 for name, value in constants.items() if captured.get(name) != value]
        stale += [{"key": list(key), "path": path, "step": step, "name": name, "captured": js(value), "needed": None}
                  for name, value in captured.items() if name not in constants]
        if stale:
            self.stale_replays += 1
            self.total += len(stale)
            for f in stale:
                self.names[f["name"]] = self.names.get(f["name"], 0) + 1
            room = SHOWN_FINDINGS - len(self.first)
            was_empty = not self.first
            self.first.extend(stale[:max(0, room)])
            if was_empty and self.on_finding is not None:
                self.on_finding(self.to_json())
        return stale

    def to_json(self) -> dict:
        return {"captures": self.captures, "replays_checked": self.replays_checked,
                "stale_replays": self.stale_replays, "total": self.total, "names": dict(self.names),
                "first": list(self.first)}


def describe_constants(check: dict | None) -> str:
    """One line for reports."""
    if not check:
        return "stale-constant check: not run (no graph captured)"
    if not check.get("total"):
        return (f"stale-constant check: {check['replays_checked']} graph replays, every launch constant as at "
                f"capture ({check['captures']} graphs captured)")
    f = check["first"][0]
    names = ", ".join(f"{n} ({c})" for n, c in check["names"].items())
    return (f"stale-constant check: {check['stale_replays']} of {check['replays_checked']} graph replays ran with "
            f"stale constants: {names}; first at step {f['step']}: {f['path']} graph key {tuple(f['key'])}, "
            f"{f['name']} captured {f['captured']}, needed {f['needed']}")
