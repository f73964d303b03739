"""The worker pool: scheduling decisions (critical path, reuse, budget), the model geometry --jobs auto reads, the
stall-based hang signal against real processes, and end to end on CPU through the real engine: one model load for
the jobs of one patch set, results identical to a fresh worker per job, a crashing job retired and retried."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evalharness import schedule
from evalharness.config import Capabilities, EngineConfig, plan_runs
from evalharness.engine import Job
from evalharness.engine.process import Limits, Worker

GIB = 2**30


def job(engine: EngineConfig, model: dict | None = None, tmp: Path = Path("."), **kw) -> Job:
    return Job(key=engine.key(), engine=engine, model=model or {"path": "m"}, prompts=["p"], max_new_tokens=1,
               job_dir=tmp / engine.key(), **kw)


# --- pure: order, reuse, budget ----------------------------------------------------------------------------------

def test_critical_path_puts_twins_then_eager_off_before_graph_runs():
    plan = plan_runs(["off", "on", "varlen", "decode"], [384], Capabilities(cuda=True, attn="torch-flash"))
    ordered = schedule.critical_path_order([job(cfg) for cfg in plan.runs.values()])
    kinds = ["twin" if j.engine.force_padding else "graphs" if any(j.engine.cuda_graph) else "off" for j in ordered]
    # two padded-eager twins (on/varlen's, decode's) lead, then the eager reference, then the three graph runs
    assert kinds == ["twin", "twin", "off", "graphs", "graphs", "graphs"]
    audited = EngineConfig(max_bt=384, attn="sdpa", cuda_graph=(True, True), audit="first")
    assert schedule.job_cost(audited) > schedule.job_cost(EngineConfig(max_bt=384, attn="sdpa",
                                                                       cuda_graph=(True, True)))


def test_twins_share_a_worker_with_plain_runs_but_not_with_other_patches():
    base = dict(max_bt=384, attn="sdpa")
    off = job(EngineConfig(cuda_graph=(False, False), **base))
    twin = job(EngineConfig(cuda_graph=(False, False), force_padding=True, pad_seqlen_k=True, **base))
    graphs = job(EngineConfig(cuda_graph=(True, True), **base))
    key = schedule.worker_key(off)
    assert schedule.worker_key(twin) == key == schedule.worker_key(graphs)  # padding is switched per job
    for other in (job(EngineConfig(cuda_graph=(True, True), fault="pre45323", **base)),
                  job(EngineConfig(cuda_graph=(True, True), audit="first", **base)),
                  job(EngineConfig(cuda_graph=(True, True), max_bt=384, attn="eager")),
                  job(EngineConfig(cuda_graph=(True, True), **base), model={"path": "other"}),
                  job(EngineConfig(cuda_graph=(True, True), **base), pythonpath="/tf554")):
        assert schedule.worker_key(other) != key
    assert schedule.single_use(EngineConfig(cuda_graph=(True, True), audit="first", **base))
    assert schedule.single_use(EngineConfig(cuda_graph=(False, False), fault="abort", **base))
    assert not schedule.single_use(twin.engine)


def test_next_job_prefers_the_current_worker_only_among_the_slowest():
    base = dict(max_bt=384, attn="sdpa")
    twin_a = job(EngineConfig(cuda_graph=(False, False), force_padding=True, pad_seqlen_k=True, **base))
    twin_b = job(EngineConfig(cuda_graph=(False, False), force_padding=True, pad_seqlen_k=False, **base),
                 model={"path": "b"})
    graphs_b = job(EngineConfig(cuda_graph=(True, True), **base), model={"path": "b"})
    pending = [twin_a, twin_b, graphs_b]
    assert schedule.next_job(pending, schedule.worker_key(twin_b)) == 1
    assert schedule.next_job(pending, None) == 0
    # a matching graph run does not jump ahead of a slower twin
    assert schedule.next_job([twin_a, graphs_b], schedule.worker_key(graphs_b)) == 0
    with pytest.raises(ValueError):
        schedule.next_job([], None)


def test_auto_budget_is_bounded_by_memory_cores_and_jobs():
    # H200-like: 16 cores, 139 GiB free, 20 GiB per worker -> 6 by memory, 8 by cores
    b = schedule.auto_budget(n_jobs=10, cores=16, cuda=True, free_bytes=[139 * GIB], need_bytes=20 * GIB)
    assert (b.workers, b.threads) == (6, 2)
    b = schedule.auto_budget(n_jobs=10, cores=16, cuda=True, free_bytes=[139 * GIB], need_bytes=3 * GIB)
    assert (b.workers, b.threads) == (8, 2)
    b = schedule.auto_budget(n_jobs=5, cores=16, cuda=True, free_bytes=[139 * GIB], need_bytes=3 * GIB)
    assert (b.workers, b.threads) == (5, 3)
    assert b.workers * b.threads <= 16
    # memory too small for even one: still one worker; a CPU: cores bound it
    assert schedule.auto_budget(4, 16, True, free_bytes=[1 * GIB], need_bytes=3 * GIB).workers == 1
    assert schedule.auto_budget(4, 2, False).workers == 1
    assert "worker(s) x" in b.line() and "GiB free" in b.line()
    assert schedule.fixed_budget(3, 8).threads == 2 and schedule.fixed_budget(4, 2).threads == 1


def test_kv_cache_bytes_follow_the_model_geometry():
    # Gemma 3 270M: 18 layers, 1 KV head of 256, bf16; 300 requests of ~1100+256 tokens in 256-slot blocks
    blocks = 300 * 6 + 16
    assert schedule.kv_cache_bytes(18, 1, 256, 2, 256, blocks) == 18 * 256 * 2 * 2 * 256 * blocks
    kv = schedule.kv_cache_bytes(18, 1, 256, 2, 256, blocks)
    assert 7.9 * GIB < kv < 8.1 * GIB  # the workload-sized cache dominates, not the 0.5 GB of weights
    need = schedule.worker_bytes(268_000_000, 2, kv, 384, 262_144)
    logits = 384 * 262_144 * 4  # one fp32 logits row per batch token
    assert kv + 268_000_000 * 2 + logits + 1.5 * GIB < need < 1.3 * (kv + 268_000_000 * 2 + 3 * logits) + 1.5 * GIB


def test_status_line_and_estimate():
    assert schedule.estimate_left(60, 100, 400) == 180
    assert schedule.estimate_left(60, 0, 400) is None
    line = schedule.status_line(2, 5, 100, 400, 60, running=3)
    assert line == "evalharness: status: jobs 2/5 done (3 running), samples 100/400, elapsed 1m00s, ~3m00s left"


# --- model geometry for --jobs auto ------------------------------------------------------------------------------

def test_geometry_from_safetensors_and_gguf(tmp_path):
    import numpy as np
    from gguf import GGUFWriter
    from safetensors.numpy import save_file

    from evalharness import sizing

    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 3, "num_attention_heads": 4,
                                                    "num_key_value_heads": 2, "hidden_size": 64, "vocab_size": 100}))
    save_file({"a": np.zeros((10, 64), np.float32), "b": np.zeros((7,), np.float32)}, str(folder / "model.safetensors"))
    assert sizing.geometry({"path": str(folder)}) == sizing.Geometry(647, 3, 2, 16, 100)

    w = GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_block_count(5)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_embedding_length(256)
    w.add_token_list([f"t{i}" for i in range(50)])
    w.add_tensor("token_embd.weight", np.zeros((50, 256), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert sizing.geometry({"path": str(tmp_path), "gguf_file": "m.gguf"}) == sizing.Geometry(50 * 256, 5, 2, 32, 50)
    assert sizing.geometry({"path": "org/hub-model"}) is None
    need = sizing.per_worker_bytes({"path": str(folder), "dtype": "fp32"}, ["x" * 300] * 4, 16, 64)
    assert need > 1.5 * GIB


# --- the hang signal, against real processes ---------------------------------------------------------------------

FAKE = textwrap.dedent("""
    import sys, time
    for line in sys.stdin:
        print("PHASE generate", flush=True)
        for i in range({beats}):
            time.sleep(0.2)
            print("BEAT", flush=True)
        time.sleep({silence})
        print("DONE 0", flush=True)
""")


def fake_worker(tmp_path: Path, beats: int, silence: float) -> Worker:
    script = tmp_path / "fake.py"
    script.write_text(FAKE.format(beats=beats, silence=silence))
    return Worker("k", sys.executable, None, None, 1, tmp_path / "log", argv=[sys.executable, str(script)])


def test_a_slow_run_that_beats_is_never_stopped_a_silent_one_is(tmp_path):
    limits = Limits(stall_s=1.0, load_stall_s=5.0)
    w = fake_worker(tmp_path, beats=15, silence=0)  # 3 s, longer than the stall limit, beating all along
    first = w.run(tmp_path, limits)
    assert (first.returncode, first.stopped) == (0, None) and first.wall_s > 2.5 and w.alive
    second = w.run(tmp_path, limits)  # the same process serves a second job
    assert second.stopped is None and w.alive
    w.close()
    silent = fake_worker(tmp_path, beats=1, silence=30)
    out = silent.run(tmp_path, limits)
    assert out.stopped == "stall" and 1.0 < out.wall_s < 5 and not silent.alive
    total = fake_worker(tmp_path, beats=50, silence=0).run(tmp_path, Limits(stall_s=5, total_s=1.0))
    assert total.stopped == "total" and total.wall_s < 4


# --- end to end through the real engine (slow) -------------------------------------------------------------------

def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalharness", *args], capture_output=True, text=True, timeout=timeout)


def common(model: Path, data: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--limit", "3", "--fewshot", "0", "--max-new-tokens", "8",
            "--dtype", "fp32", "--no-progress", "--max-bt", "32,64", "--graphs", "off,on"]


@pytest.mark.slow
def test_one_worker_one_model_load_same_tokens_as_fresh_workers(tiny_llama, gsm8k_test, tmp_path):
    """Four jobs (off and the padded twin at two max_bt) share one worker and one model load, and every run's tokens
    equal those of a fresh worker per job (run_engine)."""
    from evalharness.engine import run_engine
    from evalharness.results import read_jsonl

    out = tmp_path / "pooled"
    proc = cli("gsm8k", *common(tiny_llama, gsm8k_test), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "evalharness: 1 worker(s) x" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    pool = summary["pool"]
    assert pool["model_loads"] == 1 and len(pool["processes"]) == 1 and len(pool["processes"][0]["jobs"]) == 4
    assert pool["processes"][0]["load_s"] > 0
    # where the time went: before the first job (plan, probes), the jobs, no confirmation round (a clean run)
    phases = pool["phases"]
    assert phases["prepare_s"] > 0 and phases["jobs_s"] > pool["processes"][0]["load_s"] and phases["confirm_s"] < 1
    steps = pool["prepare"]  # the planning by step, within its phase
    assert set(steps) == {"task_s", "cuda_s", "probes_s", "plan_s"} and steps["task_s"] > 0 and steps["probes_s"] > 0
    assert sum(steps.values()) <= phases["prepare_s"] + 0.05
    assert "1 worker process(es), 1 model load(s)" in (out / "report.md").read_text()
    loads = sorted(r["load_s"] for r in summary["runs"].values())
    assert loads[0] == 0 and loads[-1] > 0 and sum(x > 0 for x in loads) == 1
    # slowest first: the padded twins ran before the off runs
    order = pool["processes"][0]["jobs"]
    assert [summary["runs"][k]["engine"]["force_padding"] for k in order] == [True, True, False, False]
    # each job's worker-side account of its time: the worker's start-up on its first job only, and with load and
    # generation inside the job's wall as the parent measured it
    for i, k in enumerate(order):
        r = summary["runs"][k]
        t = r["timings"]
        assert (t["worker_start_s"] is not None) is (i == 0) and t["worker_start_s"] != 0
        parts = [t["imports_s"], t["setup_s"], r["load_s"], r["generate_s"], t["finish_s"], t["worker_start_s"] or 0]
        assert all(x >= 0 for x in parts) and sum(parts) <= r["job_wall_s"]
    # the jobs that ran on a reused worker, each against a fresh worker of its own (the first job ran on a fresh
    # worker, right after its one model load, as a fresh worker would: the model load they all share is checked by
    # the three others). The fresh workers are independent processes: started side by side, not one after another.
    reused = [out / "runs" / summary["runs"][k]["id"] for k in order[1:]]
    assert len(reused) == 3 and all(d.is_dir() for d in reused)

    def fresh_run(run_dir: Path):
        spec = json.loads((run_dir / "job.json").read_text())
        return run_engine(Job(key="fresh", engine=EngineConfig.from_json(spec["engine"]), model=spec["model"],
                              prompts=spec["prompts"], max_new_tokens=spec["max_new_tokens"],
                              job_dir=tmp_path / "fresh" / run_dir.name), progress=False)

    with ThreadPoolExecutor(len(reused)) as ex:
        fresh_runs = list(ex.map(fresh_run, reused))
    for run_dir, fresh in zip(reused, fresh_runs):
        pooled = {r["index"]: r["token_ids"] for r in read_jsonl(run_dir / "results.jsonl")}
        assert fresh.status == "ok" and {s.index: s.token_ids for s in fresh.samples} == pooled


@pytest.mark.slow
def test_the_parents_idle_work_runs_once_in_its_main_thread_while_the_workers_run(tiny_llama, gsm8k_test, tmp_path):
    """`idle` (the parent's own work that needs no job: evaluate() passes pipeline.import_for_reports, the imports
    of scoring and the reports) runs once, in the main thread, before the last job finishes; with one slot the main
    thread runs the jobs itself and it is not called. The imports it does for evaluate() are real."""
    import threading
    import time

    from evalharness.engine.pool import run_pool
    from evalharness.pipeline import REPORT_IMPORTS, import_for_reports
    from evalharness.plan import prepare_jobs
    from evalharness.settings import make

    def jobs(out: str):
        s = make(model=str(tiny_llama), data=str(gsm8k_test), limit=1, fewshot=0, max_new_tokens=2, dtype="fp32",
                 modes=["off", "on"], max_bts=[32], out=tmp_path / out, progress=False)
        return prepare_jobs(s).jobs  # `off` and the padded twin

    calls, finished = [], []

    def idle():
        calls.append((threading.current_thread() is threading.main_thread(), time.monotonic()))

    results, _ = run_pool(jobs("two"), schedule.Budget(2, 1, "test"), progress=False, idle=idle,
                          on_result=lambda job, result: finished.append(time.monotonic()))
    assert len(results) == 2 and all(r.status == "ok" for r in results.values())
    assert len(calls) == 1 and calls[0][0] and calls[0][1] < max(finished)
    calls.clear()
    run_pool(jobs("one"), schedule.Budget(1, 1, "test"), progress=False, idle=idle)
    assert calls == []
    import_for_reports()
    assert all(name in sys.modules for name in REPORT_IMPORTS)


@pytest.mark.slow
def test_a_crash_retires_its_worker_and_the_job_is_retried_in_a_fresh_one(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "crash"
    # --jobs 2: the clean runs' worker beside the crashing one (two 1-thread workers), not after it
    proc = cli("gsm8k", *common(tiny_llama, gsm8k_test), "--max-bt", "32", "--inject", "on=abort", "--jobs", "2",
               "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    on = summary["modes"]["on"]
    assert on["verdict"] == "FAIL" and on["error_class"] == "sigabrt"
    workers = summary["pool"]["processes"]
    aborted = [w for w in workers if w["end"] == "crash"]
    assert len(aborted) == 2 and aborted[0]["jobs"] == aborted[1]["jobs"]  # tried twice, each in a fresh worker
    assert summary["modes"]["off"]["verdict"] == "PASS"  # the other jobs completed in their own worker
    failed = json.loads((out / "runs" / next(p.name for p in (out / "runs").iterdir()
                                               if (p / "failed.json").exists()) / "failed.json").read_text())
    assert failed["meta"]["attempts"] == 2


# --- --fail-fast -------------------------------------------------------------------------------------------------

def write_results(folder: Path, rows: dict[int, list[int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"index": i, "status": "ok", "token_ids": t, "text": ""}) for i, t in rows.items()]
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n" + '{"index": 9, "sta')  # a line being written


def test_fail_fast_stops_a_cell_at_its_first_mismatch_and_a_shared_twin_only_when_all_its_cells_differ(tmp_path):
    from evalharness.failfast import FailFast

    plan = plan_runs(["off", "on", "varlen"], [384], Capabilities(cuda=True, attn="sdpa"))
    jobs = [job(cfg, tmp=tmp_path) for cfg in plan.runs.values()]
    cells = {mp.mode: mp for mp in plan.modes}
    twin = cells["on"].twin
    assert twin == cells["varlen"].twin  # on and varlen share their twin
    dirs = {j.key: j.job_dir for j in jobs}
    ff = FailFast(plan, jobs, min_interval_s=0)
    write_results(dirs[twin], {0: [1, 2], 1: [3, 4], 2: [5, 6]})
    write_results(dirs[cells["on"].run], {0: [1, 2], 1: [3, 4]})
    write_results(dirs[cells["varlen"].run], {2: [5, 6]})
    write_results(dirs[cells["off"].run], {0: [9], 1: [9], 2: [9]})
    assert ff.check(cells["on"].run) == set()  # the samples both finished agree
    write_results(dirs[cells["on"].run], {0: [1, 2], 1: [3, 4], 2: [5, 7]})
    assert ff.check(cells["on"].run) == {cells["on"].run}  # only on's run: the twin still serves varlen
    assert ff.found == {cells["on"].cell_id: 2}
    write_results(dirs[cells["varlen"].run], {0: [1, 0], 2: [5, 6]})
    assert ff.check(twin) == {cells["on"].run, cells["varlen"].run, twin}
    assert cells["off"].run not in ff.check(cells["off"].run, True)  # the reference always completes


@pytest.mark.slow
def test_fail_fast_verdict_is_stale_graph_and_a_stopped_run_is_not_cached(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "ff"
    proc = cli("gsm8k", "--model", str(tiny_llama), "--data", str(gsm8k_test), "--limit", "24", "--fewshot", "0",
               "--max-new-tokens", "16", "--dtype", "fp32", "--no-progress", "--max-bt", "32", "--graphs", "off,on",
               "--inject", "on=perturb", "--fail-fast", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modes"]["on"]["verdict"] == "STALE_GRAPH" and summary["modes"]["off"]["verdict"] == "PASS"
    for key, run in summary["runs"].items():
        folder = next(d for d in (out / "runs").iterdir() if json.loads((d / "job.json").read_text())["engine"]
                      == run["engine"])
        assert (folder / "result.json").exists() == (run["status"] != "stopped")
    assert summary["runs"][summary["modes"]["off"]["run"]]["status"] == "ok"


def test_invocations_sharing_a_machine_split_it(tmp_path, monkeypatch):
    from evalharness import sizing

    monkeypatch.setenv("EVALHARNESS_CLAIMS", str(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "other.json").write_text(json.dumps({"pid": other.pid, "workers": 5, "gpu_bytes": 50 * GIB}))
        (tmp_path / "dead.json").write_text(json.dumps({"pid": 2**22 + 12345, "workers": 9, "gpu_bytes": 1}))
        with sizing.Claim(3, 9 * GIB):  # this invocation's own claim is not counted against itself
            assert sizing.others() == (5, 50 * GIB)
        assert not (tmp_path / "dead.json").exists()
    finally:
        other.kill()
        other.wait()
    assert sizing.others() == (0, 0)  # the other invocation ended
    alone = schedule.auto_budget(5, 16, True, free_bytes=[139 * GIB], need_bytes=13 * GIB)
    shared = schedule.auto_budget(5, 16, True, free_bytes=[89 * GIB], need_bytes=13 * GIB, other_workers=5)
    assert (alone.workers, alone.threads) == (5, 3)
    assert (shared.workers, shared.threads) == (3, 2) and "5 held by other invocations" in shared.line()
    assert shared.threads * (shared.workers + 5) <= 16


def _size_and_hold(jobs, barrier, sized, release):
    """One invocation (a forked process): start with the other, size --jobs auto, report the budget, hold the pool
    (and so the claim) until the test has both budgets."""
    from evalharness import execute
    from evalharness.engine import pool

    class Held(Exception):
        pass

    def run_pool(todo, budget, *args, **kw):
        sized.put((budget.workers, budget.threads))
        release.wait(30)
        raise Held

    pool.run_pool = run_pool
    barrier.wait(30)
    try:
        execute.run_jobs(jobs, workers="auto", progress=False)
    except Held:
        pass
    except BaseException as e:  # noqa: BLE001 - told to the test, which would otherwise wait for the budget
        sized.put((0, repr(e)))


def test_two_invocations_started_together_split_the_cores(tmp_path, monkeypatch):
    import multiprocessing
    import time

    from evalharness import sizing

    monkeypatch.setenv("EVALHARNESS_CLAIMS", str(tmp_path / "claims"))
    monkeypatch.setattr(sizing, "cpu_cores", lambda: 8)
    read = sizing.others

    def slow_others():  # widen the window between reading the others' claims and writing this one's
        got = read()
        time.sleep(0.5)
        return got

    monkeypatch.setattr(sizing, "others", slow_others)
    ctx = multiprocessing.get_context("fork")
    barrier, sized, release = ctx.Barrier(2), ctx.Queue(), ctx.Event()
    procs = []
    for name in ("a", "b"):
        jobs = [job(EngineConfig(max_bt=8 * (i + 1), attn="sdpa", cuda_graph=(False, False)), tmp=tmp_path / name)
                for i in range(2)]
        procs.append(ctx.Process(target=_size_and_hold, args=(jobs, barrier, sized, release)))
    for p in procs:
        p.start()
    try:
        budgets = sorted(sized.get(timeout=30) for _ in procs)
    finally:
        release.set()
        for p in procs:
            p.join(30)
    alone = schedule.auto_budget(2, 8, False)  # the first to size: 2 workers x 4 threads, all 8 cores
    second = schedule.auto_budget(2, 8, False, other_workers=alone.workers)  # sized after the first's claim
    assert alone.workers * alone.threads == 8 and second.workers * second.threads < 8
    assert budgets == sorted([(alone.workers, alone.threads), (second.workers, second.threads)]), budgets
    assert not list((tmp_path / "claims").glob("*.json"))  # both claims are gone with their pools
