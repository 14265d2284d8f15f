"""Parsing real papers from ../shared/corpus, our HTML fixture, and PDFs that must fail clearly."""

import re

import pytest
from conftest import (
    FIXTURES,
    corpus_pdf,
    make_corrupt_pdf,
    make_encrypted_pdf,
    make_scanned_pdf,
    make_text_pdf,
)

from ingest.parse import ParseError, parse_file, sniff_kind


def test_attention_paper_pages_title_sections_and_clean_text():
    doc = parse_file(str(corpus_pdf("1706.03762.pdf")), "pdf")
    assert len(doc.pages) == 15
    assert doc.title == "Attention Is All You Need"
    all_text = "\n".join(p.text for p in doc.pages)
    assert "\ufb01" not in all_text and "\ufb02" not in all_text
    titles = [s.title for p in doc.pages for s in p.sections]
    for heading in ("3 Model Architecture", "3.2.2 Multi-Head Attention", "Abstract"):
        assert heading in titles
    page5 = doc.pages[4].text  # multi-head attention: h = 8 heads
    assert re.search(r"h\s*=\s*8", page5)


def test_two_column_paper_with_annotations_and_ligatures():
    doc = parse_file(str(corpus_pdf("2302.13971.pdf")), "pdf")
    assert len(doc.pages) == 27
    text = " ".join(p.text for p in doc.pages)
    assert "efficient" in text.lower() and "\ufb01" not in text
    assert "LLaMA" in doc.title
    # Running header/footer lines are gone: no line repeats on most pages.
    first_lines = [p.text.split("\n")[0] for p in doc.pages if p.text]
    assert max(first_lines.count(line) for line in first_lines) < len(first_lines) / 2


def test_html_article_keeps_main_content_sections_and_anchors():
    doc = parse_file(str(FIXTURES / "circuits_article.html"), "html")
    text = doc.pages[0].text
    assert doc.title == "A Toy Framework for Attention Circuits"
    assert "512 dimensions" in text and "K-composition" in text and "sqrt(d_head)" in text
    for junk in ("Subscribe", "Archive", "42 comments", "Copyright", "window.analytics", "Related: our other"):
        assert junk not in text, junk
    sections = {s.title: s.anchor for s in doc.pages[0].sections}
    assert sections["The residual stream"] == "residual-stream"
    assert sections["Induction heads"] == "induction-heads"
    assert sections["K-composition"] == "composition"
    for s in doc.pages[0].sections:
        assert text[s.offset : s.offset + len(s.title)] == s.title
    assert "- Q-composition: queries read earlier heads." in text


def test_markdown_sections():
    doc = parse_file(str(FIXTURES / "notes.md"), "markdown")
    assert doc.title == "Reading notes on decoding"
    assert [s.anchor for s in doc.pages[0].sections] == ["reading-notes-on-decoding", "nucleus-sampling", "temperature"]


def test_encrypted_pdf_fails_with_clear_reason(tmp_path):
    path = tmp_path / "locked.pdf"
    path.write_bytes(make_encrypted_pdf(corpus_pdf("1706.03762.pdf")))
    with pytest.raises(ParseError, match="encrypted PDF: a password is needed"):
        parse_file(str(path), "pdf")


def test_corrupt_pdf_fails_with_clear_reason(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(make_corrupt_pdf(corpus_pdf("1706.03762.pdf")))
    with pytest.raises(ParseError, match="corrupt|no extractable text"):
        parse_file(str(path), "pdf")


def test_scanned_pdf_without_text_fails_with_clear_reason(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(make_scanned_pdf())
    with pytest.raises(ParseError, match="no extractable text .* scanned PDF"):
        parse_file(str(path), "pdf")


def test_tiny_valid_pdf_parses(tmp_path):
    path = tmp_path / "tiny.pdf"
    path.write_bytes(make_text_pdf("Nucleus sampling keeps the top-p mass"))
    doc = parse_file(str(path), "pdf", min_chars=10)
    assert "Nucleus sampling keeps the top-p mass" in doc.pages[0].text


def test_unreadable_file(tmp_path):
    with pytest.raises(ParseError, match="cannot read file"):
        parse_file(str(tmp_path / "nope.pdf"), "pdf")


def test_sniffing_trusts_bytes():
    assert sniff_kind(b"%PDF-1.7\n...") == "pdf"
    assert sniff_kind(b"\n  <!DOCTYPE html><html>") == "html"
    assert sniff_kind(b"# Notes\nplain words") == "text"
    assert sniff_kind(b"\x89PNG\r\n\x1a\n\x00\x00") is None
