"""Option parsers: the command line's text (or an accuracy suite's value) -> a `Settings` field's value, each bad
value one `UsageError` naming its flag. The run-matrix parsers (--graphs, --max-bt, --inject, ...) are in config.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .config import UsageError

ATTNS = ("sdpa", "eager", "torch-flash", "flash_attention_2", "flash_attention_3")


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda raw: None if raw is None else convert(raw)


def positive_int(name: str) -> Callable[[Any], int | None]:
    def parse(text):
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise UsageError(f"{name}: {text!r} is not an integer")
        if value <= 0:
            raise UsageError(f"{name}: must be a positive integer, got {value}")
        return value
    return _optional(parse)


def number(name: str, kind: type = float) -> Callable[[Any], Any]:
    def parse(text):
        try:
            return kind(text)
        except (TypeError, ValueError):
            raise UsageError(f"{name}: {text!r} is not {'an integer' if kind is int else 'a number'}")
    return _optional(parse)


def positive_number(name: str) -> Callable[[Any], float | None]:
    def parse(text):
        value = number(name)(text)
        if not value > 0 or value == float("inf"):
            raise UsageError(f"{name}: must be a positive number of seconds, got {text!r}")
        return value
    return _optional(parse)


def fraction(name: str) -> Callable[[Any], float]:
    def parse(text):
        value = number(name)(text)
        if not 0 < value < 1:
            raise UsageError(f"{name} must be between 0 and 1")
        return value
    return parse


def parse_jobs(text) -> int | str:
    """--jobs N or auto; absent: 0 (auto on CUDA, else one per --devices entry or 1)."""
    if text in ("auto", None):
        return text or 0
    return positive_int("--jobs")(text) or 0


def parse_attns(text: str) -> list[str]:
    attns = [a.strip() for a in str(text).split(",") if a.strip()]
    bad = [a for a in attns if a not in ATTNS]
    if not attns or bad:
        raise UsageError(f"--attn: {text!r}: choose from {', '.join(ATTNS)}")
    return list(dict.fromkeys(attns))


def parse_engines(items: list[str]) -> dict[str, str | None]:
    """[NAME=]PATH entries -> {name: path}; none -> this interpreter as 'default'."""
    if not items:
        return {"default": None}
    out: dict[str, str | None] = {}
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        if not sep:
            name, path = ("default" if len(items) == 1 else f"engine{i + 1}"), item
        if not name or not path or name in out:
            raise UsageError(f"--engine: {item!r} must be NAME=PATH with a unique NAME")
        out[name] = path
    return out


def resolved_paths(items: list[str]) -> list[str]:
    return [str(Path(p).resolve()) for p in items]


def path_or_none(value) -> Path | None:
    return None if value is None else Path(value)


def str_or_none(value) -> str | None:
    return None if value is None else str(value)


def absolute_if_local(value) -> str | None:
    """A local path made absolute (a resume may start elsewhere); a hub id or a missing path as given."""
    if value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value
