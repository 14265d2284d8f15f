"""The compiled content-stream scanner (`ingest.content_scan`) reads what pypdf's tokenizer reads.

The layout parse must not change when its tokenizer does: the chunks (text, block, label, spans,
table headers, references), the word boxes and the parse report of every shared PDF are compared
with those of pypdf's own `ContentStream` tokenizer, and tricky syntax is compared token by token.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter
from pypdf.generic import ContentStream, DecodedStreamObject, DictionaryObject, NameObject

from ingest import content_scan, runs
from ingest.chunk import chunk_document
from ingest.layout import analyze_pdf

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def pypdf_operations(data: bytes) -> list:
    stream = ContentStream(None, None, "bytes")
    stream.set_data(data)
    return stream.operations


def plain(value):
    """pypdf's objects and the scanner's as comparable Python values (a dictionary as its items)."""
    if isinstance(value, dict):
        return [plain(x) for item in value.items() for x in item]
    if isinstance(value, list):
        return [plain(x) for x in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, bytes):
        return bytes(value)
    return str(value)


def same_operations(data: bytes) -> tuple[list, list]:
    def both(ops):
        return [([] if op == content_scan.INLINE_IMAGE else plain(operands), op) for operands, op in ops]

    return both(pypdf_operations(data)), both(content_scan.operations(data))


TRICKY = [
    b"BT /F1 12 Tf 72 712 Td (Hello) Tj ET",
    b"[(A) -250.5 (B)120(C)] TJ [<0041 00 42> 3 <414>] TJ",  # hex with spaces and an odd last digit
    rb"(nested (parens) and \(escaped\) ones) Tj",
    rb"(octal \101\102\7 overflow \777 and \q unknown) Tj",
    b"(line \\\ncontinued and \\\r\ntoo) Tj",
    b"(raw\r\nbreak kept) Tj",
    b"/Name#20With#23Escapes 1 Tf /Span <</ActualText (x) /MCID 3 /K [1 2 [3]] /D <</E 1>>>> BDC EMC",
    b"% a comment ( with a paren\n1 0 0 1 -.5 +3 cm q Q % trailing",
    b"10 20 m 30 40 l S 1 0 0 rg 0.5 g 'quote (x) \" 1 2 (y) T*",
    b"true false null Do",
    b"BI /W 5 /H 1 /BPC 8 /CS /G ID \x00EI\xff\x01 EI Q (after) Tj",  # "EI" inside the image data
    b"q BI /W 8 /H 1 /BPC 8 /CS /G ID \x00EIx\xffEI1 EI Q (after) Tj",
    b"1,5 2 Td",  # pypdf reads "1,5" as one (malformed) number: 0
    b"1\x002 Td",  # NUL separates tokens for pypdf (bytes.split would not split there)
]


@pytest.mark.parametrize("data", TRICKY)
def test_tokens_are_pypdfs(data):
    ours_vs_pypdf = same_operations(data)
    assert ours_vs_pypdf[1] == ours_vs_pypdf[0]


def test_stray_bytes_cost_nothing_else():
    """pypdf gives up on the whole stream at a stray "]" (its page loses all text); the scanner skips it."""
    assert list(content_scan.operations(b"]> } (kept) Tj")) == [([b"kept"], b"Tj")]


def test_only_wanted_operators_are_reported():
    data = b"10 20 m 30 40 l S BT /F1 9 Tf (x) Tj ET q 1 0 0 1 5 5 cm Q"
    wanted = frozenset({b"Tf", b"Tj", b"cm", b"q", b"Q"})
    got = list(content_scan.operations(data, wanted))
    assert got == [(["/F1", 9], b"Tf"), ([b"x"], b"Tj"), ([], b"q"), ([1, 0, 0, 1, 5, 5], b"cm"), ([], b"Q")]


def test_hostile_streams_are_bounded(monkeypatch):
    """Too many tokens or nesting: a clear error; input that defeats the fast pattern (long runs of
    digits before an unterminated array) is still read in linear time (no backtracking blow-up)."""
    monkeypatch.setattr(content_scan, "MAX_TOKENS", 10_000)
    with pytest.raises(content_scan.ContentLimitError):
        list(content_scan.operations(b"1 2 l " * 20_000))
    with pytest.raises(content_scan.ContentLimitError):
        list(content_scan.operations(b"[" * 100 + b"1" + b"]" * 100 + b" TJ"))
    nasty = (b"1" * 50 + b" ") * 2000 + b"[ (" + b"x" * 1000
    started = time.monotonic()
    list(content_scan.operations(nasty))
    assert time.monotonic() - started < 10, "a 100 KB stream took seconds: the pattern backtracks"


def test_a_form_drawn_on_every_page_is_read_once(tmp_path, monkeypatch):
    """A logo form drawn on each of 30 pages: its text on every page, its stream tokenised once."""
    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})  # fmt: skip
    font_ref = writer._add_object(font)
    form = DecodedStreamObject()
    form.set_data(b"BT /F1 9 Tf 0 0 Td (ACME Labs) Tj ET")
    form.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Form"),
                 NameObject("/BBox"): _array([0, 0, 80, 12]),
                 NameObject("/Resources"): DictionaryObject({NameObject("/Font"): DictionaryObject(
                     {NameObject("/F1"): font_ref})})})  # fmt: skip
    form_ref = writer._add_object(form)
    for n in range(30):
        page = writer.add_blank_page(612, 792)
        content = DecodedStreamObject()
        body = f"BT /F1 11 Tf 72 700 Td (Page {n + 1} body text) Tj ET q 1 0 0 1 500 40 cm /Fm1 Do Q"
        content.set_data(body.encode())
        page[NameObject("/Contents")] = writer._add_object(content)
        page[NameObject("/Resources")] = DictionaryObject({
            NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref}),
            NameObject("/XObject"): DictionaryObject({NameObject("/Fm1"): form_ref})})  # fmt: skip
    path = tmp_path / "logo.pdf"
    with path.open("wb") as out:
        writer.write(out)
    calls = []
    real = content_scan.operations

    def counting(data, wanted=None):
        calls.append(data)
        return real(data, wanted)

    monkeypatch.setattr(content_scan, "operations", counting)
    reader, cache = PdfReader(path), runs.DocumentCache()
    texts = [" ".join(run.text for run in runs.page_runs(page, reader, cache).runs) for page in reader.pages]
    assert sum(b"ACME" in data for data in calls) == 1  # the form: once for the document
    assert sum(b"body text" in data for data in calls) == 30
    assert [text.count("ACME Labs") for text in texts] == [1] * 30  # ...and its text on every page


def _array(values):
    from pypdf.generic import ArrayObject, FloatObject

    return ArrayObject(FloatObject(v) for v in values)


def snapshot(doc) -> dict:
    chunks = [asdict(c) for c in chunk_document("doc", doc, 1200, 150, 200)]
    return {"title": doc.title, "authors": doc.authors, "report": doc.report, "positions": doc.positions,
            "chunks": chunks}  # fmt: skip


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent: the comparison needs the shared PDFs")
def test_chunks_of_the_shared_pdfs_are_unchanged():
    """Every shared PDF parsed with pypdf's tokenizer and with the scanner: the same chunks (text,
    block, label, spans, header, references, sections), word boxes, title, authors and report."""
    pdfs = sorted(CORPUS.glob("*.pdf"))
    assert len(pdfs) >= 11
    for pdf in pdfs:
        reference = snapshot(analyze_pdf(PdfReader(pdf), tokenize="pypdf"))
        scanned = snapshot(analyze_pdf(PdfReader(pdf), tokenize="scan"))
        assert reference["chunks"], pdf.name
        for key in reference:
            assert scanned[key] == reference[key], f"{pdf.name}: {key} differs"
