"""Option parsers: the command line's text (or an accuracy suite's value) -> a `Settings` field's value, each bad
value one `UsageError` naming its flag, the run-matrix options' (--graphs, --max-bt, --inject, ...) included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .config import MODES, UsageError
from .faults import FAULTS

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


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise UsageError("--graphs: no mode given (choose from off,on,varlen,decode)")
    for m in modes:
        if m not in MODES:
            raise UsageError(f"--graphs: unknown mode {m!r} (choose from {','.join(MODES)})")
    # keep order, drop repeats
    return list(dict.fromkeys(modes))


def parse_max_bt(text: str) -> list[int]:
    """'384', '128,256,384' or 'START:STOP:STEP' (STOP included)."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            values = list(range(start, stop + 1, step))
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--max-bt: {text!r} is not a positive integer, a list 128,256 or a range 128:1024:128")
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"--max-bt: {text!r} must give positive integers")
    return list(dict.fromkeys(values))


def parse_injections(items: list[str] | None, modes: list[str], engines: list[str] | None = None) -> dict[str, str]:
    """[ENGINE:]MODE=FAULT -> {"MODE" or "ENGINE:MODE": FAULT}; a fault without an engine applies to every engine."""
    out: dict[str, str] = {}
    for item in items or []:
        target, sep, fault = item.partition("=")
        engine, _, mode = target.rpartition(":")
        if not sep or mode not in MODES or fault not in FAULTS:
            raise UsageError(f"--inject: {item!r} must be [ENGINE:]MODE=FAULT with MODE in {','.join(MODES)} and "
                             f"FAULT in {','.join(FAULTS)}")
        if mode not in modes:
            raise UsageError(f"--inject: mode {mode!r} is not among --graphs {','.join(modes)}")
        if engine and engine not in (engines or ["default"]):
            raise UsageError(f"--inject: engine {engine!r} is not among --engine names")
        out[target] = fault
    return out


def parse_devices(text: str | None) -> list[str] | None:
    """--devices 0,1,2 -> ["0", "1", "2"] (CUDA_VISIBLE_DEVICES values); None or empty -> None."""
    devices = [d.strip() for d in (text or "").split(",") if d.strip()]
    return devices or None


def parse_switch(text: str | None, name: str) -> list[bool | None]:
    """'on,off' -> [True, False]; None -> [None] (engine default)."""
    if text is None:
        return [None]
    values = {"on": True, "off": False}
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in values for t in items):
        raise UsageError(f"{name}: {text!r} must be on, off or on,off")
    return [values[t] for t in dict.fromkeys(items)]


def parse_compile(text: str | None) -> list[int | None]:
    if text is None:
        return [None]
    try:
        levels = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        levels = []
    if not levels or any(lv not in (0, 1, 2, 3) for lv in levels):
        raise UsageError(f"--compile: {text!r} must be levels among 0,1,2,3 (transformers' default_compile_level)")
    return list(dict.fromkeys(levels))
