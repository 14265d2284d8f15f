"""Unit tests of cleaning, heading detection and chunking (pure functions, no models)."""

from cove.docs import Page, ParsedDocument, Section
from ingest.chunk import chunk_document, chunk_spans, embedding_text
from ingest.clean import clean_page_text, find_sections, remove_running_lines


def test_ligatures_hyphenation_and_spaces_are_cleaned():
    raw = "The e\ufb03cient \ufb01ne-tuning of   large\u00a0models uses exam-\nple data.\u200b  Z\u00a8urich"
    cleaned = clean_page_text(raw)
    assert "efficient fine-tuning of large models uses example\ndata." in cleaned
    assert "Zürich" in cleaned
    assert "\ufb01" not in cleaned and "  " not in cleaned


def test_control_characters_from_symbol_fonts_are_dropped():
    # FlashAttention's "3× speedup" comes out of pypdf as "3\x02 speedup".
    assert clean_page_text("3\x02 speedup on GPT-2\x0c here") == "3 speedup on GPT-2 here"


def test_hyphenated_compounds_keep_their_hyphen():
    assert "GPT-\n2" in clean_page_text("GPT-\n2 is large") or "GPT-2" in clean_page_text("GPT-\n2")
    assert "Self-\nAttention" in clean_page_text("Self-\nAttention layers")


def test_running_headers_and_page_numbers_are_removed_but_body_kept():
    pages = [
        f"Published as a conference paper at ICLR 2023\nFirst line {i}.\nBody text of page {i} mentions ICLR 2023 too."
        f"\nAnother body line.\nClosing body line.\n{i}"
        for i in range(1, 7)
    ]
    cleaned = remove_running_lines(pages)
    for i, text in enumerate(cleaned, start=1):
        assert "Published as a conference paper" not in text
        assert f"Body text of page {i} mentions ICLR 2023 too." in text
        assert not text.endswith(f"\n{i}")


def test_two_pages_are_too_few_to_call_anything_a_header():
    pages = ["Same line\nbody a", "Same line\nbody b"]
    assert remove_running_lines(pages) == pages


def test_section_headings_are_found_with_offsets():
    text = "Abstract\nWe study x.\n3 Model Architecture\nThe encoder.\n3.2.1 Scaled Dot-Product Attention\nQ K V.\n"
    text += "2 Table row 27.3 28.4 29.1 30.2\nthis is a sentence, not a heading.\n"
    sections = find_sections(text)
    titles = [s.title for s in sections]
    assert titles == ["Abstract", "3 Model Architecture", "3.2.1 Scaled Dot-Product Attention"]
    for s in sections:
        assert text[s.offset : s.offset + len(s.title)] == s.title


def test_chunk_spans_cover_text_respect_size_and_overlap():
    text = " ".join(f"Sentence number {i} says something useful." for i in range(200))
    spans = chunk_spans(text, size=400, overlap=80, min_chars=100)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (s1, e1), (s2, _) in zip(spans, spans[1:], strict=False):
        assert e1 - s1 <= 400 + 100  # at most one merged tail beyond the target
        assert s2 < e1, "consecutive chunks must overlap"
        assert s2 > s1
        assert text[s2 - 1] == " ", "overlap starts at a word boundary"
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_short_tail_is_merged_not_left_as_fragment():
    text = "a" * 50 + " " + "word " * 200
    spans = chunk_spans(text, size=600, overlap=0, min_chars=300)
    assert len(text) - spans[-1][0] >= 300 or len(spans) == 1


def _doc():
    p1 = "Abstract\n" + "Intro words here. " * 60
    p2 = "continued text from before. " * 10 + "\n2 Method\n" + "Method words. " * 80
    return ParsedDocument("pdf", [Page(1, p1, find_sections(p1)), Page(2, p2, find_sections(p2))], title="T")


def test_chunks_are_page_bound_deterministic_and_carry_sections():
    doc = _doc()
    a = chunk_document("doc-1", doc, size=500, overlap=50, min_chars=100)
    b = chunk_document("doc-1", doc, size=500, overlap=50, min_chars=100)
    assert [c.id for c in a] == [c.id for c in b] and len({c.id for c in a}) == len(a)
    assert [c.chunk_index for c in a] == list(range(len(a)))
    for c in a:
        page = doc.pages[c.page_start - 1]
        assert c.page_start == c.page_end
        assert page.text[c.char_start : c.char_end] == c.text
    page2 = [c for c in a if c.page_start == 2]
    assert page2[0].section == "Abstract", "a page starts inside the previous page's last section"
    assert page2[-1].section == "2 Method"


def test_chunk_metadata_has_no_none_values_and_embedding_text_names_paper():
    chunk = chunk_document("d", _doc(), 500, 50, 100)[0]
    meta = chunk.metadata({"title": "Paper", "source": "p.pdf", "url": None, "kind": "pdf"})
    assert None not in meta.values() and meta["page_start"] == 1 and meta["title"] == "Paper"
    assert embedding_text(chunk, "Paper").startswith("Paper - Abstract\n")


def test_html_sections_keep_anchor_in_chunks():
    text = "Intro\n\nBody " * 10
    doc = ParsedDocument("html", [Page(1, text, [Section(0, "Intro", "intro")])])
    assert chunk_document("h", doc, 300, 0, 50)[0].anchor == "intro"
