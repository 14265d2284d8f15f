"""The hostile corpus: every input ends as a clean index or a recorded failure with a reason, within
its bounds (parse deadline, memory limit, caps), never a traceback, and the good documents ingested
in the same run are all there.

The inputs are every file in `tests/fixtures/hostile/` (whoever added it: inputs named ``web-*``
belong to the web-facing tests and only have to end cleanly here) plus the big or binary ones
`tests/hostile.py` generates at test time. Real components throughout: parser worker processes,
the bundled MiniLM model, embedded Chroma, the loopback HTTP server.
"""

from __future__ import annotations

import gzip
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import FIXTURES, make_text_pdf
from hostile import LINES_ABOUT_ATTENTION, generate_hostile, shared_stream_pdf

from cove.catalog import Catalog
from cove.settings import load_settings
from cove.store import ChunkStore
from ingest.pipeline import ingest
from ingest.sources import collect_sources, from_path, from_url

pytestmark = pytest.mark.slow
HOSTILE = FIXTURES / "hostile"
OK = "ok"

# What each input must end as: OK (indexed: its text is data like any other) or a failure whose
# reason contains the given words. Inputs not listed (another suite's) must end either way.
EXPECTED = {
    "role-tokens-chatml.md": OK,
    "role-tokens-other-models.txt": OK,
    "role-tokens.pdf": OK,
    "injection-ignore-previous.md": OK,
    "injection-fake-system.txt": OK,
    "injection-fake-sources.md": OK,
    "injection-polite-request.txt": OK,
    "injection-multilingual.txt": OK,
    "injection-hidden.html": OK,
    "injection-evasive.md": OK,
    "deep-nesting.html": OK,
    "long-line.txt": OK,
    "1706.03762.pdf": OK,  # named like the Transformer paper, without its stamp: indexed under its own id
    "html-posing-as.pdf": "expected a PDF but got an HTML page",
    "empty.md": "too little text",
    "whitespace-only.txt": "too little text",
    "nul-bytes.txt": "unsupported binary content",
    "gzip-posing-as.pdf": "unsupported binary content",
    "truncated.pdf": "corrupt or unreadable PDF",
    "deep-array.pdf": "corrupt or unreadable PDF",
    "page-tree-loop.pdf": "corrupt or unreadable PDF",
    "shared-content-stream.pdf": "parse.max_content_mb",
    "flate-bomb.pdf": "safety limit of the PDF reader",
    "page-count-bomb.pdf": "declares 1,000,000 pages",
    "page-count-liar.pdf": "safety limit of the PDF reader",
    "oversize.pdf": "over the 64 MB limit",
    "caf\udce9-notes-\udcff.txt": "not valid UTF-8",
    "link-out.md": "outside the folder: refused",
    "link-to-fifo.pdf": "not a regular file (a FIFO)",
    "fifo.txt": "not a regular file (a FIFO)",
}


def _good_documents(tmp_path: Path) -> list:
    """Documents that must come through the hostile run untouched."""
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(FIXTURES / "notes.md", good / "notes.md")
    shutil.copy(FIXTURES / "circuits_article.html", good / "article.html")
    (good / "plain.pdf").write_bytes(make_text_pdf("Query key and value vectors are projected per head. " * 12))
    return [from_path(p) for p in sorted(good.iterdir())]


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _outcomes(report) -> dict[str, tuple[str, str]]:
    """{input file name: (status, reason)} for a run over the hostile folder."""
    out = {}
    for result in report.results:
        name = Path(result.source).name if "/" in result.source else result.source
        out[name] = (result.status, result.reason)
    return out


def test_every_hostile_input_ends_cleanly_and_nothing_else_is_lost(cove_home, tmp_path):
    folder = tmp_path / "hostile"
    shutil.copytree(HOSTILE, folder, symlinks=True)
    generated = generate_hostile(folder, tmp_path / "outside")
    inputs = sorted({p.name for p in HOSTILE.iterdir()} | set(generated))
    assert len(inputs) >= 20, inputs
    assert set(EXPECTED) <= set(inputs), set(EXPECTED) - set(inputs)

    settings = load_settings({"parse": {"timeout_s": 60, "workers": 2}})
    sources, bad = collect_sources(paths=[folder])
    good = _good_documents(tmp_path)
    report = ingest(sources + good, settings, bad_inputs=bad)

    outcomes = _outcomes(report)
    for name in inputs:
        shown = _printable(name)  # a name that is not UTF-8 is reported with replacement characters
        assert shown in outcomes, f"{name!r} vanished from the report"
        status, reason = outcomes[shown]
        assert "Traceback" not in reason and "\n" not in reason, (name, reason)
        expected = EXPECTED.get(name)
        if expected == OK:
            assert status == "ingested", (name, status, reason)
        elif expected is not None:
            assert status == "failed" and expected in reason, (name, status, reason)
        else:  # another suite's input: either outcome, but a failure says why
            assert status == "ingested" or (status == "failed" and reason), (name, status, reason)

    # The good documents are all there, and the catalog and the store agree chunk for chunk.
    catalog = Catalog(settings.catalog_path)
    records = {r.doc_id: r for r in catalog.all()}
    catalog.close()
    for source in good:
        assert records[source.doc_id].status == "ok", records[source.doc_id]
    stored = ChunkStore(settings).ids_by_document()
    assert stored == {d: r.chunks for d, r in records.items() if r.status == "ok"}

    # The stray "1706.03762.pdf" did not take the Transformer paper's id.
    fake = next(r for r in records.values() if r.source == "1706.03762.pdf")
    assert fake.doc_id.startswith("file-") and not fake.arxiv_id and "no arXiv stamp" in fake.warnings
    # The file behind the refused link was never read into the library.
    assert not any("Private" in r.title for r in records.values())


def test_a_parse_past_its_deadline_is_killed_and_the_others_go_on(cove_home, tmp_path):
    """The shared-stream PDF under caps raised out of the way: only the deadline stops it."""
    (tmp_path / "slow.pdf").write_bytes(shared_stream_pdf())
    (tmp_path / "fine.md").write_text("# Fine\n\n" + " ".join(LINES_ABOUT_ATTENTION))
    settings = load_settings({"parse": {"timeout_s": 3, "max_content_mb": 10_000, "workers": 1}})
    report = ingest([from_path(tmp_path / "slow.pdf"), from_path(tmp_path / "fine.md")], settings)
    outcomes = _outcomes(report)
    assert outcomes["slow.pdf"] == ("failed", "parsing took longer than 3 s: killed")
    assert outcomes["fine.md"][0] == "ingested"  # after the kill, a fresh worker parsed the next one


def test_a_parse_past_its_memory_limit_fails_and_the_others_go_on(cove_home, tmp_path):
    """60 MB of two-word lines (under the 64 MB file cap): splitting it into twelve million line
    objects needs far more than a 256 MB address space, so the worker's allocations fail, not the run."""
    with (tmp_path / "huge.txt").open("wb") as f:
        for _ in range(60):
            f.write(b"head a\n" * ((1 << 20) // 7) + b"\n" * ((1 << 20) % 7))
    (tmp_path / "fine.md").write_text("# Fine\n\n" + " ".join(LINES_ABOUT_ATTENTION))
    settings = load_settings({"parse": {"max_memory_mb": 256, "workers": 1}})
    report = ingest([from_path(tmp_path / "huge.txt"), from_path(tmp_path / "fine.md")], settings)
    outcomes = _outcomes(report)
    status, reason = outcomes["huge.txt"]
    assert status == "failed" and "more than 256 MB of memory" in reason, reason
    assert outcomes["fine.md"][0] == "ingested"


class _GzipBombServer:
    """Serves one gzip-encoded response that inflates to 200 MB (a few hundred KB on the wire)."""

    def __init__(self) -> None:
        body = gzip.compress(b"%PDF-1.4\n" + b"0" * (200 << 20), compresslevel=9)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/pdf")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/bomb.pdf"


def test_a_gzip_bomb_download_is_cut_at_the_size_cap(cove_home, monkeypatch):
    monkeypatch.setenv("COVE_FETCH__ALLOW_PRIVATE_HOSTS", "true")  # the bomb is served on loopback
    server = _GzipBombServer()
    try:
        settings = load_settings({"fetch": {"max_bytes": 8 << 20, "retries": 0}})
        report = ingest([from_url(server.url)], settings)
    finally:
        server.httpd.shutdown()
    (result,) = report.results
    assert result.status == "failed" and "too large" in result.reason, result
