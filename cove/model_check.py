"""The model self-check: a child process proves a model file and llama.cpp build work before Cove loads them.

A llama.cpp library built for the wrong CPU does not raise an error: it kills the process with
SIGSEGV or SIGILL at the first token (AMX code where the OS grants no AMX state, AVX-512 code on an
AVX2-only CPU). If that happened inside `cove serve` or the chat app, every user's answer would go
with it. So, the first time a model file is used with a build and its run settings, a child process
loads it and generates a few tokens. A crash or a hang there becomes a `ModelCrashed` error that
says what failed (the signal, the CPU's features, the build's flags) and the command that fixes it;
the process asking stays up.

The result is remembered under ``COVE_HOME/models/checks/<key>.json``; the key hashes the model file
(path, size, modification time), the build (llama-cpp-python's version and the bytes of its native
libraries), the machine (its CPU flags and what the OS grants: a home shared across hosts, or a VM
that moved, is checked again) and the run settings the child used. A healthy machine pays for the
check once; a rebuilt library is a new key. Only a fault that repeats (SIGSEGV, SIGILL, SIGBUS,
SIGFPE, SIGABRT) or a load error is written down; a time-out, a kill or an interrupt is remembered
for a few minutes in the process (so a server does not wait again on every question), then checked
again. `cove model-check --recheck` forgets a written-down result. Processes sharing a home check a
model one at a time (a lock file per key).

The Q8_0 conversion of a Q4_1 model (`cove.model_format`) runs in a child too, for the same reason.

    python -m cove.model_check check '<json of llama_kwargs>'   # what the check's child runs
    python -m cove.model_check convert SOURCE TARGET            # the conversion's child
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from cove import cpu

log = logging.getLogger("cove.model_check")

CHECK_PROMPT = (
    "Question: How many convolution layers does the residual network in this paper use? Answer in one short sentence, "
    "citing the paper by its title."
)  # some forty tokens: prefill runs batched kernels (where AMX lives), then a few single-token decodes
CHECK_TOKENS = 4
FIX_COMMAND = "scripts/install.sh --rebuild-llama"
PORTABLE_FIX_COMMAND = "COVE_LLAMA_CPU=portable scripts/install.sh --rebuild-llama"
# Faults that the same build repeats on the same machine: worth writing down.
LASTING_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGILL, signal.SIGBUS, signal.SIGFPE, signal.SIGABRT})
TRANSIENT_MEMORY_S = 300.0  # how long this process trusts a time-out or an interrupt before checking again


class CheckFailed(RuntimeError):
    """The child did not generate its tokens; `str()` is the whole explanation for the user."""


@dataclass
class CheckResult:
    ok: bool
    key: str
    model: str
    seconds: float
    detail: str = ""  # the error, for a failed check
    lasting: bool = True  # a crash repeats with the same build; a time-out may be a busy machine (not kept)
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    checked_at: float = 0.0


@lru_cache(maxsize=1)
def build_identity() -> dict:
    """llama-cpp-python's version, a hash of its native libraries, and the CMake flags it was built
    with (recorded by scripts/install.sh; absent for a build made some other way)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return {"version": "not installed", "libraries": "", "cmake_args": ""}
    package = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    for library in sorted(package.glob("lib/*.so*")) + sorted(package.glob("lib/*.dylib")):
        digest.update(library.name.encode())
        digest.update(library.read_bytes())
    version = ""
    init = package / "__init__.py"
    if init.exists():
        for line in init.read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=", 1)[1].strip().strip("\"'")
    recorded = Path(sys.prefix) / "cove-llama-cmake-args.txt"
    cmake_args = recorded.read_text().strip() if recorded.exists() else ""
    return {"version": version, "libraries": digest.hexdigest()[:16], "cmake_args": cmake_args}


@lru_cache(maxsize=1)
def machine_identity() -> dict:
    """What decides whether a build faults here: the architecture, CPU flags and OS-granted state."""
    machine = cpu.read_machine()
    return {
        "arch": machine.x86_64,
        "flags": sorted(machine.flags),
        "xstate": machine.xstate,
        "amx": machine.amx_granted,
    }


def check_key(model_path: str, llama_kwargs: dict) -> str:
    stat = os.stat(model_path)
    identity = {
        "model": [os.path.abspath(model_path), stat.st_size, stat.st_mtime_ns],
        "build": build_identity(),
        "machine": machine_identity(),
        "run": {k: v for k, v in sorted(llama_kwargs.items()) if k != "model_path"},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


class ModelChecker:
    """Runs and remembers self-checks (and conversions) under `state_dir`; one at a time per home."""

    def __init__(self, state_dir: Path | None, timeout_s: float) -> None:
        self.state_dir = state_dir
        self.record_dir = state_dir / "checks" if state_dir else None
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._seen: dict[str, CheckResult] = {}  # this process's memory (all it has without a home)
        self._not_converted: dict[str, str] = {}  # source -> why its conversion failed (run it as stored)

    def ensure(self, model_path: str, llama_kwargs: dict) -> CheckResult:
        """The check's result for this model and build, from memory or run now; raises `CheckFailed`."""
        key = check_key(model_path, llama_kwargs)
        with self._lock, self._home_lock(key):
            result = self._recall(key)  # again under the lock: another process may have just checked
            if result is None:
                result = self._remember(run_check(model_path, llama_kwargs, key, self.timeout_s))
        if not result.ok:
            raise CheckFailed(result.detail)
        return result

    def forget(self, model_path: str, llama_kwargs: dict) -> None:
        """Drop the remembered result, so the next `ensure` checks again (`cove model-check --recheck`)."""
        key = check_key(model_path, llama_kwargs)
        with self._lock:
            self._seen.pop(key, None)
            path = self._path(key)
            if path is not None:
                path.unlink(missing_ok=True)

    def prepare(self, model_path: str, max_mb: int) -> str:
        """The file to run: `model_path`, or its Q8_0 copy where its format is slow on x86 (made now,
        in a child process, the first time). The copy is only a speed-up: where it cannot be made
        (no home, a full disk, a failed child), the file runs as it is and the reason is logged."""
        from cove import model_format

        source = Path(model_path)
        if self.state_dir is None or model_path in self._not_converted:
            return model_path
        if not model_format.needs_conversion(source, max_mb):
            return model_path
        target = self.state_dir / model_format.converted_name(source)
        with self._lock, self._home_lock(target.name):
            if target.exists():
                return str(target)
            partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                failure = run_child(["convert", str(source), str(partial)], self.timeout_s, source.name, "convert it")
                if failure is None and partial.exists():
                    partial.replace(target)  # whole or not at all
                    return str(target)
                why = failure.explanation if failure else "the converter wrote nothing"
            except OSError as err:
                why = f"cannot write the copy: {err}"
            try:
                partial.unlink(missing_ok=True)
            except OSError:  # its folder is not there either
                pass
            log.warning("running %s as stored (no Q8_0 copy): %s", source.name, why)
            self._not_converted[model_path] = why
            return model_path

    def _home_lock(self, name: str):
        """An exclusive lock file per key under the home, so processes sharing it check once."""
        return _FileLock(self.record_dir / f"{name}.lock" if self.record_dir else None)

    def _path(self, key: str) -> Path | None:
        return self.record_dir / f"{key}.json" if self.record_dir else None

    def _recall(self, key: str) -> CheckResult | None:
        if key in self._seen:
            result = self._seen[key]
            if result.lasting or time.time() - result.checked_at < TRANSIENT_MEMORY_S:
                return result
            del self._seen[key]  # a time-out long ago: check again
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            return CheckResult(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # a damaged record: check again
            return None

    def _remember(self, result: CheckResult) -> CheckResult:
        self._seen[result.key] = result
        path = self._path(result.key)
        if path is not None and result.lasting:  # a time-out is checked again later
            temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                temporary.write_text(json.dumps(asdict(result), indent=2))
                temporary.replace(path)
            except OSError as err:  # a read-only or full home: this process still remembers it
                log.warning("cannot record the model check in %s: %s", path.parent, err)
        return result


class _FileLock:
    """``with _FileLock(path):`` holds an exclusive flock on `path` (nothing when `path` is None)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.handle = path, None

    def __enter__(self) -> _FileLock:
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.handle = open(self.path, "a")  # noqa: SIM115 (held until __exit__)
                fcntl.flock(self.handle, fcntl.LOCK_EX)
            except OSError as err:  # a read-only home: check without the cross-process lock
                log.warning("no lock for the model check at %s: %s", self.path, err)
                self.handle = None
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # releases the lock


def run_check(model_path: str, llama_kwargs: dict, key: str, timeout_s: float) -> CheckResult:
    """Load the model in a child process and generate a few tokens; a crash or a hang is a failed result."""
    started = time.time()
    name = Path(model_path).name
    report: list[str] = []
    failure = run_child(["check", json.dumps({"model_path": model_path, **llama_kwargs})], timeout_s, name,
                        f"generate {CHECK_TOKENS} tokens", report)  # fmt: skip
    seconds = time.time() - started
    if failure:
        return CheckResult(False, key, name, seconds, failure.explanation, lasting=not failure.transient,
                           checked_at=time.time())  # fmt: skip
    speeds = json.loads(report[0])
    if not isinstance(speeds, dict) or set(speeds) != {"prefill_tokens_per_s", "decode_tokens_per_s"}:
        detail = explain(name, "ended its check without its report (an unexpected llama-cpp-python?)")
        return CheckResult(False, key, name, seconds, detail, checked_at=time.time())
    return CheckResult(True, key, name, seconds, checked_at=time.time(), **speeds)


@dataclass
class ChildFailure:
    explanation: str  # the whole message for the user
    transient: bool = False  # a time-out, a kill (out of memory?) or an interrupt may not happen again


def run_child(
    arguments: list[str], timeout_s: float, model_name: str, doing: str, report: list | None = None
) -> ChildFailure | None:
    """Run ``python -m cove.model_check <arguments>``: None when it worked (its last output line goes
    to `report`), else how it failed."""
    command = [sys.executable, "-m", "cove.model_check", *arguments]
    try:
        child = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ChildFailure(explain(model_name, f"did not {doing} within {timeout_s:.0f} s (killed)"), transient=True)
    if child.returncode == 0:
        lines = child.stdout.strip().splitlines()
        try:
            if report is not None:
                json.loads(lines[-1])  # the child's report must be whole
                report.append(lines[-1])
            return None
        except (ValueError, IndexError):
            pass  # exited 0 without its report: as broken as a crash
    if child.returncode < 0:
        signal_name = _signal_name(-child.returncode)
        what = f"crashed with {signal_name} while trying to {doing}"
        return ChildFailure(explain(model_name, what), transient=-child.returncode not in LASTING_SIGNALS)
    last = [line for line in child.stderr.strip().splitlines() if line.strip()][-3:]
    why = " ".join(last)[-400:] or "no message"
    return ChildFailure(explain(model_name, f"failed (exit status {child.returncode}): {why}"))


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    meaning = {
        "SIGSEGV": "a memory or protection fault",
        "SIGILL": "an instruction this CPU does not have",
        "SIGBUS": "a bus error",
        "SIGKILL": "killed, out of memory?",
        "SIGABRT": "llama.cpp aborted",
    }.get(name)
    return f"{name} ({meaning})" if meaning else name


def explain(model_name: str, what: str) -> str:
    """The whole message: what failed, on which machine and build, and the command that fixes it."""
    build = build_identity()
    if build["cmake_args"]:  # built by scripts/install.sh for this machine: the same flags would fault again
        flags = build["cmake_args"]
        fix = f"the safest build, `{PORTABLE_FIX_COMMAND}` (or `{FIX_COMMAND}` if this venv came from another machine)"
    else:
        flags = "flags not recorded: not built by scripts/install.sh (a -march=native build?)"
        fix = f"rebuild llama.cpp for this CPU with `{FIX_COMMAND}` (or, the safest build, `{PORTABLE_FIX_COMMAND}`)"
    return (
        f"The local model {model_name} {what}, in Cove's self-check process (Cove itself is unaffected). "
        f"This machine: {cpu.describe()}. llama-cpp-python {build['version']} built with {flags}. "
        f"Fix: {fix}; Cove checks a new build by itself (`cove model-check` tells). Or use a model server "
        "(--openai-url)."
    )


def _child(arguments: str) -> int:
    """In the child: load, prefill the check prompt, decode a few tokens, print the speeds as JSON."""
    from llama_cpp import Llama

    kwargs = json.loads(arguments)
    llm = Llama(**kwargs, verbose=False)
    tokens = llm.tokenize(CHECK_PROMPT.encode())
    started = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(CHECK_TOKENS):
        llm.eval([llm.sample(temp=0.0)])
    decode = time.perf_counter() - started
    print(
        json.dumps(
            {
                "prefill_tokens_per_s": round(len(tokens) / max(prefill, 1e-9), 1),
                "decode_tokens_per_s": round(CHECK_TOKENS / max(decode, 1e-9), 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "convert":
        from cove.model_format import convert

        convert(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(_child(sys.argv[2]))
