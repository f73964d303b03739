"""Transformers' start-of-run reset race in async batching (reports/h200-repeat/ANALYSIS.md): force, fix, observe.

`ContinuousBatchingAsyncIOs` (transformers 5.17 .. 5.24 at least) writes both IO pairs' device tensors on the thread's
current (legacy default) stream when it is built and when `reset()` starts a generation loop, and never orders those
writes before step 1's non-blocking H2D copy on its own `h2d_stream` (pool streams do not synchronise with the default
stream). Under GPU contention the reset's writes can land after the copy: step 1 then runs on zeroed inputs and trash
write indices, and the first request's first chunk of KV is never written (sample 0 wrong from its first token).

- `install_force` (the `reset-late` fault): the bad interleaving, every time. On the first `get_model_kwargs` after a
  build or a reset, once the H2D is enqueued, replay the full reset's device writes (`_reset_static_tensors(
  full_reset=True)`, whatever this version writes) on `h2d_stream`, and make compute wait for them. The host-side
  attributes that method also clears are put back (the kwargs are already built from them). The KV cache is zeroed when
  built (5.17 allocates it with torch.empty), so the never-written chunk reads the same zeros in every run.
- `install_fix` (`sync-reset`, a fix candidate, not a fault): synchronise the current stream after the build and after
  `reset()`, so the writes are done before any H2D.
- `install_probe` (`reset-probe`, no behaviour change): CUDA events around the last build/reset's writes and step 1's
  H2D; `report()` gives the gap in ms (positive `reset_end_after_h2d_start_ms`: the writes ended after the copy began).

Each returns an `Installed`: `remove()` restores the patched methods (after the job: a reused worker serves the next
one), `report()` what happened in the job (for meta.json). The names are checked first: a missing one raises
`PatchError` naming it and the transformers version. Written by hand: no library patches transformers' CB engine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from .patches import PatchError, _cb_modules, _require

ASYNC_IO = "ContinuousBatchingAsyncIOs"
# what each patch reads or wraps: checked before anything is patched
ASYNC_NAMES = ("__init__", "reset", "get_model_kwargs")
DEVICE_IO_NAMES = ("_reset_static_tensors",)


@dataclass
class Installed:
    """Patched class attributes (restored by `remove`) and what the patch saw during the job."""

    name: str
    targets: list[str]
    originals: list[tuple[Any, str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    extra: Callable[[], dict] | None = None

    def wrap(self, owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[attr] if attr in owner.__dict__ else getattr(owner, attr)
        self.originals.append((owner, attr, original))
        setattr(owner, attr, functools.wraps(original)(make(original)))

    def remove(self) -> None:
        for owner, attr, original in reversed(self.originals):
            setattr(owner, attr, original)
        self.originals.clear()

    def report(self) -> dict:
        out = {"patch": self.name, "targets": self.targets, **self.counts}
        if self.extra is not None:
            out.update(self.extra())
        return out


def _classes(async_cls: Any = None, io_cls: Any = None, cache_cls: Any = None) -> tuple[str, Any, Any, Any]:
    """transformers' version, ContinuousBatchingAsyncIOs, ContinuousBatchingIOs and PagedAttentionCache, each checked
    for the names the patches use (classes given are checked instead: tests)."""
    version, _, io_mod = _cb_modules()
    where = "generation.continuous_batching.input_outputs"
    async_cls = async_cls if async_cls is not None else _require(io_mod, ASYNC_IO, where)
    io_cls = io_cls if io_cls is not None else _require(io_mod, "ContinuousBatchingIOs", where)
    if cache_cls is None:
        from transformers.generation.continuous_batching import cache as cache_mod

        cache_cls = _require(cache_mod, "PagedAttentionCache", "generation.continuous_batching.cache")
    for cls, names in ((async_cls, ASYNC_NAMES), (io_cls, DEVICE_IO_NAMES), (cache_cls, ("__init__",))):
        for name in names:
            _require(cls, name, cls.__name__)
    return version, async_cls, io_cls, cache_cls


def host_state(obj: Any) -> dict[str, Any]:
    """The attributes of `obj` that are not tensors (ints, dicts of ints, ...), copied one level deep: what a replayed
    `_reset_static_tensors` may clear on the host and `restore_host_state` puts back. Tensors (and containers of
    tensors, whose views stay the same objects) are left to the replay."""
    import torch

    def holds_tensor(v):
        if isinstance(v, torch.Tensor):
            return True
        if isinstance(v, dict):
            return any(isinstance(x, torch.Tensor) for x in v.values())
        if isinstance(v, (list, tuple)):
            return any(isinstance(x, torch.Tensor) for x in v)
        return False

    return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, v in vars(obj).items() if not holds_tensor(v)}


def restore_host_state(obj: Any, saved: dict[str, Any]) -> None:
    for k, v in saved.items():
        current = getattr(obj, k, None)
        if isinstance(current, dict) and isinstance(v, dict):  # in place: other objects may hold the same dict
            current.clear()
            current.update(v)
        elif isinstance(current, list) and isinstance(v, list):
            current[:] = v
        else:
            setattr(obj, k, v)


def replay_reset(device_io: Any) -> None:
    """The full reset's device writes on `device_io`, on the current stream, leaving its host-side state as it was."""
    saved = host_state(device_io)
    device_io._reset_static_tensors(full_reset=True)
    restore_host_state(device_io, saved)


def _zero_kv(cache: Any) -> int:
    """Zero the KV cache tensors (5.17: key_cache/value_cache lists from torch.empty; later: one cache_tensor)."""
    tensors = [*getattr(cache, "key_cache", []), *getattr(cache, "value_cache", [])]
    if not tensors and getattr(cache, "cache_tensor", None) is not None:
        tensors = [cache.cache_tensor]
    for t in tensors:
        t.zero_()
    return len(tensors)


def install_force(async_cls: Any = None, io_cls: Any = None, cache_cls: Any = None) -> Installed:
    """`reset-late`: the reset's device writes land after step 1's H2D copy, in every run (see the module doc)."""
    import torch

    _, async_cls, _, cache_cls = _classes(async_cls, io_cls, cache_cls)
    done = Installed("reset-late", [f"{async_cls.__name__}.__init__", f"{async_cls.__name__}.reset",
                                    f"{async_cls.__name__}.get_model_kwargs", f"{cache_cls.__name__}.__init__"],
                     counts={"armed": 0, "fired": 0, "kv_zeroed": 0})
    armed: set[int] = set()

    def arm(original):
        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            armed.add(id(self))
            done.counts["armed"] += 1
            return out
        return wrapper

    def get_model_kwargs(original):
        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)  # enqueues the H2D on h2d_stream; compute waits for it
            if id(self) in armed:
                armed.discard(id(self))
                device_io = self.io_pairs[self.current_pair].device_io
                with torch.cuda.stream(self.h2d_stream):
                    replay_reset(device_io)
                self.compute_stream.wait_stream(self.h2d_stream)
                done.counts["fired"] += 1
            return out
        return wrapper

    def cache_init(original):
        def wrapper(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if _zero_kv(self):
                done.counts["kv_zeroed"] += 1
                if torch.cuda.is_available():
                    torch.cuda.current_stream().synchronize()
        return wrapper

    done.wrap(async_cls, "__init__", arm)
    done.wrap(async_cls, "reset", arm)
    done.wrap(async_cls, "get_model_kwargs", get_model_kwargs)
    done.wrap(cache_cls, "__init__", cache_init)
    return done


def install_fix(async_cls: Any = None, io_cls: Any = None, cache_cls: Any = None) -> Installed:
    """`sync-reset`: synchronise the current stream after the async IOs' build and reset (their device writes)."""
    import torch

    _, async_cls, _, _ = _classes(async_cls, io_cls, cache_cls)
    done = Installed("sync-reset", [f"{async_cls.__name__}.__init__", f"{async_cls.__name__}.reset"],
                     counts={"synced": 0})

    def synced(original):
        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            torch.cuda.current_stream().synchronize()  # the stream the device-side writes were issued on
            done.counts["synced"] += 1
            return out
        return wrapper

    done.wrap(async_cls, "__init__", synced)
    done.wrap(async_cls, "reset", synced)
    return done


def install_probe(async_cls: Any = None, io_cls: Any = None, cache_cls: Any = None) -> Installed:
    """`reset-probe`: timing events around the last build/reset and step 1's H2D (no behaviour change)."""
    import torch

    _, async_cls, _, _ = _classes(async_cls, io_cls, cache_cls)
    events: dict[str, Any] = {}
    armed: set[int] = set()

    def timed(original):
        def wrapper(self, *args, **kwargs):
            start = torch.cuda.Event(enable_timing=True)
            start.record()  # the current stream: the one the writes go to
            out = original(self, *args, **kwargs)
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            events.update(reset=(start, end))
            events.pop("h2d", None)
            armed.add(id(self))
            return out
        return wrapper

    def get_model_kwargs(original):
        def wrapper(self, *args, **kwargs):
            if id(self) not in armed:
                return original(self, *args, **kwargs)
            armed.discard(id(self))
            start = torch.cuda.Event(enable_timing=True)
            start.record(self.h2d_stream)
            out = original(self, *args, **kwargs)
            end = torch.cuda.Event(enable_timing=True)
            end.record(self.h2d_stream)
            events["h2d"] = (start, end)
            return out
        return wrapper

    def extra() -> dict:
        if "reset" not in events or "h2d" not in events:
            return {"measured": False}
        (r0, r1), (h0, h1) = events["reset"], events["h2d"]
        for e in (r1, h1):
            e.synchronize()
        return {"measured": True, "reset_ms": r0.elapsed_time(r1),
                "reset_end_after_h2d_start_ms": h0.elapsed_time(r1),
                "reset_end_after_h2d_end_ms": h1.elapsed_time(r1)}

    done = Installed("reset-probe", [f"{async_cls.__name__}.__init__", f"{async_cls.__name__}.reset",
                                     f"{async_cls.__name__}.get_model_kwargs"], extra=extra)
    done.wrap(async_cls, "__init__", timed)
    done.wrap(async_cls, "reset", timed)
    done.wrap(async_cls, "get_model_kwargs", get_model_kwargs)
    return done
