"""pyproject.toml: what the declared Python versions need, and the package data the wheel must carry."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_tomli_for_python_before_3_11():
    """The pytest plugin reads TOML: tomllib from 3.11, tomli before; requires-python admits 3.10."""
    assert re.search(r">=\s*3\.10", PROJECT["project"]["requires-python"])
    deps = PROJECT["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("tomli") and "python_version<'3.11'" in d.replace(" ", "") for d in deps)


def test_embedded_gsm8k_is_package_data():
    globs = PROJECT["tool"]["setuptools"]["package-data"]["evalharness"]
    files = sorted(p.relative_to(ROOT / "evalharness").as_posix() for p in (ROOT / "evalharness/gsm8k_data").iterdir())
    assert {"gsm8k_data/test.jsonl.xz", "gsm8k_data/train.jsonl.xz", "gsm8k_data/LICENSE",
            "gsm8k_data/SOURCE.md"} <= set(files)
    for f in files:
        assert any(fnmatch.fnmatch(f, g) for g in globs), f"{f} would not ship in the wheel"


def test_quick_start_installs_what_its_test_command_needs():
    """README's Quick start: the install line brings pytest, so `python -m pytest -q` works right after it."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert "pip install -e '.[test]'" in block[0]
    assert any(line.strip() == "python -m pytest -q" for line in block[1:])
    assert any(d.startswith("pytest") for d in PROJECT["project"]["optional-dependencies"]["test"])
