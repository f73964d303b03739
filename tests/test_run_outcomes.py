"""Error classes for FAIL cells, checked against a CUDA error recorded on the H200 (reports/) and PyTorch's wording."""

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
