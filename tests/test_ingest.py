"""End-to-end ingest with real components: real PDFs, the bundled MiniLM model, embedded Chroma,
a loopback HTTP server, the `cove` CLI in a subprocess, and a SIGKILL in the middle of a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, corpus_pdf, make_corrupt_pdf, make_encrypted_pdf, make_scanned_pdf

from cove.catalog import Catalog
from cove.settings import load_settings
from cove.store import META_COLLECTION, ChunkStore
from ingest.pipeline import ingest
from ingest.sources import expand_local, from_arxiv, from_url

pytestmark = pytest.mark.slow


def _settings(server=None, **overrides):
    fetch = {"timeout_s": 2.0, "retries": 1, "backoff_s": 0.01, "arxiv_delay_s": 0}
    if server is not None:  # the fixture server is on loopback: allowed explicitly
        fetch |= {
            "arxiv_pdf_base": f"{server.base}/pdf/",
            "arxiv_api_url": f"{server.base}/api/query",
            "allow_private_hosts": True,
        }
    return load_settings({"fetch": fetch, **overrides})


def _library_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "papers"
    folder.mkdir()
    shutil.copy(corpus_pdf("2012.14913.pdf"), folder / "2012.14913.pdf")
    shutil.copy(corpus_pdf("gpt1_language_understanding_paper.pdf"), folder / "gpt1.pdf")
    shutil.copy(FIXTURES / "notes.md", folder / "notes.md")
    (folder / "locked.pdf").write_bytes(make_encrypted_pdf(corpus_pdf("1706.03762.pdf")))
    (folder / "broken.pdf").write_bytes(make_corrupt_pdf(corpus_pdf("1706.03762.pdf")))
    (folder / "scan.pdf").write_bytes(make_scanned_pdf())
    (folder / "page.pdf").write_text("<!doctype html><html><body>Not a PDF</body></html>")
    return folder


def _consistent(settings) -> dict[str, int]:
    """Catalog and store agree: every ok document has exactly its chunks, nothing else is stored."""
    catalog = Catalog(settings.catalog_path)
    expected = {r.doc_id: r.chunks for r in catalog.all() if r.status == "ok"}
    catalog.close()
    stored = ChunkStore(settings).ids_by_document()
    assert stored == expected
    return expected


def test_mixed_library_end_to_end(cove_home, tmp_path, http_server):
    settings = _settings(http_server)
    folder = _library_dir(tmp_path)
    local, bad_inputs = expand_local(folder)
    bad_inputs += expand_local(tmp_path / "does-not-exist")[1]
    sources = local + [
        from_arxiv("1706.03762"),
        from_url(f"{http_server.base}/article.html"),
        from_url(f"{http_server.base}/fake.pdf"),
        from_url(f"{http_server.base}/gone.pdf"),
    ]
    events = []
    report = ingest(sources, settings, progress=events.append, bad_inputs=bad_inputs)

    ok = {r.source: r for r in report.ingested}
    failed = {r.source: r.reason for r in report.failed}
    assert set(ok) == {
        "2012.14913.pdf",
        "gpt1.pdf",
        "notes.md",
        "https://arxiv.org/abs/1706.03762",
        f"{http_server.base}/article.html",
    }
    assert "encrypted PDF" in failed["locked.pdf"]
    assert "corrupt" in failed["broken.pdf"] or "no extractable text" in failed["broken.pdf"]
    assert "scanned PDF" in failed["scan.pdf"]
    assert "expected a PDF but got an HTML page" in failed["page.pdf"]
    assert "expected a PDF but got an HTML page" in failed[f"{http_server.base}/fake.pdf"]
    assert "HTTP 404" in failed[f"{http_server.base}/gone.pdf"]
    assert failed[str(tmp_path / "does-not-exist")] == "no such file or folder"
    assert {e.stage for e in events} >= {"fetch", "parse", "embed", "done"}

    # arXiv metadata came from the (local stand-in of the) arXiv API.
    catalog = Catalog(settings.catalog_path)
    attention = catalog.get("arxiv-1706.03762")
    assert attention.title == "Attention Is All You Need" and attention.year == "2017"
    assert attention.version == "v7" and attention.authors[0] == "Ashish Vaswani" and attention.pages == 15
    assert catalog.get("arxiv-2012.14913").title == "Transformer Feed-Forward Layers Are Key-Value Memories"
    assert all(r.error for r in catalog.all() if r.status == "failed")
    catalog.close()
    counts = _consistent(settings)
    assert counts["arxiv-1706.03762"] > 20

    # Chunks carry citation metadata and are found by meaning.
    from cove.embed import Embedder

    store = ChunkStore(settings)
    hits = store.query(Embedder(settings.embed).embed_query("How many parallel attention heads are used?"), k=5)
    top = hits[0].metadata
    assert top["doc_id"] == "arxiv-1706.03762" and top["title"] == "Attention Is All You Need"
    assert 1 <= top["page_start"] <= 15 and top["url"].startswith("https://arxiv.org/pdf/1706.03762")
    html_chunks = store.collection.get(where={"kind": "html"}, include=["metadatas"])["metadatas"]
    assert {m["anchor"] for m in html_chunks} & {"residual-stream", "induction-heads", "composition"}

    # Re-ingest: nothing changed, nothing embedded, nothing duplicated; failures are retried and fail again.
    again = ingest(sources, settings, bad_inputs=bad_inputs)
    assert {r.source for r in again.skipped} == set(ok)
    assert len(again.failed) == len(report.failed) and not again.ingested
    assert again.timings["embed"] == 0
    assert _consistent(settings) == counts

    # A changed document replaces its chunks; the others are skipped.
    (folder / "notes.md").write_text((FIXTURES / "notes.md").read_text().replace("Temperature", "Top-k sampling"))
    changed = ingest(expand_local(folder / "notes.md")[0], settings)
    assert [r.source for r in changed.ingested] == ["notes.md"]
    texts = " ".join(store.collection.get(where={"source": "notes.md"})["documents"])
    assert "Top-k sampling" in texts and "Temperature" not in texts
    _consistent(settings)


def test_changing_index_settings_rebuilds_instead_of_mixing(cove_home, tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copy(FIXTURES / "notes.md", folder / "notes.md")
    shutil.copy(FIXTURES / "circuits_article.html", folder / "article.html")
    first = _settings()
    ingest(expand_local(folder / "notes.md")[0], first)
    ingest(expand_local(folder / "article.html")[0], first)
    old = _consistent(first)

    smaller = _settings(chunk={"size": 300, "overlap": 30, "min_chars": 50})
    report = ingest(expand_local(folder / "notes.md")[0], smaller)  # names one doc, rebuilds both
    assert report.rebuilt and len(report.ingested) == 2
    new = _consistent(smaller)
    assert set(new) == set(old) and sum(new.values()) > sum(old.values())
    store = ChunkStore(smaller)
    names = sorted(c.name for c in store.client.list_collections())
    assert names == sorted([smaller.collection_name, META_COLLECTION]), "the old index is dropped, not mixed"
    assert not store.meta.get(where={"collection": first.collection_name})["ids"], "its records too"
    assert {r["doc_id"] for r in store.document_records()} == set(new)

    rebuilt = ingest([], smaller, rebuild=True)
    assert rebuilt.rebuilt and len(rebuilt.ingested) == 2
    assert _consistent(smaller) == new


def _cove(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_reports_failures_with_nonzero_exit_and_lists_library(cove_home, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FIXTURES / "notes.md", folder / "notes.md")
    (folder / "scan.pdf").write_bytes(make_scanned_pdf())
    env = {**os.environ, "COVE_HOME": str(cove_home)}
    run = _cove("ingest", "--from", str(folder), "--json", env=env)
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert (report["ingested"], report["failed"]) == (1, 1)
    listing = json.loads(_cove("library", "--json", env=env).stdout)
    by_source = {d["source"]: d for d in listing}
    assert by_source["notes.md"]["status"] == "ok" and by_source["notes.md"]["chunks"] >= 1
    assert by_source["scan.pdf"]["status"] == "failed" and "scanned" in by_source["scan.pdf"]["error"]
    for key in ("title", "source", "kind", "pages", "chunks", "status", "error"):
        assert key in by_source["notes.md"]
    (folder / "scan.pdf").unlink()
    clean = _cove("ingest", "--from", str(folder), env=env)
    assert clean.returncode == 0 and "1 skipped" in clean.stdout.replace("\n", " ")
    table = _cove("library", env={**env, "COLUMNS": "250"}).stdout
    assert "Reading notes on decoding" in table and "failed" in table


def test_killed_run_is_completed_by_rerun_without_duplicates(cove_home, tmp_path):
    folder = tmp_path / "papers"
    folder.mkdir()
    for name in ("1706.03762.pdf", "gpt1_language_understanding_paper.pdf", "2012.14913.pdf", "1904.09751.pdf"):
        shutil.copy(corpus_pdf(name), folder / name)
    env = {**os.environ, "COVE_HOME": str(cove_home), "COVE_PARSE__WORKERS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "ingest", "--from", str(folder)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    catalog_path = cove_home / "library.sqlite"
    deadline = time.time() + 300
    killed_with = None
    while time.time() < deadline and proc.poll() is None:
        if catalog_path.exists():
            try:
                with sqlite3.connect(catalog_path, timeout=1) as db:
                    statuses = [s for (s,) in db.execute("SELECT status FROM documents")]
            except sqlite3.Error:
                statuses = []
            if "ok" in statuses:  # one paper stored, others pending or not started: kill now
                proc.send_signal(signal.SIGKILL)
                killed_with = statuses
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_with is not None, "the run finished before it could be killed"
    assert killed_with.count("ok") < 4

    settings = load_settings()
    rerun = _cove("ingest", "--from", str(folder), "--json", env=env)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["ingested"] + report["skipped"] == 4 and report["skipped"] >= 1
    counts = _consistent(settings)
    assert len(counts) == 4
    ids = ChunkStore(settings).collection.get(include=[])["ids"]
    assert len(ids) == len(set(ids)) == sum(counts.values())


def test_parse_workers_do_not_rerun_the_parents_main_script(cove_home, tmp_path, monkeypatch):
    """Under `streamlit run` the parent's __main__ is the app script; spawned workers re-import
    __main__, so a worker must not execute it (it used to open the app's SQLite files and crash)."""
    import types

    script = tmp_path / "app_script.py"
    script.write_text("raise SystemExit('the app script ran inside a parse worker')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)

    folder = tmp_path / "p"
    folder.mkdir()
    shutil.copy(FIXTURES / "notes.md", folder / "notes.md")
    shutil.copy(FIXTURES / "circuits_article.html", folder / "article.html")
    report = ingest(expand_local(folder)[0], _settings(parse={"workers": 2}))
    assert not report.failed, [r.reason for r in report.failed]
    assert len(report.ingested) == 2
    assert sys.modules["__main__"] is fake_main, "the parent's __main__ is restored"
