"""How a run ends: error classes for FAIL cells (checked against a CUDA error recorded on the H200 in reports/ and
PyTorch's wording), what a killed worker leaves behind, and the hang limits."""

from __future__ import annotations

from pathlib import Path

from evalharness.engine import classify

REPO = Path(__file__).resolve().parents[1]

# PyTorch appends this hint to every CUDA error, whatever its cause
HINT = ("CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might "
        "be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\nCompile with `TORCH_USE_CUDA_DSA` to "
        "enable device-side assertions.")


def test_graph_capture_failure_recorded_on_h200():
    log = next((REPO / "reports" / "h200-positive-controls" / "logs").glob("tf554-e7cf*-worker.log")).read_text()
    assert classify(log) == "cuda_graph_capture"


def test_the_device_side_assertion_hint_is_not_an_assert():
    assert classify(f"torch.AcceleratorError: CUDA error: an illegal memory access was encountered\n{HINT}") \
        == "cuda_illegal_memory_access"
    assert classify(f"torch.AcceleratorError: CUDA error: misaligned address\n{HINT}") == "cuda_error"
    assert classify(f"RuntimeError: CUDA error: device-side assert triggered\n{HINT}") == "cuda_device_assert"
    assert classify("ValueError: nothing CUDA about it") is None


def test_a_run_killed_after_an_audit_finding_keeps_its_attribution(tmp_path):
    """The worker saves each audit finding as it happens (audit.json); a worker then killed by the timeout leaves no
    meta.json, and the parent still reports the attribution with the hang."""
    from evalharness.audit import Auditor, Launch
    from evalharness.config import EngineConfig
    from evalharness.engine import Job, collect
    from evalharness.results import atomic_write_json

    job = Job(key="k", engine=EngineConfig(max_bt=384, attn="torch-flash", cuda_graph=(True, False), audit="first"),
              model={}, prompts=["a", "b"], max_new_tokens=4, job_dir=tmp_path, timeout_s=5)
    (tmp_path / "results.jsonl").write_text('{"index": 0, "status": "ok", "token_ids": [1], "text": "x"}\n')
    auditor = Auditor(on_finding=lambda j: atomic_write_json(tmp_path / "audit.json", j))
    captured = Launch("varlen", (64, 512), 5, {"full_attention": 500}, 64, 512, 2)
    auditor.on_capture(captured)
    auditor.on_replay(7, Launch("varlen", (64, 512), 40, {"full_attention": 510}, 64, 512, 2), [1, 2], [1, 3],
                      ["req_0", "req_1"])
    r = collect(job, returncode=-9, timed_out=True, wall_s=5.0)
    assert r.status == "timeout" and r.error_class == "hang"
    assert [s.status for s in r.samples] == ["ok", "missing"]
    first = r.meta["audit"]["first"]
    assert first["step"] == 7 and first["differing"]["max_seqlen_q"] == {"captured": 5, "replayed": 40}


def test_the_hang_signal_is_a_stall_and_a_total_limit_only_when_given():
    from evalharness.config import EngineConfig
    from evalharness.engine import Job
    from evalharness.engine.process import default_limits

    gpu, cpu = default_limits(cuda=True), default_limits(cuda=False)
    assert gpu.total_s is None and cpu.total_s is None  # no total limit unless --timeout-s
    assert 0 < gpu.stall_s <= cpu.stall_s <= cpu.load_stall_s
    job = Job(key="k", engine=EngineConfig(max_bt=8, attn="sdpa", cuda_graph=(False, False)), model={}, prompts=[],
              max_new_tokens=1, job_dir=Path("."), timeout_s=30, stall_s=7)
    assert (job.limits().total_s, job.limits().stall_s) == (30, 7)
