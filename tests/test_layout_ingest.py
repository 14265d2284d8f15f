"""What layout-aware parsing leaves in a library: the chunk metadata contract the answer side reads
(block, label, spans, section), the parse report in the catalog and `cove library --json`, word
positions for highlighting a quote on its page, and catalogs written before the report existed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ROOT
from test_layout import make_pdf

from cove.catalog import Catalog, DocumentRecord
from cove.docs import BLOCK_KINDS, SPAN_KINDS, unquotable_spans
from cove.store import ChunkStore
from ingest.layout import page_box, positions_path, quote_boxes
from ingest.pipeline import ingest
from ingest.sources import from_path

pytestmark = pytest.mark.slow

TRANSFORMER = "arxiv-1706.03762"


def _chunks(settings, doc_id: str):
    ids, texts, metas = ChunkStore(settings).all_chunks()
    return [(text, meta) for text, meta in zip(texts, metas, strict=True) if meta["doc_id"] == doc_id]


def test_chunks_carry_block_label_spans_and_section(small_library):
    chunks = _chunks(small_library, TRANSFORMER)
    kinds = Counter(meta["block"] for _, meta in chunks)
    assert set(kinds) == set(BLOCK_KINDS), kinds
    for text, meta in chunks:
        spans = json.loads(meta["spans"])
        assert all(0 <= s < e <= len(text) and k in SPAN_KINDS for s, e, k in spans)
        assert isinstance(meta["section"], str) and isinstance(meta["label"], str)
        if meta["block"] in ("figure", "reference", "front"):
            assert unquotable_spans(meta, text) == [(0, len(text), meta["block"])]
            assert unquotable_spans(meta) == [(0, len(text), meta["block"])]  # the stored span says how long
    tables = [(t, m) for t, m in chunks if m["block"] == "table" and m["label"] == "Table 3"]
    assert tables and json.loads(tables[0][1]["header"])[1:3] == ["N", "dmodel"]
    assert any(t.startswith("Table 3:") for t, m in chunks if m["block"] == "caption")
    refs = [json.loads(m["references"]) for _, m in chunks if m["block"] == "reference"]
    assert any(entry.get("arxiv") == "1607.06450" for entries in refs for entry in entries)
    equations = [(t, m) for t, m in chunks if any(k == "equation" for _, _, k in unquotable_spans(m))]
    assert any("softmax" in t for t, _ in equations)
    prose = [t for t, m in chunks if m["block"] == "prose"]
    assert not any(t.startswith(("3.2.1 Scaled", "2.3 Optimizer")) for t in prose)
    assert any(m["section"] == "3.2.1 Scaled Dot-Product Attention" for _, m in chunks)


def test_the_catalog_and_library_listing_show_the_parse_report(small_library):
    catalog = Catalog(small_library.catalog_path)
    record = catalog.get(TRANSFORMER)
    catalog.close()
    assert record.title == "Attention Is All You Need"
    assert record.authors[:2] == ["Ashish Vaswani", "Noam Shazeer"]
    assert record.report["tables"] == 4 and record.report["pages"] == 15 and record.report["references"] >= 35
    env = {**os.environ, "COVE_HOME": str(small_library.home_dir), "PYTHONPATH": str(ROOT)}
    listing = subprocess.run(
        [sys.executable, "-m", "app.cli", "library", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = {d["doc_id"]: d for d in json.loads(listing.stdout)}
    report = shown[TRANSFORMER]["report"]
    for key in ("pages", "words", "tables", "figures", "figure_text_share", "equations", "references", "warnings"):
        assert key in report, key
    table = subprocess.run(
        [sys.executable, "-m", "app.cli", "library"],
        env={**env, "COLUMNS": "300"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "4 tables" in table.stdout


def test_quote_boxes_find_a_quote_on_its_pdf_page(small_library):
    assert positions_path(small_library, TRANSFORMER).is_file()
    x0, y0, x1, y1 = page_box(small_library, TRANSFORMER, 4)
    assert (x1 - x0, y1 - y0) == (612, 792)
    quote = 'We call our particular attention "Scaled Dot-Product Attention" (Figure 2).'
    boxes = quote_boxes(small_library, TRANSFORMER, 4, quote)
    assert len(boxes) == len(quote.split())
    for bx0, by0, bx1, by1 in boxes:  # one line near the middle of the page, inside the text column
        assert 100 < bx0 < bx1 < 510 and 405 < by0 < by1 < 430
    assert quote_boxes(small_library, TRANSFORMER, 5, quote) == []  # not on that page
    assert quote_boxes(small_library, TRANSFORMER, 4, "words that appear nowhere at all") == []


def test_a_scan_is_recorded_with_its_report(cove_home, tmp_path):
    from cove.settings import load_settings

    scan = tmp_path / "scan.pdf"
    scan.write_bytes(make_pdf([], image_pages=2))
    settings = load_settings()
    report = ingest([from_path(scan)], settings)
    assert report.failed and "scanned PDF" in report.failed[0].reason
    catalog = Catalog(settings.catalog_path)
    record = catalog.all()[0]
    catalog.close()
    assert record.status == "failed"
    assert any(w.startswith("no text layer: scanned?") for w in record.report["warnings"])
    assert "no text layer" in record.warnings


OLD_SCHEMA = """
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, location TEXT NOT NULL, kind TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '', authors TEXT NOT NULL DEFAULT '[]', year TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '', url TEXT NOT NULL DEFAULT '', topic TEXT NOT NULL DEFAULT '',
    arxiv_id TEXT NOT NULL DEFAULT '', content_hash TEXT NOT NULL DEFAULT '', index_id TEXT NOT NULL DEFAULT '',
    pages INTEGER NOT NULL DEFAULT 0, chunks INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '', warnings TEXT NOT NULL DEFAULT '', ingested_at REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO documents (doc_id, source, location, title, status, pages)
VALUES ('old', 'old.pdf', '/x/old.pdf', 'Old paper', 'ok', 3);
"""


def test_a_catalog_from_before_the_report_opens_and_keeps_its_rows(tmp_path):
    path = tmp_path / "library.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    catalog = Catalog(path)
    old = catalog.get("old")
    assert old.title == "Old paper" and old.pages == 3 and old.report == {}
    catalog.upsert(DocumentRecord("new", "new.pdf", "/x/new.pdf", "ok", report={"words": 10, "warnings": []}))
    assert catalog.get("new").report == {"words": 10, "warnings": []}
    catalog.close()
    assert Catalog(path).get("new").report["words"] == 10  # opening it again changes nothing
