"""Real servers on 127.0.0.1 for tests and benchmarks: a Chroma server, a llama.cpp model server, the
chat app as `cove chat` starts it, and the API as `cove serve` starts it.

Both are the programs a lab would run (`chroma run`, `python -m llama_cpp.server`), started as child
processes on a free port, waited for until they answer, and stoppable and restartable on the same
port and data, so tests can take them away mid-operation and bring them back.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A child process serving HTTP on 127.0.0.1:`port`, ready when `ready_path` answers 200."""

    ready_path = "/"
    ready_status = frozenset({200})
    name = "server"
    host = "127.0.0.1"

    def __init__(self, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] | None = None  # None: this process's environment
        self.ready_headers: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 120) -> ServerProcess:
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} while starting")
            try:
                got = httpx.get(self.url + self.ready_path, headers=self.ready_headers, timeout=1)
                if got.status_code in self.ready_status:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.name} did not answer on {self.url} within {timeout:.0f} s")

    def stacks(self) -> str:
        """The server's log after asking it for every thread's stack (`cove serve` writes them on
        SIGUSR1): what to show when a test finds the server stuck."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        return self.log.read_text(errors="replace")[-6000:] if self.log else ""

    def kill(self) -> None:
        """Stop at once, as a crash or a pulled plug would (no graceful shutdown)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ChromaServer(ServerProcess):
    """`chroma run` (the server chromadb ships) keeping its data in `path`."""

    ready_path = "/api/v2/heartbeat"
    name = "chroma run"

    def __init__(self, path: Path, port: int | None = None, log: Path | None = None) -> None:
        super().__init__(port, log)
        self.path = path

    def command(self) -> list[str]:
        chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
        return [chroma, "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)]

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class LlamaServer(ServerProcess):
    """`python -m llama_cpp.server` serving a GGUF model over the OpenAI API."""

    ready_path = "/v1/models"
    name = "llama_cpp.server"

    def __init__(
        self,
        model_path: str,
        port: int | None = None,
        n_ctx: int = 4096,
        log: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(port, log)
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.extra_args = extra_args  # e.g. ("--interrupt_requests", "False") to serve several clients

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", self.model_path,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx), *self.extra_args,
        ]  # fmt: skip

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"


class CoveChat(ServerProcess):
    """`cove chat` over the library in `home`, as a user starts it (the CLI execs Streamlit)."""

    ready_path = "/_stcore/health"
    ready_status = frozenset({200, 403})  # 403: up, but wants the token `cove chat` generated and printed
    name = "cove chat"

    def __init__(
        self,
        home: Path,
        host: str = "127.0.0.1",
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(free_port(), log)
        self.home = home
        self.host = host
        self.env = {**os.environ, **(env or {})}
        if self.env.get("COVE_APP__TOKEN"):
            self.ready_headers = {"X-Cove-Token": self.env["COVE_APP__TOKEN"]}

    def command(self) -> list[str]:
        cove = Path(sys.executable).with_name("cove")
        args = ["chat", "--port", str(self.port), "--host", self.host, "--home", str(self.home)]
        if cove.exists():
            return [str(cove), *args]
        return [sys.executable, "-m", "app.cli", *args]


class CoveApiServer(ServerProcess):
    """`cove serve` over the library in `home` (`env` adds settings, e.g. COVE_API__TOKEN)."""

    ready_path = "/v1/models"
    name = "cove serve"

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        env: dict | None = None,
        log: Path | None = None,
    ) -> None:
        super().__init__(port, log)
        self.home, self.host = home, host
        root = Path(__file__).resolve().parents[1]
        self.env = {**os.environ, "COVE_HOME": str(home), "HF_HUB_OFFLINE": "1", **dict(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), self.env.get("PYTHONPATH", "")) if p)
        token = self.env.get("COVE_API__TOKEN")
        self.ready_headers = {"Authorization": f"Bearer {token}"} if token else {}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "app.cli", "serve", "--host", self.host, "--port", str(self.port)]


class PostgresServer:
    """PostgreSQL for the lexical index, started by `scripts/postgres.sh` (what a lab runs) in a
    fresh folder under /tmp (the server runs as the `postgres` user, which must reach it)."""

    def __init__(self, port: int | None = None) -> None:
        import tempfile

        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cove-pg-", dir="/tmp"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.script = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"
        self.url = ""

    def _run(self, *args: str) -> str:
        done = subprocess.run([str(self.script), *args], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/postgres.sh {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self) -> PostgresServer:
        printed = self._run("start", str(self.data), str(self.port))
        self.url = printed.split("=", 1)[1]
        return self

    def stop(self) -> None:
        self._run("stop", str(self.data))

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
