"""Invocations sharing a cache: a job folder is locked while its job runs, the second invocation waits for the
first and reads its result (never deleting a live worker's files), and a result whose samples went missing outside
the engine is never cached."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from evalharness.config import EngineConfig
from evalharness.engine import Job, collect
from evalharness.locking import LOCK_FILE, locked
from evalharness.execute import lost_outside_engine, run_job_cached
from evalharness.results import RunResult, Sample, atomic_write_json


def _job(job_dir, prompts=("a", "b")):
    # an interpreter that cannot start: if this invocation ran the job itself, the result would be a worker error
    return Job(key="k", engine=EngineConfig(max_bt=64, attn="sdpa", cuda_graph=(False, False)), model={},
               prompts=list(prompts), max_new_tokens=4, job_dir=job_dir, timeout_s=30,
               python="/nonexistent/python")


def _holder(job_dir, seconds, result: dict | None):
    """Another process holding the job folder's lock for `seconds`, writing `result` as its result.json."""
    code = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from evalharness.locking import locked
        from evalharness.results import atomic_write_json
        with locked(Path({str(job_dir)!r})):
            print("held", flush=True)
            time.sleep({seconds})
            result = json.loads({json.dumps(json.dumps(result))})
            if result:
                atomic_write_json(Path({str(job_dir)!r}) / "result.json", result)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_invocation_waits_for_the_live_job_and_reuses_its_result(tmp_path, capsys):
    job_dir = tmp_path / "runs" / "abc"
    finished = RunResult(key="k", status="ok", samples=[Sample(0, "ok", [1], "x"), Sample(1, "ok", [2], "y")])
    (job_dir).mkdir(parents=True)
    (job_dir / "results.jsonl").write_text('{"index": 0}\n')  # the live worker's partial output
    holder = _holder(job_dir, 1.5, finished.to_json())
    t0 = time.monotonic()
    r = run_job_cached(_job(job_dir), progress=False)
    waited = time.monotonic() - t0
    holder.wait(timeout=30)
    assert waited >= 1.0, "the second invocation did not wait for the lock"
    assert r.status == "ok" and [s.text for s in r.samples] == ["x", "y"]
    assert (job_dir / "results.jsonl").read_text() == '{"index": 0}\n'  # the live job's file was not deleted
    err = capsys.readouterr().err
    assert f"waiting for pid {holder.pid}" in err and str(job_dir) in err


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    job_dir = tmp_path / "j"
    holder = _holder(job_dir, 60, None)
    holder.kill()
    holder.wait()
    t0 = time.monotonic()
    with locked(job_dir):
        assert (job_dir / LOCK_FILE).exists()
    assert time.monotonic() - t0 < 5


def test_samples_lost_outside_the_engine_are_not_cached(tmp_path):
    """The worker finished cleanly (meta status done, no engine error) but its results.jsonl lost a row, e.g. another
    process deleted it: the run is failed_requests with a missing sample, and must not become a cached FAIL."""
    job = _job(tmp_path)
    atomic_write_json(tmp_path / "meta.json", {"status": "done"})
    (tmp_path / "results.jsonl").write_text('{"index": 0, "status": "ok", "token_ids": [1], "text": "x"}\n')
    r = collect(job, returncode=0, timed_out=False, wall_s=1.0)
    assert r.status == "failed_requests" and lost_outside_engine(r)
    atomic_write_json(tmp_path / "meta.json", {"status": "done", "error": "RuntimeError: engine raised"})
    assert not lost_outside_engine(collect(job, returncode=0, timed_out=False, wall_s=1.0))
    (tmp_path / "results.jsonl").write_text('{"index": 0, "status": "ok", "token_ids": [1], "text": "x"}\n'
                                            '{"index": 1, "status": "failed", "token_ids": [], "text": "", '
                                            '"error": "request failed"}\n')
    atomic_write_json(tmp_path / "meta.json", {"status": "done"})
    assert not lost_outside_engine(collect(job, returncode=0, timed_out=False, wall_s=1.0))


def test_a_damaged_cached_result_is_run_again_not_a_traceback(tmp_path):
    from evalharness.execute import cached_result

    job = _job(tmp_path)
    (tmp_path / "result.json").write_text('{"key": "k", "status": "ok", "samples": [{"index": 0')  # torn by a crash
    assert cached_result(job) is None and not (tmp_path / "result.json").exists()
    atomic_write_json(tmp_path / "result.json", {"key": "k", "status": "ok"})  # no samples: not a result either
    assert cached_result(job) is None
    good = RunResult(key="k", status="ok", samples=[Sample(0, "ok", [1], "x")])
    atomic_write_json(tmp_path / "result.json", good.to_json())
    assert cached_result(job).samples[0].text == "x"
