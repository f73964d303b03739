"""Files the harness writes honour the umask, and the run cache keys on the interpreter that actually runs."""

from __future__ import annotations

import os
import stat

from evalharness.results import atomic_write_json
from evalharness.store import interpreter_identity, job_hash


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_json(tmp_path / "private.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def _venv(root, real):
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(f"home = {real.parent}\n")
    (root / "bin" / "python3.11").symlink_to(real)
    (root / "bin" / "python3").symlink_to("python3.11")
    (root / "bin" / "python").symlink_to("python3.11")
    return root / "bin"


def test_run_cache_keys_on_the_resolved_interpreter(tmp_path):
    """`evalharness plan` (shebang: venv/bin/python3.11) and `python -m evalharness plan` (venv/bin/python) are one
    interpreter and give one job id; another venv over the same base interpreter is another."""
    real = tmp_path / "base" / "python3.11"
    real.parent.mkdir()
    real.write_text("")
    a, b = _venv(tmp_path / "venv-a", real), _venv(tmp_path / "venv-b", real)
    key = lambda python: job_hash("workload", str(python), None, "run", {"torch": "2"}, {})  # noqa: E731
    assert key(a / "python") == key(a / "python3.11") == key(a / "python3")
    assert key(a / "python") != key(b / "python")
    assert interpreter_identity(str(a / "python")).startswith(str(real.resolve()))
