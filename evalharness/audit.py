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
