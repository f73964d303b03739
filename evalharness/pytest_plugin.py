"""pytest plugin (entry point `pytest11`): accuracy suites as test items.

Suite files (`accuracy.toml`, `NAME.accuracy.toml`, or the `[tool.evalharness.accuracy]` table of the rootdir's
pyproject.toml) are read and validated by accuracy_suites.py; each cell's failure message and JUnit properties come
from accuracy_outcome.py.

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

Skips are reported at the item (the suite file), not at this module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .accuracy_outcome import add_properties, failure_message, record_outcome
from .accuracy_suites import (SUITE_FILE, SuiteError, is_suite_file, listify, load_suites, project_table,
                              pyproject_table, suite_settings)

_requested = pytest.StashKey[bool]()
_active = pytest.StashKey[bool]()
_suites = pytest.StashKey[list]()
_cuda = pytest.StashKey[bool]()


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


def opted_in(config) -> bool:
    """The project asks for this plugin: [tool.evalharness] in the rootdir's pyproject.toml, --accuracy=FILE, or a
    suite file among the arguments."""
    if config.getoption("accuracy", None) or any(_is_suite_name_arg(a) for a in config.args):
        return True
    return project_table(Path(config.rootpath) / "pyproject.toml") is not None


def _is_suite_name_arg(arg: str) -> bool:
    return is_suite_file(Path(arg.split("::")[0]).name)


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
        if candidate.name == "pyproject.toml" and not pyproject_table(candidate):
            continue
        config.args.append(str(candidate))


def _explicit(config, path: Path) -> bool:
    return any(Path(a.split("::")[0]).resolve() == path.resolve() for a in config.args)


def pytest_collect_file(file_path: Path, parent):
    name = file_path.name
    if not is_suite_file(name) and name != "pyproject.toml":
        return None
    config = parent.config
    if not config.stash.get(_active, False):
        return None
    if not (config.stash.get(_requested, False) or _explicit(config, file_path)):
        return None
    if name == "pyproject.toml" and ((file_path.parent != Path(config.rootpath) and not _explicit(config, file_path))
                                     or pyproject_table(file_path) is None):
        return None  # only the rootdir's pyproject.toml (or one given as an argument) holds a suite
    return AccuracyFile.from_parent(parent, path=file_path)


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
        attns = s.matrix.attns
        for attn in attns:
            for bt in s.matrix.max_bts:
                for mode in s.matrix.modes:
                    extra = f",attn={attn}" if len(attns) > 1 else ""
                    item = AccuracyItem.from_parent(self, name=f"{mode}[max_bt={bt}{extra}]", mode=mode, max_bt=bt,
                                                    attn=attn)
                    item.add_marker(pytest.mark.accuracy)
                    if self.suite.get("gpu"):
                        item.add_marker(pytest.mark.gpu)
                    for marker in listify(self.suite.get("markers")):
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
