"""Data safety with real processes and real stores: --rebuild never leaves the catalog claiming chunks
the store lacks, one writer at a time per home (a second gets a message naming the first), a reader
in a running process answers from what another process ingested, symbolic links and special files
in a folder are refused one by one, uploads never replace each other or a real arXiv paper, and a
full disk leaves no half-written files behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import corpus_pdf, make_text_pdf

from cove.catalog import Catalog
from cove.lock import LibraryBusy, writer_lock
from cove.settings import load_settings
from cove.store import ChunkStore
from ingest.pipeline import ingest
from ingest.sources import collect_sources, expand_local, from_path, from_upload
from service.chat import ChatService

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _cove(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _note(folder: Path, name: str, title: str, sentence: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"# {title}\n\n" + (sentence + " ") * 12)
    return path


def _catalog_and_store(settings) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
    catalog = Catalog(settings.catalog_path)
    records = {r.doc_id: (r.status, r.chunks) for r in catalog.all()}
    catalog.close()
    return records, ChunkStore(settings).ids_by_document()


def _agree(settings) -> dict[str, tuple[str, int]]:
    """Every document the catalog calls ok has exactly its chunks in the store, and nothing else is stored."""
    records, stored = _catalog_and_store(settings)
    assert stored == {d: n for d, (status, n) in records.items() if status == "ok"}, (records, stored)
    return records


# --- finding 6: --rebuild and a source that went missing --------------------------------------------


def test_rebuild_with_a_missing_source_keeps_catalog_and_store_in_step(cove_home, tmp_path):
    papers = tmp_path / "papers"
    alpha = _note(papers, "alpha.md", "Alpha notes", "Alpha notes explain attention heads in detail.")
    beta = _note(papers, "beta.md", "Beta notes", "Beta notes explain positional encodings in detail.")
    settings = load_settings()
    first = _cove("ingest", "--from", str(papers), "--json")
    assert first.returncode == 0, first.stderr
    beta_id = from_path(beta).doc_id

    away = tmp_path / "beta.md.away"
    beta.rename(away)
    rebuilt = _cove("ingest", "--rebuild", "--json")  # no source: the known documents only (no network)
    assert rebuilt.returncode == 1, rebuilt.stderr
    report = json.loads(rebuilt.stdout)
    assert {r["source"] for r in report["results"]} == {"alpha.md", "beta.md"}
    records = _agree(settings)
    assert records[beta_id] == ("failed", 0) and records[from_path(alpha).doc_id][0] == "ok"
    catalog = Catalog(settings.catalog_path)
    assert "no longer in the rebuilt index" in catalog.get(beta_id).error
    catalog.close()

    away.rename(beta)
    again = _cove("ingest", "--from", str(papers), "--json")
    assert again.returncode == 0, again.stderr
    statuses = {r["source"]: r["status"] for r in json.loads(again.stdout)["results"]}
    assert statuses == {"alpha.md": "skipped", "beta.md": "ingested"}
    assert _agree(settings)[beta_id][0] == "ok"


def test_a_document_whose_chunks_the_store_lost_is_reindexed_not_skipped(cove_home, tmp_path):
    papers = tmp_path / "papers"
    kept = _note(papers, "kept.md", "Kept notes", "Kept notes describe layer normalisation.")
    lost = _note(papers, "lost.md", "Lost notes", "Lost notes describe label smoothing.")
    settings = load_settings()
    assert not ingest(expand_local(papers)[0], settings).failed
    ChunkStore(settings).collection.delete(where={"doc_id": from_path(lost).doc_id})  # e.g. an old backup restored

    report = ingest(expand_local(papers)[0], settings)
    statuses = {r.source: r.status for r in report.results}
    assert statuses == {kept.name: "skipped", lost.name: "ingested"}
    _agree(settings)


KILLED_REBUILD = textwrap.dedent(
    """
    import os, signal, sys
    from cove.lock import writer_lock
    from cove.settings import load_settings
    from ingest.pipeline import IngestPipeline
    settings = load_settings({"home": sys.argv[1]})
    pipeline = IngestPipeline(settings)
    with writer_lock(settings.home_dir, "cove ingest --rebuild"):
        pipeline._check_index_identity(rebuild=True)  # --rebuild's first step: the index is dropped
        os.kill(os.getpid(), signal.SIGKILL)  # killed before any document is indexed again
    """
)


def test_a_killed_rebuild_is_reported_by_ask_and_library(cove_home, tmp_path):
    """After a `--rebuild` killed once the index was dropped, the catalog still lists its documents
    `ok` and the store holds none: `cove ask` says so (not "The library does not cover this"),
    `cove library` shows them not in the store, and the command both name puts it right."""
    papers = tmp_path / "papers"
    _note(papers, "alpha.md", "Alpha notes", "Alpha notes explain that the base model uses eight attention heads.")
    _note(papers, "beta.md", "Beta notes", "Beta notes explain sinusoidal positional encodings in detail.")
    settings = load_settings()
    assert not ingest(expand_local(papers)[0], settings).failed
    killed = subprocess.run([sys.executable, "-c", KILLED_REBUILD, str(cove_home)], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    records, stored = _catalog_and_store(settings)
    assert stored == {} and [status for status, _ in records.values()] == ["ok", "ok"], (records, stored)

    expected = (
        "The catalog lists 2 documents but the store holds none (an interrupted `cove ingest --rebuild`?): "
        "run `cove ingest --rebuild` to index them again."
    )
    asked = _cove("ask", "--pipeline", "baseline", "How many attention heads does the base model use?")
    assert asked.returncode == 2, asked.stderr[-2000:]
    assert expected in " ".join(asked.stderr.split()) and "Traceback" not in asked.stderr, asked.stderr[-2000:]
    assert "does not cover" not in asked.stdout, asked.stdout
    listed = _cove("library", env={"COLUMNS": "250"})  # wide enough for one line per document
    assert listed.returncode == 0 and expected in " ".join(listed.stderr.split()), listed.stderr[-2000:]
    assert listed.stdout.count("not in store") == 2, listed.stdout
    documents = json.loads(_cove("library", "--json").stdout)
    assert [d["status"] for d in documents] == ["not in store", "not in store"], documents
    assert all("cove ingest --rebuild" in d["error"] for d in documents), documents

    rebuilt = _cove("ingest", "--rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert [status for status, _ in _agree(settings).values()] == ["ok", "ok"]
    assert [d["status"] for d in json.loads(_cove("library", "--json").stdout)] == ["ok", "ok"]


# --- finding 7: one writer per home; readers see other processes' writes -----------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cove.lock import writer_lock
    with writer_lock(Path(sys.argv[1]), "cove ingest --from a-slow-folder"):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def _hold_the_lock(home: Path) -> subprocess.Popen:
    """Another process that holds the home's writer lock until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_told_who_holds_the_library(cove_home, tmp_path):
    papers = tmp_path / "papers"
    _note(papers, "a.md", "A notes", "A notes describe multi-head attention.")
    holder = _hold_the_lock(cove_home)
    try:
        second = _cove("ingest", "--from", str(papers))
        assert second.returncode == 1
        message = " ".join(second.stderr.split())
        assert f"process {holder.pid}" in message and "cove ingest --from a-slow-folder" in message, message
        assert "since" in message and "nothing was changed" in message and "Traceback" not in second.stderr
        with pytest.raises(LibraryBusy, match=f"process {holder.pid}"):  # the app's path (in-process)
            ingest(expand_local(papers)[0], load_settings())
        assert not load_settings().catalog_path.exists() or not Catalog(load_settings().catalog_path).all()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    third = _cove("ingest", "--from", str(papers))  # the lock went with its holder
    assert third.returncode == 0, third.stderr


def test_a_killed_writer_leaves_no_stale_lock(cove_home):
    holder = _hold_the_lock(cove_home)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with writer_lock(cove_home):  # taken at once: the kernel released the dead holder's lock
        pass


def test_a_running_app_answers_from_what_another_process_ingested(cove_home, tmp_path):
    """The app's ChatService in this process; `cove ingest` in another. Dense results used to stay
    stale forever (the embedded Chroma client keeps its vector index in memory)."""
    _note(tmp_path / "first", "alpha.md", "Alpha notes", "Alpha notes explain multi-head attention layers.")
    assert _cove("ingest", "--from", str(tmp_path / "first")).returncode == 0
    service = ChatService(load_settings())
    question = "Which telescopes observe distant quasars and blazars?"
    before = service.retriever().search(question, k=3, mode="dense")
    assert {h.source for h in before.hits} == {"alpha.md"}

    _note(tmp_path / "second", "gamma.md", "Gamma notes", "Gamma ray telescopes observe distant quasars and blazars.")
    added = _cove("ingest", "--from", str(tmp_path / "second"))
    assert added.returncode == 0, added.stderr
    for mode in ("dense", "hybrid"):
        after = service.retriever().search(question, k=3, mode=mode)
        assert after.hits[0].source == "gamma.md", (mode, [h.source for h in after.hits])


# --- finding 8: symbolic links and special files in a folder ------------------------------------------


def test_links_out_of_a_folder_and_special_files_are_refused_one_by_one(cove_home, tmp_path):
    folder, outside = tmp_path / "papers", tmp_path / "outside"
    _note(folder, "good.md", "Good notes", "Good notes describe scaled dot-product attention.")
    _note(folder / "sub", "inner.md", "Inner notes", "Inner notes describe the feed-forward layers.")
    secret = _note(outside, "secret.md", "Secret notes", "Secret notes must never enter the library.")
    (folder / "link-out.md").symlink_to(secret)
    (folder / "passwd.pdf").symlink_to("/etc/passwd")
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
    (folder / "link-in.md").symlink_to(folder / "sub" / "inner.md")  # inside: the same document once
    (folder / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    (folder / ".hidden").mkdir()  # skipped by the walk, but a link may lead into it
    os.mkfifo(folder / ".hidden" / "pipe")
    (folder / "pipe.pdf").symlink_to(folder / ".hidden" / "pipe")
    os.mkfifo(folder / "fifo.txt")

    sources, bad = expand_local(folder)
    assert sorted(s.source for s in sources) == ["good.md", "inner.md", "inner.md"]  # deduplicated at ingest
    reasons = {Path(path).name: reason for path, reason in bad}
    assert set(reasons) == {"link-out.md", "passwd.pdf", "linked-folder", "dangling.md", "pipe.pdf", "fifo.txt"}
    for name in ("link-out.md", "passwd.pdf", "linked-folder"):
        assert "outside the folder: refused" in reasons[name], reasons[name]
    assert "not a regular file (a FIFO)" in reasons["pipe.pdf"] and "a FIFO" in reasons["fifo.txt"]
    assert "broken symbolic link" in reasons["dangling.md"]

    run = _cove("ingest", "--from", str(folder), "--json")  # the CLI: one report, the folder is not aborted
    assert run.returncode == 1, run.stderr
    results = json.loads(run.stdout)["results"]
    assert sorted(r["source"] for r in results if r["status"] == "ingested") == ["good.md", "inner.md"]
    assert len([r for r in results if r["status"] == "failed"]) == 6
    records, _ = _catalog_and_store(load_settings())
    assert len(records) == 2  # secret.md was never read

    sources, bad = collect_sources(paths=[folder])
    report = ingest(sources, load_settings(), bad_inputs=bad)  # the app's path (app/streamlit_app.py run_ingest)
    assert len(report.failed) == 6 and len(report.skipped) == 2


def test_a_fifo_named_as_a_document_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "paper.pdf"
    os.mkfifo(fifo)
    sources, bad = expand_local(fifo)
    assert not sources and "not a regular file (a FIFO)" in bad[0][1]


# --- finding 9: uploads ---------------------------------------------------------------------------------


def test_uploads_with_one_name_never_replace_each_other_or_the_real_paper(cove_home, tmp_path):
    settings = load_settings()
    real = corpus_pdf("1706.03762.pdf").read_bytes()
    up = settings.uploads_dir
    first = from_upload("notes.pdf", make_text_pdf("First upload about attention heads. " * 12), up, 1 << 26)
    second = from_upload("notes.pdf", make_text_pdf("Second upload about label smoothing. " * 12), up, 1 << 26)
    assert first.doc_id != second.doc_id and first.location != second.location
    paper = from_upload("1706.03762.pdf", real, up, 1 << 26)
    impostor = from_upload("1706.03762.pdf", make_text_pdf("Not the Transformer paper at all. " * 12), up, 1 << 26)
    report = ingest([first, second, paper], settings)
    assert not report.failed, report.failed
    report = ingest([impostor], settings)
    assert not report.failed, report.failed

    records = _agree(settings)
    assert records["arxiv-1706.03762"][0] == "ok" and records["arxiv-1706.03762"][1] > 20  # still the real paper
    assert len([d for d in records if d.startswith("file-notes-")]) == 2
    catalog = Catalog(settings.catalog_path)
    fake = next(r for r in catalog.all() if r.source == "1706.03762.pdf" and r.doc_id.startswith("file-"))
    catalog.close()
    assert not fake.arxiv_id and "no arXiv stamp" in fake.warnings
    assert sorted(p.suffix for p in up.iterdir()) == [".pdf"] * 4  # four files on disk, nothing half-written
    # Ingesting the impostor again decides from the catalog: skipped, not re-parsed or re-claimed.
    again = ingest([from_upload("1706.03762.pdf", Path(impostor.location).read_bytes(), up, 1 << 26)], settings)
    assert [r.status for r in again.results] == ["skipped"] and again.results[0].doc_id == fake.doc_id


# --- a full disk: no half-written upload or BM25 folder ---------------------------------------------------

UNDER_FSIZE = textwrap.dedent(
    """
    import resource, signal, sys, json
    from pathlib import Path
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    target, what = Path(sys.argv[1]), sys.argv[2]
    try:
        if what == "upload":
            from ingest.sources import from_upload
            from_upload("big.pdf", b"%PDF-1.4\\n" + b"x" * 300_000, target, 1 << 26)
        else:
            from cove.lexical import LexicalIndex
            texts = [f"chunk {i} about attention heads and positional encodings {i * 7}" for i in range(20000)]
            LexicalIndex(target / "lexical").rebuild([f"d:{i}" for i in range(20000)], texts, "g1")
        print(json.dumps({"ok": True}))
    except Exception as err:
        print(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}"}))
    """
)


@pytest.mark.parametrize("what", ["upload", "bm25"])
def test_a_full_disk_leaves_no_half_written_files(tmp_path, what):
    target = tmp_path / "dir"
    target.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", UNDER_FSIZE, str(target), what],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert not outcome["ok"], outcome
    if what == "upload":
        assert outcome["error"].startswith("SourceError: cannot save the upload"), outcome
    leftovers = [p.name for p in target.rglob("*")]
    assert leftovers == [], leftovers
