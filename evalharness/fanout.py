"""Splitting a sweep across machines: `evalharness plan ... --out DIR` writes the job matrix (`jobs.json`) for a CI
fan-out, `evalharness run-job DIR JOB` runs one job (by id or index), `evalharness merge DIR...` joins job results
from several folders into one summary.json/report.md/samples.jsonl, the same as a single-process sweep's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from . import __version__
from .config import EngineConfig, UsageError
from .results import RunResult, atomic_write_json
from .engine import Job
from .execute import engine_interpreter, run_job_cached
from .pipeline import finish
from .plan import prepare_jobs
from .settings import Settings, add_arguments, replace
from .store import FORMAT, save_settings, settings_from_json

JOBS_FILE = "jobs.json"


def plan_doc(p) -> dict:
    """The job matrix: one entry per job with everything needed to run it; the prompts once, at the top."""
    entries = []
    for i, job in enumerate(p.jobs):
        try:
            job_dir = str(job.job_dir.resolve().relative_to(p.out.resolve()))
        except ValueError:  # --cache elsewhere
            job_dir = str(job.job_dir.resolve())
        entries.append({
            "index": i, "id": job.job_dir.name, "job_dir": job_dir, "run": job.key,
            "engine": dataclasses.asdict(job.engine), "engine_name": job.engine.engine,
            "engine_path": p.settings.matrix.engines.get(job.engine.engine), "model": job.model,
            "max_new_tokens": job.max_new_tokens, "chat": job.chat, "timeout_s": job.timeout_s, "stall_s": job.stall_s,
            "label": job.label,
            "serves": p.plan.served_by(job.key), "command": f"evalharness run-job {p.out} {job.job_dir.name}",
        })
    return {"format": FORMAT, "evalharness": __version__, "settings": p.saved, "cuda": p.cuda, "model": p.model,
            "probes": p.probes, "interpreters": p.interpreters, "workload": p.fingerprint, "timeout_s": p.timeout_s,
            "ids": [e["id"] for e in entries], "jobs": entries, "prompts": p.task.prompts}


def load_plan(folder: Path) -> dict:
    path = Path(folder) / JOBS_FILE
    if not path.is_file():
        raise UsageError(f"{folder}: no {JOBS_FILE} (write one with evalharness plan ... --out {folder})")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise UsageError(f"{path}: format {doc.get('format')!r}, expected {FORMAT}")
    return doc


def pick(doc: dict, which: str) -> dict:
    for e in doc["jobs"]:
        if which == e["id"]:
            return e
    if which.isdigit() and int(which) < len(doc["jobs"]):
        return doc["jobs"][int(which)]
    raise UsageError(f"run-job: no job {which!r} (ids in jobs.json, or an index 0..{len(doc['jobs']) - 1})")


def job_from_entry(doc: dict, entry: dict, root: Path) -> Job:

    python, pythonpath = engine_interpreter(entry["engine_path"])  # resolved on this machine
    cfg = EngineConfig.from_json(entry["engine"])
    if cfg.key() != entry["run"]:
        raise UsageError(f"jobs.json: job {entry['id']}'s engine configuration does not match its run key")
    job_dir = Path(entry["job_dir"])
    return Job(key=entry["run"], engine=cfg, model=entry["model"], prompts=doc["prompts"],
               max_new_tokens=entry["max_new_tokens"], job_dir=job_dir if job_dir.is_absolute() else root / job_dir,
               chat=entry["chat"], timeout_s=entry["timeout_s"], stall_s=entry.get("stall_s"),
               label=entry["label"], python=python,
               pythonpath=pythonpath)


def find_result(entry: dict, folders: list[Path]) -> RunResult | None:
    """A job's result in any of the folders: a finished one (result.json) first, else its final crash (failed.json)."""
    places = [Path(entry["job_dir"])] if Path(entry["job_dir"]).is_absolute() else []
    for f in folders:
        places += [f / entry["job_dir"], f / "runs" / entry["id"], f / entry["id"]]
    for name in ("result.json", "failed.json"):
        for place in places:
            if (place / name).is_file():
                return RunResult.from_json(json.loads((place / name).read_text()))
    return None


def merge(folders: list[Path], out: Path | None = None, progress: bool = False):
    """Join the job results found in `folders` into one evaluation written to `out` (default: the first folder)."""
    plans = [(f, load_plan(f)) for f in folders if (Path(f) / JOBS_FILE).is_file()]
    if not plans:
        raise UsageError(f"merge: no {JOBS_FILE} in {', '.join(map(str, folders))} (write one with evalharness plan)")
    doc = plans[0][1]
    for f, other in plans[1:]:
        if other["ids"] != doc["ids"] or other["settings"] != doc["settings"]:
            raise UsageError(f"merge: {f}/{JOBS_FILE} is another plan than {plans[0][0]}/{JOBS_FILE}")
    s = settings_from_json(doc["settings"])
    s = replace(s, out=Path(out or folders[0]), progress=progress)
    p = prepare_jobs(s, cuda=doc["cuda"], model=doc["model"], probes=doc["probes"],
                     interpreters={k: tuple(v) for k, v in doc["interpreters"].items()})
    if p.fingerprint != doc["workload"]:
        raise UsageError("merge: the data or prompts here differ from the plan's (the workload fingerprint differs)")
    if sorted(j.key for j in p.jobs) != sorted(e["run"] for e in doc["jobs"]):
        raise UsageError("merge: the plan's jobs differ from what its settings give here")
    results, missing = {}, []
    for e in doc["jobs"]:
        r = find_result(e, [Path(f) for f in folders])
        if r is None:
            missing.append(e)
        else:
            r.key = e["run"]
            results[e["run"]] = r
    if missing:
        raise UsageError(f"merge: {len(missing)} of {len(doc['jobs'])} jobs have no result: "
                         + "; ".join(f"{e['index']} {e['id']} ({e['label']})" for e in missing[:8])
                         + (" ..." if len(missing) > 8 else "") + " (run them with evalharness run-job)")
    return finish(p, results)


# --- CLI -------------------------------------------------------------------------------------------------------

def add_parsers(sub) -> None:
    """plan (gsm8k's options and --cuda), run-job and merge."""
    p = sub.add_parser("plan", help="write the job matrix of a gsm8k run to --out DIR/jobs.json (for a CI matrix "
                                    "fan-out); nothing runs")
    add_arguments(p)
    p.add_argument("--cuda", choices=["auto", "yes", "no"], default="auto",
                   help="plan for a machine with CUDA (yes), without (no), or like this one (auto)")
    r = sub.add_parser("run-job", help="run one job of a plan folder (writes DIR/runs/ID/result.json)")
    r.add_argument("dir", type=Path, help="folder holding jobs.json (evalharness plan)")
    r.add_argument("job", help="job id (jobs.json 'ids') or index 0..N-1")
    r.add_argument("--no-progress", action="store_true")
    m = sub.add_parser("merge", help="join job results from plan folders (several machines) into one summary.json, "
                                     "report.md and samples.jsonl")
    m.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="folders holding jobs.json and/or runs/ID/")
    m.add_argument("--out", type=Path, help="report folder (default: the first DIR)")


def write_plan(s: Settings, args) -> int:
    """`evalharness plan`: gsm8k's settings (cli.cmd_gsm8k builds them) -> OUT/settings.json and OUT/jobs.json."""
    if s.output.folder is None:
        raise UsageError("plan: --out DIR is required (jobs.json and the jobs' folders go there)")
    p = prepare_jobs(s, cuda={"auto": None, "yes": True, "no": False}[args.cuda])
    save_settings(p)
    doc = plan_doc(p)
    atomic_write_json(p.out / JOBS_FILE, doc)
    print(f"{len(doc['jobs'])} jobs in {p.out / JOBS_FILE}")
    for e in doc["jobs"]:
        print(f"{e['index']:>4} {e['id']}  {e['label']}")
    print(f"run each: evalharness run-job {p.out} ID_OR_INDEX; then: evalharness merge {p.out} [more folders]")
    return 0


def cmd_run_job(args, argv) -> int:
    doc = load_plan(args.dir)
    entry = pick(doc, args.job)
    job = job_from_entry(doc, entry, Path(args.dir))
    cached = (job.job_dir / "result.json").is_file()
    r = run_job_cached(job, progress=not args.no_progress)
    where = job.job_dir / ("result.json" if (job.job_dir / "result.json").is_file() else "failed.json")
    err = f" [{r.error_class}] {r.error}" if r.error_class else ""
    print(f"job {entry['index']} {entry['id']}: {r.status}{err}{' (already done)' if cached else ''} -> {where}")
    return 0


def cmd_merge(args, argv) -> int:
    ev = merge(args.dirs, args.out)
    for o in ev.outcomes:
        print(f"{o.cell_id:<24} {o.verdict:<16} {o.accuracy_text()} "
              f"twin_mismatches={o.twin_mismatches if o.twin_mismatches is not None else '-'} "
              f"failed={o.failed_requests}  {o.reason}")
    print(f"report: {ev.out / 'report.md'}")
    print(f"report: {ev.out / 'report.html'}")
    return ev.exit_code


COMMANDS = {"run-job": cmd_run_job, "merge": cmd_merge}  # plan: cli.cmd_gsm8k, then write_plan
