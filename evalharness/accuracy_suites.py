"""Accuracy suite files: reading, defaults merged, validated, paths resolved (the pytest plugin collects them).

A suite file is `accuracy.toml` (or `NAME.accuracy.toml`), or the `[tool.evalharness.accuracy]` table of the
rootdir's pyproject.toml. It holds optional `[defaults]` and one or more `[[suite]]` tables (in pyproject:
`[tool.evalharness.accuracy.defaults]`, `[[tool.evalharness.accuracy.suite]]`); a table without `suite` is itself one
suite. Keys (see `SUITE_KEYS`): name, gpu, markers, and the `evalharness gsm8k` options that suites may set, named as
the flag without dashes (`settings.suite_keys()`: model, gguf_file, data, fewshot_data, task, limit, graphs, max_bt,
prompt, fewshot, max_new_tokens, attn, dtype, alpha, min_drop, filter, inject, timeout_s, trust_remote_code); a
list stands for a comma list. Relative paths resolve against the suite file's folder; `${VAR}` expands from the
environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import settings

SUITE_FILE = "accuracy.toml"
SUITE_KEYS = {"name", "gpu", "markers", *settings.suite_keys()}
PATH_KEYS = tuple(settings.suite_path_keys())


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


class SuiteError(Exception):
    """A bad suite file: shown as one line at collection."""


def is_suite_file(name: str) -> bool:
    return name == SUITE_FILE or name.endswith("." + SUITE_FILE)


def project_table(path: Path) -> dict | None:
    """The [tool.evalharness] table of a pyproject.toml (None when absent or unreadable)."""
    try:
        data = _toml().loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    table = data.get("tool", {}).get("evalharness")
    return table if isinstance(table, dict) else None


def pyproject_table(path: Path) -> dict | None:
    return (project_table(path) or {}).get("accuracy")


def listify(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _expand(value):
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def load_suites(path: Path) -> list[dict]:
    """Suite tables from a suite file, defaults merged, validated (SuiteError on a bad file)."""
    try:
        data = _toml().loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SuiteError(f"{path}: cannot read suite file: {e}")
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("evalharness", {}).get("accuracy") or {}
    defaults = data.get("defaults", {})
    tables = data.get("suite")
    if tables is None:
        tables = [{k: v for k, v in data.items() if k != "defaults"}]
    if isinstance(tables, dict):
        tables = [tables]
    suites, names = [], set()
    for i, table in enumerate(tables):
        suite = {**defaults, **table}
        unknown = set(suite) - SUITE_KEYS
        if unknown:
            raise SuiteError(f"{path}: suite {i + 1}: unknown key(s) {', '.join(sorted(unknown))} (known: "
                             f"{', '.join(sorted(SUITE_KEYS))})")
        suite = {k: _expand(v) for k, v in suite.items()}
        suite.setdefault("name", "accuracy" if len(tables) == 1 else f"suite{i + 1}")
        if suite["name"] in names:
            raise SuiteError(f"{path}: suite name {suite['name']!r} is used twice")
        names.add(suite["name"])
        for key in PATH_KEYS:
            value = suite.get(key)
            if isinstance(value, str) and not Path(value).is_absolute() and (
                    (path.parent / value).exists() or value.startswith(("./", "../"))):
                suite[key] = str((path.parent / value).resolve())
        suites.append(suite)
    return suites


def suite_settings(suite: dict, out: Path | None = None, command: str = ""):
    """The pipeline Settings for a suite (UsageError on bad values, as the CLI would give)."""
    return settings.from_suite(suite, out=out, progress=False, command=command)
