"""Locks on shared folders, so that invocations sharing a `--cache` (or a model cache) never step on each other.

A job folder is locked (`filelock`, an OS-level lock released when its holder dies, even by SIGKILL) while its job
runs: a second invocation that needs the same job waits for the first, then reads its cached result instead of
deleting the files the first one's worker is writing. The owner's pid and command sit next to the lock, so the
waiting side can say whom it waits for.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = ".lock"
OWNER_FILE = ".lock.owner"


def owner(folder: Path) -> dict:
    """Who holds (or last held) the folder's lock: {pid, argv}; {} when unknown."""
    try:
        return json.loads((Path(folder) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def locked(folder: Path, what: str = "job", announce=None):
    """Hold `folder`'s lock for the block; if another process holds it, say so once (announce(line)) and wait."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = owner(folder)
        line = (f"evalharness: waiting for pid {who.get('pid', '?')}, which is running this {what} in {folder}"
                if who else f"evalharness: waiting for another process running this {what} in {folder}")
        (announce or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
        lock.acquire()
    try:
        (folder / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "argv": sys.argv[:8]}))
        yield
    finally:
        lock.release()
