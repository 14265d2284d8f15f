"""One writer at a time per Cove home: a lock file that says who holds it.

Two processes writing one embedded Chroma lose each other's vectors (each keeps its own in-memory
vector index, and the last one to save it wins), and their catalog and BM25 updates interleave.
Every ingest (`cove ingest`, the app's *Add papers*, `cove eval --corpus`) therefore holds
``COVE_HOME/writer.lock`` while it runs. The lock is an ``flock`` on an open file: the kernel drops it
when the process ends, however it ends (Ctrl-C, SIGKILL, a crash), so a stale lock cannot block a
library. A second writer fails at once with a message naming the holder (pid, command, since when),
read from the lock file. Readers (`cove ask`, the app's searches) never take the lock; they notice
a new generation of the store and reload it (`cove.store.ChunkStore.catch_up`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "writer.lock"


class LibraryBusy(RuntimeError):
    """Another process is writing to this library."""


@contextlib.contextmanager
def writer_lock(home: Path, command: str | None = None) -> Iterator[None]:
    """Hold the home's writer lock for the duration of the block, or raise `LibraryBusy` at once."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LibraryBusy(busy_message(home, _read_holder(fd))) from None
        holder = {"pid": os.getpid(), "command": command or _this_command(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the file stays (deleting it would race a waiting writer); its text goes
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def busy_message(home: Path, holder: dict) -> str:
    if not holder.get("pid"):
        who = "another process (it is just starting)"
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        minutes = max(0.0, time.time() - holder.get("since", 0)) / 60
        who = f"process {holder['pid']} (`{holder.get('command', '?')}`), since {since} ({minutes:.0f} min ago)"
    return (
        f"the library at {home} is being changed by {who}; one ingest at a time keeps it consistent. "
        "Wait for it to finish (or stop it), then run this again: nothing was changed"
    )


def _read_holder(fd: int) -> dict:
    with contextlib.suppress(OSError, ValueError):
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        if isinstance(holder, dict):
            return holder
    return {}


def _this_command() -> str:
    """What this process is, as a user would recognise it: `cove ingest --from papers`."""
    args = list(sys.argv)
    if "streamlit" in sys.modules and "run" in args:
        return "cove chat (the web app)"
    if args and Path(args[0]).name in ("cli.py", "cove"):
        args[0] = "cove"
    text = " ".join(args) or "python"
    return text if len(text) <= 160 else text[:157] + "..."
