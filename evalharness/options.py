"""The machinery behind settings.py: an `Option` in a field's metadata says how the field appears on the command
line, in accuracy suites, with --resume and in settings.json; `group` nests one frozen dataclass of options in
another; `entries` walks the nesting, so that every derivation (settings.py) reads the fields instead of a list.

Each option has one *name*, unique across the groups: its field's name unless the Option gives `name` (the
settings.json of format 1 was flat, keyed by these names; argparse stores each option under it). `build` and
`replace` take options by name, so that a caller need not know which group holds an option.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import UsageError


@dataclass(frozen=True)
class Option:
    """How one settings field appears on the command line, in suites, with --resume and in settings.json."""

    flag: str  # e.g. "--max-bt"; the suite key is "max_bt"
    raw_default: Any  # what the command line gives when the flag is absent
    help: str | None = None
    parse: Callable[[Any], Any] | None = None  # raw (text, or a list for repeatable flags) -> value
    choices: tuple | None = None
    action: str | None = None  # argparse action: "append", "store_true", "store_false", "store_const"
    const: Any = None  # for action="store_const"
    metavar: str | None = None
    also: tuple = ()  # more flags with the same destination: (flag, const, help) for store_const
    resume: bool = False  # may accompany --resume: changes how jobs run, never what they compute
    suite: bool = True  # a key of accuracy suites
    path: str | None = None  # "local": a local file or folder; "suite": resolved against a suite file only
    save: Callable[[Any], Any] | None = None  # value -> JSON (settings.json); default: as is
    load: Callable[[Any], Any] | None = None  # JSON -> value; default: as is
    name: str | None = None  # the option's name where it is not its field's (e.g. "model" for model.name)

    @property
    def key(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def value(self, raw):
        if self.choices is not None and raw is not None and raw not in self.choices:
            raise UsageError(f"{self.flag}: invalid choice {raw!r} (choose from {', '.join(self.choices)})")
        return self.parse(raw) if self.parse else raw

    def to_json(self, value):
        return self.save(value) if self.save else copy.deepcopy(value)

    def from_json(self, value):
        return self.load(value) if self.load else value


def option(flag: str, raw_default: Any = None, **kw) -> Any:
    """A field for the option `flag`; its default is the parsed `raw_default`."""
    opt = Option(flag, raw_default, **kw)
    default = opt.value(raw_default)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"option": opt})
    return field(default=default, metadata={"option": opt})


def group(cls: type, title: str) -> Any:
    """A field holding the group `cls` (a frozen dataclass of options), shown under `title` in --help."""
    return field(default_factory=cls, metadata={"group": cls, "title": title})


@dataclass(frozen=True)
class Entry:
    """One leaf field of a settings class: `group` (None at the top level) and `field` locate it."""

    name: str
    group: str | None
    field: str
    option: Option | None  # None: not an option (e.g. the command line that made the settings)
    title: str | None = None  # the group's --help title

    def get(self, s):
        return getattr(getattr(s, self.group) if self.group else s, self.field)


def entries(cls: type) -> dict[str, Entry]:
    """Option name -> Entry, in declaration order (the --help order); names are unique across the groups."""
    out: dict[str, Entry] = {}
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            leaves = [Entry(g.metadata["option"].name or g.name, f.name, g.name, g.metadata["option"],
                            f.metadata["title"]) for g in dataclasses.fields(f.metadata["group"])]
        else:
            opt = f.metadata.get("option")
            leaves = [Entry(opt.name if opt and opt.name else f.name, None, f.name, opt)]
        for e in leaves:
            assert e.name not in out, f"option name {e.name} is used twice"
            out[e.name] = e
    return out


def groups(cls: type) -> dict[str, type]:
    """Group field -> group class."""
    return {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}


def _split(cls: type, values: dict) -> tuple[dict, dict[str, dict]]:
    """Values by option name -> (top-level fields, {group: {field: value}}); TypeError on an unknown name."""
    known = entries(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown options {', '.join(unknown)}")
    top: dict = {}
    nested: dict[str, dict] = {}
    for name, value in values.items():
        e = known[name]
        if e.group:
            nested.setdefault(e.group, {})[e.field] = value
        else:
            top[e.field] = value
    return top, nested


def build(cls: type, **values):
    """An instance of `cls` from option values by name (the others at their defaults)."""
    top, nested = _split(cls, values)
    return cls(**top, **{g: gcls(**nested.get(g, {})) for g, gcls in groups(cls).items()})


def replace(obj, **values):
    """`obj` with the options given by name changed (a new frozen instance)."""
    top, nested = _split(type(obj), values)
    changed = {g: dataclasses.replace(getattr(obj, g), **kw) for g, kw in nested.items()}
    return dataclasses.replace(obj, **top, **changed)
