"""Sweeps as resumable, splittable runs.

- `settings.json`: every `evalharness gsm8k` saves its settings in its output folder before any engine runs, so
  `evalharness gsm8k --resume DIR` can finish a run that was interrupted (Ctrl-C, SIGKILL, a lost machine): jobs
  whose `runs/<hash>/result.json` exists are read back, only the missing ones run.
- The job hash covers everything that determines a job's output: the prompts (data, limit, prompt style, shots,
  chat template choice), the model spec and its files' sizes and mtimes, max_new_tokens, the engine configuration
  (mode, max_bt, padding, injected fault, attention and the other axes), the engine's interpreter and PYTHONPATH,
  its probed versions (python, torch, transformers, device), this package's version and the source of its engine
  code. Files are written atomically (write to a temporary file, fsync, rename): a killed run never leaves a
  half-written result that is read back as complete.
- `evalharness plan ... --out DIR` writes the job matrix (`jobs.json`) for a CI fan-out, `evalharness run-job DIR
  JOB` runs one job (by id or index), `evalharness merge DIR...` joins job results from several folders into one
  summary.json/report.md/samples.jsonl, the same as a single-process sweep's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

from . import __version__
from .config import EngineConfig, UsageError, parse_devices
from .results import RunResult, atomic_write_json

SETTINGS_FILE = "settings.json"
JOBS_FILE = "jobs.json"
FORMAT = 1
# Options that may accompany --resume: they change how the jobs run, never what they compute.
RESUME_OK = {"resume", "jobs", "devices", "no_progress", "command", "history"}


# --- settings.json ---------------------------------------------------------------------------------------------

def settings_json(s) -> dict:
    d = dataclasses.asdict(s)
    for name in ("model", "data", "fewshot_data"):  # local paths made absolute: a resume may start elsewhere
        if d[name] and Path(d[name]).expanduser().exists():
            d[name] = str(Path(d[name]).expanduser().resolve())
    d["out"] = str(s.out) if s.out is not None else None
    d["cache"] = str(Path(s.cache).resolve()) if s.cache is not None else None
    return d


def settings_from_json(d: dict):
    from .pipeline import Settings

    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UsageError(f"settings written by another evalharness version (unknown fields {', '.join(unknown)})")
    d = dict(d)
    for name in ("out", "cache"):
        if d.get(name) is not None:
            d[name] = Path(d[name])
    return Settings(**d)


def save_settings(p) -> None:
    """settings.json in the output folder (atomically), before any engine runs."""
    atomic_write_json(p.out / SETTINGS_FILE, {"format": FORMAT, "evalharness": __version__, "settings": p.saved})


def load_settings(folder: Path):
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        raise UsageError(f"--resume {folder}: no {SETTINGS_FILE} there (not a folder written by evalharness gsm8k "
                         "or plan)")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise UsageError(f"--resume {folder}: {SETTINGS_FILE} has format {doc.get('format')!r}, expected {FORMAT}")
    return settings_from_json(doc["settings"])


def _option(dest: str) -> str:
    return {"use_async": "--async"}.get(dest, "--" + dest.replace("_", "-"))


def resume_settings(args):
    """`gsm8k --resume DIR`: the settings of DIR's run; only --jobs, --devices and --no-progress may be added."""
    from .cli import build_parser

    defaults = vars(build_parser().parse_args(["gsm8k"]))
    extra = sorted(_option(k) for k, v in vars(args).items() if k not in RESUME_OK and v != defaults.get(k, v))
    if extra:
        raise UsageError(f"--resume takes every other option from DIR/{SETTINGS_FILE}; drop {', '.join(extra)} "
                         "(only --jobs, --devices and --no-progress may be given)")
    folder = Path(args.resume)
    s = load_settings(folder)
    s.out = folder
    if args.jobs:
        s.jobs = args.jobs
    if args.devices:
        s.devices = parse_devices(args.devices)
    s.progress = not args.no_progress
    return s


# --- the job hash ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def harness_digest() -> str:
    """This package's engine code (worker, patches and faults, result collection): it shapes every result."""
    h = hashlib.sha256(__version__.encode())
    for f in sorted((Path(__file__).parent / "engine").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def model_files(model: dict) -> list:
    """Name, size and mtime of a local model's files (cheap: no hashing of weights); [] for a hub id."""
    path = Path(model.get("path") or "")
    if not path.is_dir():
        return []
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in path.iterdir()
                  if f.is_file() and not f.name.startswith("."))


def interpreter_identity(python: str) -> str:
    """The interpreter as the file it runs, not as typed: `evalharness` (the venv's python3.11 in the script's
    shebang) and `python -m evalharness` (the venv's python) are one interpreter. Its virtual environment (the
    pyvenv.cfg above it) is part of it: two venvs on one base interpreter hold different packages."""
    path = Path(python).expanduser()
    venv = path.parent.parent if (path.parent.parent / "pyvenv.cfg").is_file() else None
    real = str(path.resolve()) if path.exists() else str(path)
    return real + (f" (venv {venv.resolve()})" if venv else "")


def job_hash(fingerprint: str, python: str, pythonpath: str | None, run_key: str, probe: dict, model: dict) -> str:
    blob = json.dumps({"workload": fingerprint, "python": interpreter_identity(python), "pythonpath": pythonpath,
                       "run": run_key,
                       "engine": probe, "evalharness": __version__, "harness": harness_digest(),
                       "model_files": model_files(model)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- plan / run-job / merge ------------------------------------------------------------------------------------

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
            "engine_path": p.settings.engines.get(job.engine.engine), "model": job.model,
            "max_new_tokens": job.max_new_tokens, "chat": job.chat, "timeout_s": job.timeout_s, "label": job.label,
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


def job_from_entry(doc: dict, entry: dict, root: Path):
    from .engine import Job
    from .pipeline import engine_interpreter

    python, pythonpath = engine_interpreter(entry["engine_path"])  # resolved on this machine
    cfg = EngineConfig(**{**entry["engine"], "cuda_graph": tuple(entry["engine"]["cuda_graph"])})
    if cfg.key() != entry["run"]:
        raise UsageError(f"jobs.json: job {entry['id']}'s engine configuration does not match its run key")
    job_dir = Path(entry["job_dir"])
    return Job(key=entry["run"], engine=cfg, model=entry["model"], prompts=doc["prompts"],
               max_new_tokens=entry["max_new_tokens"], job_dir=job_dir if job_dir.is_absolute() else root / job_dir,
               chat=entry["chat"], timeout_s=entry["timeout_s"], label=entry["label"], python=python,
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
    from .pipeline import finish, prepare_jobs

    plans = [(f, load_plan(f)) for f in folders if (Path(f) / JOBS_FILE).is_file()]
    if not plans:
        raise UsageError(f"merge: no {JOBS_FILE} in {', '.join(map(str, folders))} (write one with evalharness plan)")
    doc = plans[0][1]
    for f, other in plans[1:]:
        if other["ids"] != doc["ids"] or other["settings"] != doc["settings"]:
            raise UsageError(f"merge: {f}/{JOBS_FILE} is another plan than {plans[0][0]}/{JOBS_FILE}")
    s = settings_from_json(doc["settings"])
    s.out, s.progress = Path(out or folders[0]), progress
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

def add_parsers(sub, gsm8k) -> None:
    """plan (gsm8k's options and --cuda), run-job and merge."""
    p = sub.add_parser("plan", parents=[gsm8k], add_help=False,
                       help="write the job matrix of a gsm8k run to --out DIR/jobs.json (for a CI matrix fan-out); "
                            "nothing runs")
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


def write_plan(s, args) -> int:
    """`evalharness plan`: gsm8k's settings (cli.cmd_gsm8k builds them) -> OUT/settings.json and OUT/jobs.json."""
    from .pipeline import prepare_jobs

    if s.out is None:
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


def cmd_plan(args, argv) -> int:
    from .cli import cmd_gsm8k

    return cmd_gsm8k(args, argv)  # builds the settings as gsm8k does, then hands them to write_plan


def cmd_run_job(args, argv) -> int:
    from .pipeline import run_job_cached

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
        print(f"{o.cell_id:<24} {o.verdict:<13} acc={o.accuracy:.3f} "
              f"twin_mismatches={o.twin_mismatches if o.twin_mismatches is not None else '-'} "
              f"failed={o.failed_requests}  {o.reason}")
    print(f"report: {ev.out / 'report.md'}")
    return ev.exit_code


COMMANDS = {"plan": cmd_plan, "run-job": cmd_run_job, "merge": cmd_merge}
