"""MPS (engine/mps.py): one private MPS control daemon per GPU, started with that GPU visible, checked with a client
and told to quit at the end; workers get its pipe folder and no CUDA_VISIBLE_DEVICES (the setup NVIDIA documents; a
client that kept CUDA_VISIBLE_DEVICES=1 under a server started on GPU 1 saw no GPU on the H200); the default starts
daemons only where workers share a GPU and falls back to time-slicing with one line, --mps makes a failure one usage
error; and a job that crashes is retried outside MPS. This machine has no NVIDIA driver: a program named like
nvidia-cuda-mps-control stands in for the daemon, and a script for the client check, each recording how it ran."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from evalharness.config import UsageError
from evalharness.engine import mps
from evalharness.engine.mps import Daemon, Daemons, Unavailable
from evalharness.engine.process import worker_env

CONTROL = """#!{python}
import json, os, sys
record = {{"argv": sys.argv[1:], "stdin": "" if "-d" in sys.argv else sys.stdin.read(),
          **{{k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY",
                                            "CUDA_MPS_LOG_DIRECTORY")}}}}
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
if "-d" in sys.argv and {fail!r}:
    print("An instance of this daemon is already running", file=sys.stderr)
    sys.exit(1)
"""

# the client check (mps.CLIENT_CHECK) as a stand-in: it records its environment as a call "client"
CLIENT = """
import json, os, sys
record = {{"argv": "client", **{{k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY")}}}}
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
if {fail!r}:
    sys.exit("cuInit failed: CUDA_ERROR_MPS_CONNECTION_FAILED")
"""


def control(tmp_path: Path, monkeypatch, fail: bool = False, client_fails: bool = False) -> Path:
    """An nvidia-cuda-mps-control on PATH and a client check, both logging each call (JSON lines) to the returned
    file."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "nvidia-cuda-mps-control"
    exe.write_text(CONTROL.format(python=sys.executable, log=str(log), fail=fail))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(mps, "CLIENT_CHECK", CLIENT.format(log=str(log), fail=client_fails))
    return log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_one_daemon_per_gpu_visible_to_it_workers_without_cuda_visible_devices(tmp_path, monkeypatch):
    log = control(tmp_path, monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # as in a stream pinned to one GPU
    with Daemon(["0", "1", "0"]) as d:
        started = calls(log)
        assert [c["argv"] for c in started] == [["-d"], "client", ["-d"], "client"]  # per distinct GPU, checked
        daemons, clients = started[0::2], started[1::2]
        assert [c["CUDA_VISIBLE_DEVICES"] for c in daemons] == ["0", "1"]
        assert [c["CUDA_VISIBLE_DEVICES"] for c in clients] == [None, None]  # the client check runs as a worker
        assert [c["CUDA_MPS_PIPE_DIRECTORY"] for c in clients] == [c["CUDA_MPS_PIPE_DIRECTORY"] for c in daemons]
        env1 = worker_env(None, "1", 2, d.worker_env("1"))
        assert "CUDA_VISIBLE_DEVICES" not in env1  # the server's GPU is the client's
        assert env1["CUDA_MPS_PIPE_DIRECTORY"] == daemons[1]["CUDA_MPS_PIPE_DIRECTORY"]
        assert Path(env1["CUDA_MPS_PIPE_DIRECTORY"]).is_dir()
        assert d.worker_env("0")["CUDA_MPS_PIPE_DIRECTORY"] != env1["CUDA_MPS_PIPE_DIRECTORY"]
        folder = Path(env1["CUDA_MPS_PIPE_DIRECTORY"]).parent
    quits = calls(log)[4:]
    assert [c["stdin"] for c in quits] == ["quit\n", "quit\n"]
    assert {c["CUDA_MPS_PIPE_DIRECTORY"] for c in quits} == {c["CUDA_MPS_PIPE_DIRECTORY"] for c in daemons}
    assert not folder.exists()
    # without --devices: one daemon on the invocation's own GPUs (inherited), its workers without the variable
    log.unlink()
    with Daemon(None) as d:
        assert [c["CUDA_VISIBLE_DEVICES"] for c in calls(log)] == ["3", None]
        assert "CUDA_VISIBLE_DEVICES" not in worker_env(None, None, 2, d.worker_env(None))
    assert "CUDA_VISIBLE_DEVICES" in worker_env(None, None, 2, None)  # without --mps nothing changes


def test_a_daemon_that_cannot_start_or_serve_a_client_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    log = control(tmp_path / "refuses", monkeypatch, fail=True)
    with pytest.raises(Unavailable, match=r"^nvidia-cuda-mps-control -d exited 1: An instance of this daemon is "
                                          r"already running$"):
        Daemon(["0"]).__enter__()
    assert list((tmp_path / "tmp").iterdir()) == [] and [c["argv"] for c in calls(log)] == [["-d"]]
    # -d starts, but its server cannot serve a client (where MPS cannot work, only a client finds out): told to quit
    log = control(tmp_path / "no-server", monkeypatch, client_fails=True)
    with pytest.raises(Unavailable, match=r"^a client of nvidia-cuda-mps-control could not use the GPU: cuInit "
                                          r"failed: CUDA_ERROR_MPS_CONNECTION_FAILED$"):
        Daemon(None).__enter__()
    assert [c["argv"] or c["stdin"] for c in calls(log)] == [["-d"], "client", "quit\n"]
    assert list((tmp_path / "tmp").iterdir()) == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(Unavailable, match="^nvidia-cuda-mps-control is not on PATH"):
        Daemon(None).__enter__()


def test_by_default_daemons_start_where_workers_share_a_gpu_and_one_that_cannot_is_one_line(tmp_path, monkeypatch,
                                                                                            capsys):
    """mps.Daemons, what execute.run_jobs asks once it knows whether workers share a GPU: by default (auto) a daemon
    starts only where they do, once; --mps starts one in any case; --no-mps never. A daemon that cannot start is one
    line by default (the workers then time-slice the GPU) and a usage error with --mps."""
    import contextlib

    log = control(tmp_path / "works", monkeypatch)
    with contextlib.ExitStack() as stack:
        auto = Daemons("auto", None, stack)
        assert auto(shared=False) is None and not log.exists()  # a GPU per worker: nothing to share
        env = auto(shared=True)
        assert "CUDA_MPS_PIPE_DIRECTORY" in env(None) and auto(shared=True) is env  # started once
        assert Daemons("off", None, stack)(shared=True) is None
        assert [c["argv"] for c in calls(log)] == [["-d"], "client"]
        assert Daemons("on", ["0"], stack)(shared=False) is not None
        assert [c["argv"] for c in calls(log)][2:] == [["-d"], "client"]
    assert [c["stdin"] for c in calls(log)[4:]] == ["quit\n", "quit\n"]
    assert capsys.readouterr().err.splitlines() == ["evalharness: MPS: the workers sharing a GPU run their kernels "
                                                    "side by side (--no-mps: time-slice it instead)"] * 2
    log = control(tmp_path / "refuses", monkeypatch, fail=True)
    with contextlib.ExitStack() as stack:
        auto = Daemons("auto", None, stack)
        assert auto(shared=True) is None and auto(shared=True) is None
        assert [c["argv"] for c in calls(log)] == [["-d"]]  # tried once
        with pytest.raises(UsageError, match=r"^--mps: nvidia-cuda-mps-control -d exited 1: An instance"):
            Daemons("on", None, stack)(shared=False)
    assert capsys.readouterr().err.splitlines() == [
        "evalharness: no MPS (nvidia-cuda-mps-control -d exited 1: An instance of this daemon is already running): the "
        "workers sharing a GPU time-slice it (--no-mps: do not try)"]


def test_mps_needs_a_gpu(tmp_path):
    from evalharness.plan import prepare_jobs
    from evalharness.settings import make

    model = {"path": "fake-model", "gguf_file": None, "dtype": "bf16", "trust_remote_code": False, "label": "fake"}
    with pytest.raises(UsageError, match="--mps needs a CUDA GPU"):
        prepare_jobs(make(limit=2, out=tmp_path / "o", mps="on", attns=["sdpa"]), cuda=False, model=model,
                     probes={"default": {"transformers": "fake", "tuple_graphs": True}},
                     interpreters={"default": ("python", None)})


def _pool_of_off_jobs(tiny_llama, gsm8k_test, tmp_path, fault: str, limit: int = 2, max_bts=(32,), env=None):
    """The `off` jobs of a tiny-model plan with `fault` injected, run on a one-slot pool of real workers (`env`: what
    the pool adds to each first attempt's worker, as --mps does). Returns (jobs, results by key, pool report)."""
    from evalharness import schedule
    from evalharness.engine.pool import run_pool
    from evalharness.plan import prepare_jobs
    from evalharness.settings import make

    s = make(model=str(tiny_llama), data=str(gsm8k_test), limit=limit, fewshot=0, max_new_tokens=2, dtype="fp32",
             modes=["off"], max_bts=list(max_bts), inject=[f"off={fault}"], out=tmp_path / "o", progress=False)
    jobs = prepare_jobs(s).jobs
    results, report = run_pool(jobs, schedule.Budget(1, 1, "test"), progress=False, env=env)
    return jobs, results, report


@pytest.mark.slow
def test_a_job_that_crashes_under_mps_is_retried_outside_it(tiny_llama, gsm8k_test, tmp_path):
    """The pool starts its workers with the daemon's environment, but a crashed job's retry in a fresh worker without
    it: alone in its own CUDA context, its crash is its own."""
    seen = []

    def env(device):
        seen.append(device)
        return {"EVALHARNESS_MPS_PIPE_TEST": str(tmp_path)}

    _, results, report = _pool_of_off_jobs(tiny_llama, gsm8k_test, tmp_path, "abort", limit=1, env=env)
    [result] = results.values()
    assert result.status == "crash" and result.meta["attempts"] == 2
    assert [(w["mps"], w["end"]) for w in report.workers] == [(True, "crash"), (False, "crash")]
    assert seen == [None]  # asked once: for the first attempt only


@pytest.mark.slow
@pytest.mark.parametrize("fault, retried", [("mps-neighbour", True), ("gpu-fault", False)])
def test_a_job_that_fails_with_a_cuda_error_under_mps_is_retried_outside_it(fault, retried, tiny_llama, gsm8k_test,
                                                                            tmp_path):
    """Under MPS a neighbour's GPU fault fails a job with a CUDA error caught in the engine, without a crash (seen on
    the H200: reports/h200-speed/one-gpu/lease-3/gemma-mps-fault). Such a job is retried in a worker of its own, where
    it runs clean. A failure of another class (here gpu-fault's 'needs a CUDA GPU' on this machine) is the job's own:
    not retried."""
    _, results, report = _pool_of_off_jobs(tiny_llama, gsm8k_test, tmp_path, fault,
                                           env=lambda device: {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe")})
    [result] = results.values()
    ends = [(w["mps"], w["end"]) for w in report.workers]
    if retried:
        assert (result.status, result.meta["attempts"]) == ("ok", 2)
        assert ends == [(True, "failed_requests"), (False, "idle")]
    else:
        assert (result.status, result.meta["attempts"], result.error_class) == ("failed_requests", 1, "failed_requests")
        assert ends == [(True, "idle")]  # kept for the next job


@pytest.mark.slow
def test_a_cuda_error_caught_in_the_engine_is_retried_in_a_fresh_worker_like_a_crash(tiny_llama, gsm8k_test, tmp_path,
                                                                                    monkeypatch):
    """A CUDA error caught inside the engine leaves the worker alive, but its CUDA context may be dead (sticky errors):
    the next job, another cell's, would fail in it. So, also outside MPS, its worker is retired and the job runs once
    more in a fresh worker, as after a crash; one that fails again keeps its error. (mps-neighbour fires where
    CUDA_MPS_PIPE_DIRECTORY is set: here in the environment every worker inherits, while the pool starts none through
    MPS, so it fails in every attempt.)"""
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    jobs, results, report = _pool_of_off_jobs(tiny_llama, gsm8k_test, tmp_path, "mps-neighbour", max_bts=(32, 64))
    assert len(jobs) == 2
    assert {(r.status, r.error_class, r.meta["attempts"]) for r in results.values()} == {
        ("failed_requests", "cuda_illegal_memory_access", 2)}
    assert [(w["mps"], w["end"], len(w["jobs"])) for w in report.workers] == [(False, "failed_requests", 1)] * 4


@pytest.mark.slow
def test_by_default_a_daemon_starts_for_workers_sharing_a_gpu_only_with_jobs_to_run_and_quits(tiny_llama, gsm8k_test,
                                                                                              tmp_path, monkeypatch):
    """`gsm8k` through the pipeline, no MPS flag: the first invocation has two jobs for two workers on one GPU, so one
    daemon starts before them (checked with a client) and is told to quit after them, and both workers record `mps`;
    the same invocation again finds every run cached and starts no daemon at all. (The plan is made as for a GPU; the
    workers run `off` on this CPU all the same.)"""
    from evalharness.pipeline import evaluate
    from evalharness.settings import make

    log = control(tmp_path, monkeypatch)
    s = make(model=str(tiny_llama), data=str(gsm8k_test), limit=1, fewshot=0, max_new_tokens=2, dtype="fp32",
             modes=["off"], max_bts=[32, 64], attns=["sdpa"], out=tmp_path / "o", progress=False, jobs=2)
    assert s.execution.mps == "auto"
    first = evaluate(s, cuda=True)
    assert [c["argv"] or c["stdin"].strip() for c in calls(log)] == [["-d"], "client", "quit"]
    pool = json.loads((tmp_path / "o" / "summary.json").read_text())["pool"]
    assert [w["mps"] for w in pool["processes"]] == [True, True]
    log.unlink()
    again = evaluate(s, cuda=True)
    assert not log.exists() and again.results.keys() == first.results.keys()
    assert [r.samples for r in again.results.values()] == [r.samples for r in first.results.values()]
