"""Parse documents in child processes that are killed when they take too long or grow too large.

A hostile document (a 3 KB PDF whose sixty pages draw one 0.7 MB stream, a decompression bomb, a
parser bug that never returns) must cost a bounded amount of time and memory and then fail with a
reason, while the other documents of the run go on. Inside the parser nothing can guarantee that,
so the bounds are enforced from outside:

- every document is parsed in a *spawned* worker process (forking after torch and Chroma have
  started threads is unsafe), which lowers its own address-space limit (RLIMIT_AS) first, so an
  allocation past `max_memory_mb` fails inside the worker as a `MemoryError`;
- the supervisor (this process) waits on the workers' pipes with the earliest deadline as timeout;
  a worker still busy at its deadline is killed and the document recorded as failed ("parsing took
  longer than 120 s: killed"); a worker that dies (a crash in C code, the kernel's OOM killer) costs
  only its document;
- a worker parses one document after another and is replaced only when it was killed or died, so
  the start-up cost (~0.5 s to import pypdf and lxml) is paid once per worker, not per document.

Besides documents, a worker reads BibTeX exports (job kind `BIBTEX`, `ingest.bibtex.read_bibtex`): an
export is a file from elsewhere too, and bibtexparser keeps every block of it in memory.

There is no in-process shortcut: a run with one document starts one worker, so the bounds always hold.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import resource
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cove.docs import ParsedDocument
from ingest.parse import ParseError, ParseLimits, parse_file
from ingest.refentries import ReferenceError as RefEntryError

BIBTEX = "bibtex"  # a job kind besides the document kinds: a .bib export, read into references

if TYPE_CHECKING:
    from cove.settings import ParseSettings


@dataclass(frozen=True)
class WorkerLimits:
    """What bounds one parse: its caps, its wall-clock time and its worker's address space."""

    parse: ParseLimits
    timeout_s: float = 120.0
    max_memory_mb: int = 1024

    @classmethod
    def from_settings(cls, parse: ParseSettings) -> WorkerLimits:
        """The limits of the `parse` settings section (parse.timeout_s, parse.max_memory_mb and the caps)."""
        return cls(ParseLimits.from_settings(parse), parse.timeout_s, parse.max_memory_mb)


@dataclass
class ParseJob:
    path: str
    kind: str
    tag: Any = None  # the caller's handle for this document, handed back with the outcome


@dataclass
class ParseOutcome:
    job: ParseJob
    document: ParsedDocument | tuple | None  # for a BIBTEX job: (references, bad entries)
    error: str | None
    seconds: float
    report: dict = field(default_factory=dict)  # the parse report of a document read but refused (a scan)
    # What stopped the job: "time" or "memory" (a bound crossed), "crash" (the worker died: a signal or an
    # exit, which running out of address space can also cause), "" for a failure the parser reported.
    limit: str = ""


# --- the worker process ---------------------------------------------------------------------------------


def _worker_main(conn: Connection, limits: WorkerLimits) -> None:
    """Parse (path, kind) requests from `conn` until told to stop; answer (status, document or reason)."""
    _die_with_parent()
    limit = limits.max_memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _warm_up()
    conn.send((READY, None))  # a document's deadline starts now, not while Python starts up
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the supervisor is gone
        if request is None:
            return
        status, value = _parse_one(*request, limits)
        try:
            conn.send((status, value))
        except MemoryError:
            status = FATAL
            conn.send((status, _out_of_memory(limits)))
        except (OSError, ValueError):
            return
        if status == FATAL:  # after a MemoryError the heap may be in a poor state: a fresh worker follows
            return


READY, OK, ERROR, FATAL = "ready", "ok", "error", "fatal"  # FATAL: failed, and the worker stops
STARTUP_TIMEOUT_S = 120.0  # a worker that cannot even import its parsers in this long is broken


def _warm_up() -> None:
    """Import the parsers before the first deadline starts (a second or two on a busy machine)."""
    import bs4  # noqa: F401
    import lxml.etree  # noqa: F401
    import pypdf  # noqa: F401


def _parse_one(path: str, kind: str, limits: WorkerLimits) -> tuple[str, Any]:
    """(status, document or reason) for one document; every failure is a reason in plain words."""
    try:
        if kind == BIBTEX:
            from ingest.bibtex import read_bibtex

            return OK, read_bibtex(Path(path))
        return OK, parse_file(path, kind, limits=limits.parse)
    except ParseError as err:
        return ERROR, (str(err), err.report)
    except RefEntryError as err:  # the .bib reader's own reason, in its words
        return ERROR, str(err)
    except MemoryError:
        return FATAL, _out_of_memory(limits)
    except RecursionError:
        return ERROR, "the document is nested too deeply to parse"
    except Exception as err:  # a parser bug must cost one document, not the run
        return ERROR, f"the parser failed ({type(err).__name__}: {err})"


def _out_of_memory(limits: WorkerLimits) -> str:
    return f"parsing needed more than {limits.max_memory_mb} MB of memory (parse.max_memory_mb): stopped"


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the supervisor dies (even by SIGKILL); best effort elsewhere."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


# --- the supervisor -----------------------------------------------------------------------------------


class _Worker:
    """One worker process and its pipe. Starting one swaps ``sys.modules['__main__']`` for a moment
    (see `_plain_main_module`), so workers are started from the caller's thread where possible."""

    def __init__(self, context, limits: WorkerLimits) -> None:
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_conn, limits), daemon=True)
        with _plain_main_module():
            self.process.start()
        child_conn.close()
        self.ready = False
        self.job: ParseJob | None = None
        self.started = 0.0

    def give(self, job: ParseJob) -> None:
        """Send `job`; its deadline runs from now (after waiting, once, for the worker to start)."""
        if not self.ready:
            if not self.conn.poll(STARTUP_TIMEOUT_S):
                raise OSError(f"it did not start within {STARTUP_TIMEOUT_S:g} s")
            try:
                self.conn.recv()
            except EOFError:
                raise OSError(_died(self)) from None
            self.ready = True
        self.job, self.started = job, time.monotonic()
        self.conn.send((job.path, job.kind))

    def stop(self, kill: bool = False) -> None:
        if not kill:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
            self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


_DONE = object()  # the supervising thread's last word
_POLL_S = 0.5  # how often the supervising thread looks at a stop request while workers are busy


class ParseSupervisor:
    """Runs parse jobs on up to `workers` worker processes, each job under `limits`.

    with ParseSupervisor(limits, workers=2) as supervisor:
        for outcome in supervisor.run(jobs):
            ...  # outcomes arrive as documents finish, not in job order
    """

    def __init__(self, limits: WorkerLimits, workers: int = 2) -> None:
        self.limits = limits
        self.size = max(1, workers)
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []

    def __enter__(self) -> ParseSupervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._idle:
            worker.stop()
        self._idle.clear()

    def run(self, jobs: Iterable[ParseJob]) -> Iterator[ParseOutcome]:
        """Parse every job; yield each outcome as it is known (done, failed, killed or crashed).

        The workers are driven from a thread of their own, so they go on parsing (and deadlines are
        enforced) while the caller is busy with an outcome, e.g. embedding the document."""
        pending = deque(jobs)
        while len(self._idle) < min(self.size, len(pending)):  # started here, not in the thread: see _Worker
            self._idle.append(_Worker(self._context, self.limits))
        outcomes: queue.Queue = queue.Queue()
        stop = threading.Event()
        thread = threading.Thread(target=self._supervise, args=(pending, outcomes, stop), daemon=True)
        thread.start()
        try:
            while (item := outcomes.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # a consumer that stops early (or an error) must not leave workers parsing
            stop.set()
            thread.join()

    def _supervise(self, pending: deque[ParseJob], outcomes: queue.Queue, stop: threading.Event) -> None:
        busy: list[_Worker] = []
        try:
            while (pending or busy) and not stop.is_set():
                # Parsed documents wait for the caller (who embeds them one by one): a few in hand
                # are enough, more would only hold memory.
                while pending and len(busy) < self.size and outcomes.qsize() < 2 * self.size:
                    job = pending.popleft()
                    try:
                        busy.append(self._start(job))
                    except OSError as err:  # this document cannot be parsed here; say why, go on
                        outcomes.put(ParseOutcome(job, None, f"the parser process could not start: {err}", 0.0))
                if not busy:
                    stop.wait(0.05)  # the caller is behind: wait for it to take an outcome
                    continue
                next_deadline = min(w.started + self.limits.timeout_s for w in busy)
                timeout = min(max(0.0, next_deadline - time.monotonic()), _POLL_S)
                wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
                for worker in list(busy):
                    outcome, reusable = self._check(worker)
                    if outcome is None:
                        continue
                    busy.remove(worker)
                    if reusable:
                        self._idle.append(worker)
                    else:
                        worker.stop(kill=True)
                    outcomes.put(outcome)
        except BaseException as err:  # handed to the caller's thread
            outcomes.put(err)
        finally:
            for worker in busy:
                worker.stop(kill=True)
            outcomes.put(_DONE)

    def _start(self, job: ParseJob) -> _Worker:
        """A worker busy with `job`: an idle one if it is still alive, else a new one."""
        while self._idle:
            worker = self._idle.pop()
            try:
                worker.give(job)
                return worker
            except (OSError, ValueError, EOFError):  # it died while idle
                worker.stop(kill=True)
        worker = _Worker(self._context, self.limits)
        try:
            worker.give(job)
        except (OSError, ValueError):
            worker.stop(kill=True)
            raise
        return worker

    def _check(self, worker: _Worker) -> tuple[ParseOutcome | None, bool]:
        """The outcome of a busy worker's job if it is over (and whether the worker can be reused)."""
        job = worker.job
        assert job is not None
        seconds = time.monotonic() - worker.started
        if worker.conn.poll():
            try:
                status, value = worker.conn.recv()
            except (EOFError, OSError):
                return ParseOutcome(job, None, _died(worker), seconds, limit="crash"), False
            if status == OK:
                return ParseOutcome(job, value, None, seconds), True
            reason, report = value if isinstance(value, tuple) else (value, {})
            limit = "memory" if status == FATAL else ""  # FATAL is only ever sent when memory ran out
            return ParseOutcome(job, None, reason, seconds, report, limit), status != FATAL
        if not worker.process.is_alive():
            return ParseOutcome(job, None, _died(worker), seconds, limit="crash"), False
        if seconds >= self.limits.timeout_s:
            return ParseOutcome(
                job, None, f"parsing took longer than {self.limits.timeout_s:g} s: killed", seconds, limit="time"
            ), False
        return None, True


def _died(worker: _Worker) -> str:
    worker.process.join(timeout=1)
    code = worker.process.exitcode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"the parser process was killed by {signal.Signals(-code).name} (out of memory, or a crash)"
    return f"the parser process stopped unexpectedly (exit code {code})"


@contextlib.contextmanager
def _plain_main_module():
    """Start spawned workers without re-running the parent's ``__main__`` script.

    A spawned process re-imports the parent's main module. Under Streamlit that is the chat app
    script, so each parse worker would start building the app (and open its SQLite files). The
    parse workers need nothing from ``__main__``, so they are started against an empty one.
    """
    real_main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if real_main is None:
            sys.modules.pop("__main__", None)
        else:
            sys.modules["__main__"] = real_main
