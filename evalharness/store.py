"""What a sweep keeps on disk, so that it can be resumed and split.

- `settings.json`: every `evalharness gsm8k` saves its settings in its output folder before any engine runs, so
  `evalharness gsm8k --resume DIR` can finish a run that was interrupted (Ctrl-C, SIGKILL, a lost machine): jobs
  whose `runs/<hash>/result.json` exists are read back, only the missing ones run. Format 2 nests the settings by
  group, as `Settings` does; format 1 (flat, keyed by option name: older runs, committed evidence) is still read.
- The job hash covers everything that determines a job's output: the prompts (data, limit, prompt style, shots,
  chat template choice), the model spec and its files' sizes and mtimes, max_new_tokens, the engine configuration
  (mode, max_bt, padding, injected fault, attention and the other axes), the engine's interpreter and PYTHONPATH,
  its probed versions (python, torch, transformers, device), this package's version and the source of its engine
  code. Files are written atomically (write to a temporary file, fsync, rename): a killed run never leaves a
  half-written result that is read back as complete.
- plan / run-job / merge (splitting a sweep across machines) are in fanout.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from . import __version__, options
from . import settings as settings_mod
from .config import UsageError
from .options import Entry
from .results import atomic_write_json
from .settings import Settings

SETTINGS_FILE = "settings.json"
FORMAT = 2  # 2: nested settings (1: flat, still read)


# --- settings.json ---------------------------------------------------------------------------------------------

def _save(e: Entry, value):
    return e.option.to_json(value) if e.option else value


def _load(e: Entry, value):
    return e.option.from_json(value) if e.option else value


def _unknown(names) -> UsageError:
    return UsageError(f"settings written by another evalharness version (unknown fields {', '.join(sorted(names))})")


def settings_json(s: Settings) -> dict:
    """settings.json's "settings" (format 2): nested like `Settings`, each group a table of its fields."""
    out: dict = {}
    for e in settings_mod.entries().values():
        value = _save(e, e.get(s))
        if e.group:
            out.setdefault(e.group, {})[e.field] = value
        else:
            out[e.field] = value
    return out


def settings_from_json(d: dict) -> Settings:
    """The Settings of `settings_json`'s table (format 2)."""
    by_place = {(e.group, e.field): (name, e) for name, e in settings_mod.entries().items()}
    groups = options.groups(Settings)
    values: dict = {}
    unknown = []
    for key, value in d.items():
        places = [((key, f), v) for f, v in value.items()] if key in groups and isinstance(value, dict) else \
            [((None, key), value)]
        for place, v in places:
            if place not in by_place:
                unknown.append(".".join(p for p in place if p))
                continue
            name, e = by_place[place]
            values[name] = _load(e, v)
    if unknown:
        raise _unknown(unknown)
    return settings_mod.make(**values)


LEGACY_FIELDS = ("attn",)  # written by earlier versions, now derived (MatrixSettings.attn is attns[0])


def settings_from_flat_json(d: dict) -> Settings:
    """The Settings of a format-1 settings.json (GPU evidence, runs to resume): flat, keyed by the options' names."""
    found = settings_mod.entries()
    if d.get("attns") is None and d.get("attn"):
        d = {**d, "attns": [d["attn"]]}
    d = {k: v for k, v in d.items() if k not in LEGACY_FIELDS}
    unknown = set(d) - set(found)
    if unknown:
        raise _unknown(unknown)
    return settings_mod.make(**{name: _load(found[name], value) for name, value in d.items()})


READERS = {FORMAT: settings_from_json, 1: settings_from_flat_json}


def save_settings(p) -> None:
    """settings.json in the output folder (atomically), before any engine runs."""
    atomic_write_json(p.out / SETTINGS_FILE, {"format": FORMAT, "evalharness": __version__, "settings": p.saved})


def load_settings(folder: Path) -> Settings:
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        raise UsageError(f"--resume {folder}: no {SETTINGS_FILE} there (not a folder written by evalharness gsm8k "
                         "or plan)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UsageError(f"--resume {folder}: {SETTINGS_FILE} is not readable JSON ({e}); start a new run with --out")
    read = READERS.get(doc.get("format"))
    if read is None:
        raise UsageError(f"--resume {folder}: {SETTINGS_FILE} has format {doc.get('format')!r}, expected {FORMAT}")
    try:
        return read(doc["settings"])
    except (KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"--resume {folder}: {SETTINGS_FILE} is damaged ({type(e).__name__}: {e}); start a new run "
                         "with --out")


def resume_settings(args) -> Settings:
    """`gsm8k --resume DIR`: the settings of DIR's run; only the options marked `resume` may be added."""
    extra = settings_mod.resume_conflicts(args)
    if extra:
        allowed = settings_mod.resume_flags()
        raise UsageError(f"--resume takes every other option from DIR/{SETTINGS_FILE}; drop {', '.join(extra)} "
                         f"(only {', '.join(allowed[:-1])} and {allowed[-1]} may be given)")
    folder = Path(args.resume)
    return settings_mod.resume_overrides(load_settings(folder), args, out=folder)


# --- the job hash ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def harness_digest() -> str:
    """This package's engine code (worker, patches and faults, result collection): it shapes every result."""
    h = hashlib.sha256(__version__.encode())
    here = Path(__file__).parent
    for f in sorted([*(here / "engine").glob("*.py"), here / "faults.py", here / "audit.py"]):
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
