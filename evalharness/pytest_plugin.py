"""pytest plugin (entry point `pytest11`): accuracy suites as test items.

A suite file is `accuracy.toml` (or `NAME.accuracy.toml`), or the `[tool.evalharness.accuracy]` table of the
rootdir's pyproject.toml. It holds optional `[defaults]` and one or more `[[suite]]` tables (in pyproject:
`[tool.evalharness.accuracy.defaults]`, `[[tool.evalharness.accuracy.suite]]`); a table without `suite` is itself one
suite. Keys (see `SUITE_KEYS`): name, gpu, markers, and the `evalharness gsm8k` options that suites may set, named as
the flag without dashes (`settings.suite_keys()`: model, gguf_file, data, fewshot_data, task, limit, graphs, max_bt,
prompt, fewshot, max_new_tokens, attn, dtype, alpha, min_drop, filter, inject, timeout_s, trust_remote_code); a
list stands for a comma list. Relative paths resolve against the suite file's folder; `${VAR}` expands from the
environment.

Every (max_bt, mode) cell (per attention backend when `attn` is a list) is one item, marked `accuracy` (and `gpu`
for suites with `gpu = true`, whose items skip with the reason where CUDA is unavailable). The suite's evaluation
runs once, through `evalharness.pipeline.evaluate`, in the setup of its first item; each item then reads its cell:
PASS passes, SKIPPED skips with the reason, every finding (verdict.Verdict.finding) fails with the verdict and its
evidence. Items carry their verdict as user properties, so `--junitxml` records them.

The plugin is active only in a project that opts in: a `[tool.evalharness]` table in the rootdir's pyproject.toml,
an explicit `--accuracy=FILE`, or a suite file given as an argument. Anywhere else (every other project in an
environment where evalharness is installed) it registers no marker and parses no file. Where active, suites are
collected only when asked for: `-m` mentioning `accuracy`, `--accuracy`, or a suite file argument. A plain `pytest`
run never parses a suite file and never imports torch through this plugin.

Skips are reported at the item (the suite file), not at this module. With `--junitxml`, each item's verdict and
evidence are testsuite-level properties named `<item nodeid>::<key>` under the default junit_family xunit2 (whose
schema has no per-testcase properties, so xunit2 readers drop those), and testcase properties under xunit1/legacy.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from . import settings

SUITE_FILE = "accuracy.toml"
SUITE_KEYS = {"name", "gpu", "markers", *settings.suite_keys()}
PATH_KEYS = tuple(settings.suite_path_keys())

_requested = pytest.StashKey[bool]()
_active = pytest.StashKey[bool]()
_suites = pytest.StashKey[list]()
_cuda = pytest.StashKey[bool]()


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


class SuiteError(Exception):
    """A bad suite file: shown as one line at collection."""


def pytest_addoption(parser):
    group = parser.getgroup("evalharness", "evalharness accuracy suites")
    group.addoption("--accuracy", nargs="?", const="", default=None, metavar="FILE",
                    help="collect evalharness accuracy suites (also implied by -m mentioning 'accuracy'); with =FILE, "
                         "that suite file (which also activates the plugin in a project without a [tool.evalharness] "
                         "table)")
    group.addoption("--accuracy-out", default=None, metavar="DIR",
                    help="keep each suite's report folder under DIR/<suite> (default: a fresh temporary folder; write "
                         "--accuracy-out=DIR: a separate path argument makes pytest pick another rootdir); "
                         "engine runs already there are reused")


def _is_suite_file(name: str) -> bool:
    return name == SUITE_FILE or name.endswith("." + SUITE_FILE)


def opted_in(config) -> bool:
    """The project asks for this plugin: [tool.evalharness] in the rootdir's pyproject.toml, --accuracy=FILE, or a
    suite file among the arguments."""
    if config.getoption("accuracy", None) or any(_is_suite_name_arg(a) for a in config.args):
        return True
    return _project_table(Path(config.rootpath) / "pyproject.toml") is not None


def _is_suite_name_arg(arg: str) -> bool:
    return _is_suite_file(Path(arg.split("::")[0]).name)


def pytest_configure(config):
    config.stash[_suites] = []
    config.stash[_requested] = False
    config.stash[_active] = opted_in(config)
    if not config.stash[_active]:
        return
    config.addinivalue_line("markers", "accuracy: evalharness accuracy measurement (collected from accuracy suites)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped where torch sees none")
    markexpr = config.getoption("markexpr", "") or ""
    suite_file = config.getoption("accuracy", None)
    requested = suite_file is not None or bool(re.search(r"\baccuracy\b", markexpr))
    config.stash[_requested] = requested
    if suite_file:
        path = Path(suite_file)
        if not path.is_file():
            raise pytest.UsageError(f"--accuracy={suite_file}: no such suite file")
        if not any(Path(a.split("::")[0]).resolve() == path.resolve() for a in config.args):
            if config.args_source != pytest.Config.ArgsSource.ARGS:
                config.args[:] = []  # only the suite asked for, not the default test paths as well
            config.args.append(str(path.resolve()))
        return
    if not requested or config.args_source == pytest.Config.ArgsSource.ARGS:
        return
    # Arguments came from testpaths or the invocation dir: add the rootdir's suite files that lie outside them.
    root = Path(config.rootpath)
    given = [Path(a.split("::")[0]).resolve() for a in config.args]
    for candidate in (root / SUITE_FILE, root / "pyproject.toml"):
        if not candidate.is_file() or any(candidate == g or g in candidate.parents for g in given):
            continue
        if candidate.name == "pyproject.toml" and not _pyproject_table(candidate):
            continue
        config.args.append(str(candidate))


def _project_table(path: Path) -> dict | None:
    """The [tool.evalharness] table of a pyproject.toml (None when absent or unreadable)."""
    try:
        data = _toml().loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    table = data.get("tool", {}).get("evalharness")
    return table if isinstance(table, dict) else None


def _pyproject_table(path: Path) -> dict | None:
    return (_project_table(path) or {}).get("accuracy")


def _explicit(config, path: Path) -> bool:
    return any(Path(a.split("::")[0]).resolve() == path.resolve() for a in config.args)


def pytest_collect_file(file_path: Path, parent):
    name = file_path.name
    if not _is_suite_file(name) and name != "pyproject.toml":
        return None
    config = parent.config
    if not config.stash.get(_active, False):
        return None
    if not (config.stash.get(_requested, False) or _explicit(config, file_path)):
        return None
    if name == "pyproject.toml" and ((file_path.parent != Path(config.rootpath) and not _explicit(config, file_path))
                                     or _pyproject_table(file_path) is None):
        return None  # only the rootdir's pyproject.toml (or one given as an argument) holds a suite
    return AccuracyFile.from_parent(parent, path=file_path)


def _listify(value) -> list:
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


class AccuracyFile(pytest.File):
    def collect(self):
        try:
            suites = load_suites(self.path)
        except SuiteError as e:
            raise self.CollectError(str(e))
        for suite in suites:
            yield AccuracySuite.from_parent(self, name=suite["name"], suite=suite)


class AccuracySuite(pytest.Collector):
    def __init__(self, *, suite: dict, **kw):
        super().__init__(**kw)
        self.suite = suite
        self._evaluation = None
        self._error: BaseException | None = None
        self.out: Path | None = None

    def collect(self):
        from .config import UsageError

        try:
            s = suite_settings(self.suite)
        except UsageError as e:
            raise self.CollectError(f"{self.path}: suite {self.name!r}: {e}")
        attns = s.attns
        for attn in attns:
            for bt in s.max_bts:
                for mode in s.modes:
                    extra = f",attn={attn}" if len(attns) > 1 else ""
                    item = AccuracyItem.from_parent(self, name=f"{mode}[max_bt={bt}{extra}]", mode=mode, max_bt=bt,
                                                    attn=attn)
                    item.add_marker(pytest.mark.accuracy)
                    if self.suite.get("gpu"):
                        item.add_marker(pytest.mark.gpu)
                    for marker in _listify(self.suite.get("markers")):
                        item.add_marker(getattr(pytest.mark, marker))
                    yield item

    def skip_reason(self) -> str | None:
        if self.suite.get("gpu"):
            config = self.config
            if _cuda not in config.stash:
                import torch

                config.stash[_cuda] = torch.cuda.is_available()
            if not config.stash[_cuda]:
                return f"suite {self.name!r} needs a CUDA GPU; torch.cuda.is_available() is False"
        data = self.suite.get("data")
        if isinstance(data, str) and Path(data).suffix in (".jsonl", ".json", ".parquet") and not Path(data).exists():
            return f"suite {self.name!r}: data file {data} not found"
        return None

    def evaluation(self):
        """Run the suite once; later calls return the same Evaluation or raise the same error."""
        if self._evaluation is None and self._error is None:
            config = self.config
            base = config.getoption("accuracy_out")
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name)
            if base:
                self.out = Path(base) / slug
            else:
                factory = getattr(config, "_tmp_path_factory", None)
                if factory is not None:
                    self.out = factory.mktemp(f"accuracy-{slug}", numbered=True)
                else:  # pragma: no cover
                    import tempfile

                    self.out = Path(tempfile.mkdtemp(prefix=f"evalharness-accuracy-{slug}-"))
            try:
                from .pipeline import evaluate

                settings = suite_settings(self.suite, self.out, f"pytest -m accuracy ({self.nodeid})")
                self._evaluation = evaluate(settings)
                config.stash[_suites].append(self)
            except BaseException as e:  # keep it: every item of the suite reports the same error
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                self._error = e
        if self._error is not None:
            raise SuiteRunError(f"suite {self.name!r} could not be evaluated: {type(self._error).__name__}: "
                                f"{self._error}")
        return self._evaluation


class SuiteRunError(Exception):
    pass


class AccuracyFinding(Exception):
    """A cell whose verdict is a finding: the message is the verdict with its evidence."""


def _snippet(text: str, char: int, width: int = 60) -> str:
    lo = max(0, char - width)
    return ("…" if lo else "") + text[lo:char + width]


def failure_message(o, report_dir: Path | None = None) -> str:
    lines = [f"{o.verdict}: mode {o.mode} at max_bt={o.max_bt} ({o.axes or 'default axes'}): {o.reason}"]
    ci = o.accuracy_ci
    finished = o.n if o.finished is None else o.finished
    acc = ("accuracy n/a (no sample finished)" if o.accuracy is None else
           f"accuracy {o.accuracy:.3f} ({o.correct}/{finished}" + (f" finished of {o.n}" if finished != o.n else "")
           + (f", 95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ")"))
    if o.delta_vs_off is not None:
        acc += f"; delta vs off {o.delta_vs_off:+.3f}, McNemar p={o.p_value:.3g}"
    lines.append("  " + acc)
    if o.twin_mismatches is not None:
        lines.append(f"  twin mismatches: {o.twin_mismatches}/{o.twin_compared} samples differ from the padded-eager "
                     "twin")
    if o.failed_requests or o.twin_failed_requests:
        lines.append(f"  failed requests: run {o.failed_requests}, twin {o.twin_failed_requests}")
    if o.comparison and o.comparison.mismatches:
        m = o.comparison.mismatches[0]
        char = next((j for j, (x, y) in enumerate(zip(m.run_text, m.twin_text)) if x != y),
                    min(len(m.run_text), len(m.twin_text)))
        lines.append(f"  first mismatching sample {m.index} at token {m.position}: graph run token "
                     f"{m.run_tokens[m.position:m.position + 1]} vs twin {m.twin_tokens[m.position:m.position + 1]}")
        lines.append(f"    graph run: {_snippet(m.run_text, char)!r}")
        lines.append(f"    twin:      {_snippet(m.twin_text, char)!r}")
    if getattr(o, "confirmation", None) is not None:
        lines.append(f"  confirmation: {o.confirmation.describe()}")
    if getattr(o, "stale_constants", None):
        from .audit import describe_constants

        lines.append(f"  {describe_constants(o.stale_constants)}")
    if report_dir is not None:
        lines.append(f"  report: {report_dir / 'report.md'} ({report_dir / 'report.html'})")
    return "\n".join(lines)


def record_outcome(item, o, report_dir: Path | None) -> None:
    props = {"verdict": str(o.verdict), "reason": o.reason, "cell": o.cell_id, "accuracy": None if o.accuracy is None else f"{o.accuracy:.4f}", "finished": o.finished,
             "n": o.n, "correct": o.correct, "twin_mismatches": o.twin_mismatches, "twin_compared": o.twin_compared,
             "p_value": None if o.p_value is None else f"{o.p_value:.4g}",
             "delta_vs_off": None if o.delta_vs_off is None else f"{o.delta_vs_off:+.4f}",
             "failed_requests": o.failed_requests}
    if o.comparison and o.comparison.mismatches:
        m = o.comparison.mismatches[0]
        props["first_mismatch"] = f"sample {m.index} token {m.position}"
    if getattr(o, "confirmation", None) is not None:
        props["confirmation"] = o.confirmation.status
    if getattr(o, "stale_constants", None):
        props["stale_constants"] = o.stale_constants.get("total")
    if report_dir is not None:
        props["report"] = str(report_dir / "report.html")
    add_properties(item, props)


def add_properties(item, props: dict) -> None:
    """Testsuite-level properties `<nodeid>::<key>` under xunit2 (the default junit_family, whose testcases carry no
    properties), testcase properties otherwise (xunit1/legacy, or no --junitxml: other reporters read them)."""
    from _pytest.junitxml import xml_key

    xml = item.config.stash.get(xml_key, None)
    for key, value in props.items():
        if value is None:
            continue
        if xml is not None and xml.family not in ("xunit1", "legacy"):
            xml.add_global_property(f"{item.nodeid}::{key}", value)
        else:
            item.user_properties.append((key, value))


def _skip(reason: str):
    """Skip reported at the item (its suite file and name), not at this module's line."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


class AccuracyItem(pytest.Item):
    def __init__(self, *, mode: str, max_bt: int, attn: str, **kw):
        super().__init__(**kw)
        self.mode, self.max_bt, self.attn = mode, max_bt, attn

    def setup(self):
        suite: AccuracySuite = self.parent
        add_properties(self, {"suite": suite.name})
        reason = suite.skip_reason()
        if reason:
            add_properties(self, {"verdict": "NOT_RUN"})
            _skip(reason)
        suite.evaluation()

    def outcome(self):
        ev = self.parent.evaluation()
        label = f"attn={self.attn}"
        for o in ev.outcomes:
            if o.mode == self.mode and o.max_bt == self.max_bt and o.axes.split(" ")[0] == label:
                return o
        raise SuiteRunError(f"no cell for mode {self.mode} at max_bt={self.max_bt} ({label}) in the evaluation")

    def runtest(self):
        from .verdict import SKIPPED, Verdict

        o = self.outcome()
        record_outcome(self, o, self.parent.out)
        if Verdict(o.verdict).finding:
            raise AccuracyFinding(failure_message(o, self.parent.out))
        if o.verdict == SKIPPED:
            _skip(f"SKIPPED: {o.reason}")

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance((AccuracyFinding, SuiteRunError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, 0, f"{self.parent.name}: {self.name}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    suites = config.stash.get(_suites, [])
    if not suites:
        return
    terminalreporter.section("evalharness accuracy reports")
    for suite in suites:
        terminalreporter.write_line(f"{suite.nodeid}: {suite.out / 'report.html'}")
