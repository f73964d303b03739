"""What the benchmark scripts share: where the repo and the local GSM8K copy are, and the tests' tiny seeded Llama."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_DATA = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def tiny_llama(dest: Path) -> Path:
    """Build the tests' tiny seeded Llama (tests/conftest.py) into `dest`."""
    spec = importlib.util.spec_from_file_location("evalharness_test_conftest", REPO / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    return conftest.build_tiny_llama(dest)
