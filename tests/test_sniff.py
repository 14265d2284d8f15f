"""Local files are read by their content, not their name (issue 23): documents as users have them
(PaperQA's test files: a Wikipedia page saved as `bates.txt`, a Markdown article) and copies of them
under misleading names, ingested for real and asked about with the bundled model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ingest.parse import looks_like_markdown, sniff_kind
from ingest.pipeline import decide_kind

OUTSIDE = Path(__file__).parent / "fixtures" / "outside"


def test_sniffing_reads_what_a_file_starts_as():
    bates = (OUTSIDE / "bates.txt").read_bytes()[:4096]
    assert sniff_kind(bates) == "html"
    assert sniff_kind(b"<!-- saved page -->\n<html><body>x</body></html>") == "html"
    assert sniff_kind(b'<?xml version="1.0"?>\n<html xmlns="http://www.w3.org/1999/xhtml">') == "html"
    # Notes that talk about markup are still notes.
    assert sniff_kind(b"# How to write pages\nStart every page with <html> and a <body>.") == "text"
    assert looks_like_markdown((OUTSIDE / "gravity_hill.md").read_bytes())
    assert not looks_like_markdown(b"Plain notes.\n- one item\nNothing else here.")
    assert decide_kind("html", "text", bates, local=True) == "html"  # a .txt holding a page is a page
    assert decide_kind("text", "html", b"just words", local=True) == "text"
    assert decide_kind("text", "text", (OUTSIDE / "gravity_hill.md").read_bytes(), local=True) == "markdown"


@pytest.fixture(scope="module")
def outside_library(tmp_path_factory):
    from cove.settings import load_settings
    from ingest.pipeline import ingest
    from ingest.sources import expand_local

    home = tmp_path_factory.mktemp("outside-home")
    folder = tmp_path_factory.mktemp("outside-files")
    shutil.copy(OUTSIDE / "bates.txt", folder / "bates.txt")
    shutil.copy(OUTSIDE / "gravity_hill.md", folder / "hill-notes.txt")  # Markdown under a .txt name
    shutil.copy(OUTSIDE / "bates.txt", folder / "bates-copy.pdf")  # an HTML page named like a PDF
    notes = "Gravity hills are places where a slight downhill slope looks like an uphill one. " * 4
    (folder / "readme").write_text(f"# Field notes\n\nSee [the hill](https://example.org) and **Bates**.\n\n{notes}\n")
    sources, bad = expand_local(folder)
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    extra, bad_extra = expand_local(folder / "readme")  # named explicitly: no extension needed
    extra += expand_local(folder / "photo.png")[0]  # binary: taken, then refused alone at ingest
    assert not bad and not bad_extra
    settings = load_settings({"home": str(home)})
    report = ingest(sources + extra, settings)
    return settings, {Path(r.source).name: r for r in report.results}


def test_local_files_are_parsed_as_what_they_are(outside_library):
    from cove.catalog import Catalog

    settings, results = outside_library
    assert results["bates.txt"].status == "ingested", results["bates.txt"].reason
    assert results["bates.txt"].title == "Frederick Bates (politician)"  # from <h1>/<title>, not "<!DOCTYPE html>"
    assert results["hill-notes.txt"].title == "Gravity hill"  # its Markdown heading
    assert results["readme"].status == "ingested", results["readme"].reason
    assert results["readme"].title == "Field notes"
    assert results["photo.png"].status == "failed" and "unsupported binary content" in results["photo.png"].reason
    failed = results["bates-copy.pdf"]
    assert failed.status == "failed" and "expected a PDF but got an HTML page" in failed.reason
    catalog = Catalog(settings.catalog_path)
    kinds = {Path(r.source).name: r.kind for r in catalog.all()}
    catalog.close()
    assert kinds["bates.txt"] == "html" and kinds["hill-notes.txt"] == "markdown"


def test_the_bates_question_is_answered_from_the_page(outside_library):
    from cove.engine import AnswerEngine
    from cove.retrieve import Retriever

    settings, _ = outside_library
    chunks = Retriever(settings).search("Who is Frederick Bates?").hits
    assert chunks and all("<" not in h.text[:200] for h in chunks)  # text, not markup
    answer = AnswerEngine(settings).ask("Who is Frederick Bates?", pipeline="baseline")
    assert not answer.refused, answer.answer
    assert any(Path(c.source).name == "bates.txt" for c in answer.citations), answer.citations
    assert "Missouri" in answer.answer or "governor" in answer.answer.lower(), answer.answer
