"""Layout-aware PDF parsing: real papers from ../shared/corpus (skipped without it) and small PDFs
written here, so each behaviour is checked on input where the right answer is known.

Real PDFs: every title against MANIFEST.tsv, figure labels kept out of the running text, table rows
with their header, a two-column sentence joined across the columns, headings as section metadata,
equations marked, references parsed, front matter kept apart. Made PDFs: a two-column page whose
content stream interleaves the columns, a heading, pages without a text layer.
"""

from __future__ import annotations

import csv
import re
from functools import cache

import pytest
from conftest import CORPUS, corpus_pdf, make_scanned_pdf, write_pdf

from cove.docs import ParsedDocument, unquotable_spans
from ingest.chunk import chunk_document
from ingest.parse import ParseError, parse_file, parse_pdf_bytes

# MANIFEST.tsv adds the name a paper is known by, "(GPT-1)" / "(GPT-2)", to two titles: an alias,
# not part of the printed title. It is removed before comparing.
ALIAS_SUFFIX = re.compile(r"\s*\((GPT-\d)\)$")


@cache
def parsed(name: str) -> ParsedDocument:
    return parse_file(str(corpus_pdf(name)), "pdf")


def chunks(name: str):
    return chunk_document("doc", parsed(name), size=1200, overlap=150, min_chars=200)


def prose_chunks(name: str) -> str:
    return "\n".join(c.text for c in chunks(name) if c.block == "prose")


def squash(text: str) -> str:
    return " ".join(text.lower().split())


def manifest_titles() -> list[tuple[str, str]]:
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.skip("../shared/corpus/MANIFEST.tsv is absent: real-PDF tests need the shared corpus")
    with (CORPUS / "MANIFEST.tsv").open(encoding="utf-8") as f:
        return [(row["file"], row["title"]) for row in csv.DictReader(f, delimiter="\t")]


def test_every_shared_pdf_gets_its_printed_title():
    rows = manifest_titles()
    assert len(rows) == 11
    for file, title in rows:
        expected = squash(ALIAS_SUFFIX.sub("", title))
        assert squash(parsed(file).title) == expected, file


def test_titles_set_in_capitals_are_shown_in_title_case():
    assert parsed("2106.09685.pdf").title == "LoRA: Low-Rank Adaptation of Large Language Models"
    assert parsed("2309.11495.pdf").title == "Chain-of-Verification Reduces Hallucination in Large Language Models"


def test_authors_come_from_the_first_page():
    assert parsed("1706.03762.pdf").authors[:3] == ["Ashish Vaswani", "Noam Shazeer", "Niki Parmar"]
    assert parsed("gpt2_language_models_are_unsupervised_multitask_learners.pdf").authors == [
        "Alec Radford",
        "Jeffrey Wu",
        "Rewon Child",
        "David Luan",
        "Dario Amodei",
        "Ilya Sutskever",
    ]


def test_figure_labels_are_figure_text_not_prose():
    # LLaMA's Figure 1 (training loss curves) and LoRA's Figure 2 (accuracy against trainable parameters).
    for name, page, figure, labels in (
        ("2302.13971.pdf", 3, "Figure 1", ["Billion of tokens", "Training loss", "LLaMA 65B"]),
        ("2106.09685.pdf", 8, "Figure 2", ["Validation Accuracy", "MultiNLI-matched", "PrefixEmbed"]),
    ):
        on_page = [c for c in chunks(name) if c.page_start == page]
        figure_text = "\n".join(c.text for c in on_page if c.block == "figure" and c.label == figure)
        prose = "\n".join(c.text for c in on_page if c.block == "prose")
        assert len(prose) > 1000
        for label in labels:
            assert label in figure_text, (name, label)
            assert label not in prose, (name, label)
        caption = [c for c in chunks(name) if c.block == "caption" and c.label == figure]
        assert caption and caption[0].text.startswith(f"{figure}:")


def test_figure_text_chunks_are_never_quotable():
    figure = next(c for c in chunks("2302.13971.pdf") if c.block == "figure")
    meta = figure.metadata({})
    assert unquotable_spans(meta, figure.text) == [(0, len(figure.text), "figure")]


def _table(name: str, label: str) -> list[str]:
    """The table's lines: caption, header, then every row (from all its chunks)."""
    parts = [c for c in chunks(name) if c.block == "table" and c.label == label]
    assert parts, f"{name}: no {label}"
    for part in parts:  # every part of a split table repeats the caption and header lines
        assert part.text.split("\n")[:2] == parts[0].text.split("\n")[:2]
    return parts[0].text.split("\n")[:2] + [row for part in parts for row in part.text.split("\n")[2:]]


def test_tables_become_caption_header_and_rows():
    lines = _table("1706.03762.pdf", "Table 3")
    assert lines[0].startswith("Table 3: Variations on the Transformer architecture.")
    assert lines[1].split(" | ")[1:7] == ["N", "dmodel", "dff", "h", "dk", "dv"]
    assert "base | 6 | 512 | 2048 | 8 | 64 | 64 | 0.1 | 0.1 | 100K | 4.92 | 25.8 | 65" in lines
    assert "big | 6 | 1024 | 4096 | 16 |  |  | 0.3 |  | 300K | 4.33 | 26.4 | 213" in lines
    # A row label set once beside its group ("(A)") names every row of the group.
    assert "(A) |  |  |  | 1 | 512 | 512 |  |  |  | 5.29 | 24.9 | " in lines
    assert len(lines) == 2 + 20  # base, (A) x4, (B) x2, (C) x7, (D) x4, (E), big
    header = next(c.header for c in chunks("1706.03762.pdf") if c.label == "Table 3" and c.block == "table")
    assert header[1:3] == ["N", "dmodel"]

    llama = _table("2302.13971.pdf", "Table 2")
    assert llama[1] == "params | dimension | n heads | n layers | learning rate | batch size | n tokens"
    assert "65.2B | 8192 | 64 | 80 | 1.5e−4 | 4M | 1.4T" in llama

    gpt2 = _table("gpt2_language_models_are_unsupervised_multitask_learners.pdf", "Table 2")
    assert gpt2[1:] == [
        "Parameters | Layers | dmodel",
        "117M | 12 | 768",
        "345M | 24 | 1024",
        "762M | 36 | 1280",
        "1542M | 48 | 1600",
    ]
    # The rows are not left in the running text.
    assert "6 512 2048 8 64 64" not in prose_chunks("1706.03762.pdf")


def test_a_long_table_is_split_with_caption_and_header_repeated():
    from cove.docs import Block
    from ingest.chunk import block_texts

    rows = [f"row {i} | {i * 3} | {i * 7}" for i in range(200)]
    block = Block("table", "", label="Table 9", caption="Table 9: Many rows.", header=["name", "a", "b"], rows=rows)
    parts = block_texts(block, size=400, overlap=50, min_chars=100)
    assert len(parts) > 3
    for text, _ in parts:
        assert text.startswith("Table 9: Many rows.\nname | a | b\n")
        assert len(text) <= 400
    assert sum(len(text.split("\n")) - 2 for text, _ in parts) == 200


def test_two_column_sentence_joins_the_next_column_not_the_figure_between():
    # LLaMA page 3: the left column ends "We use 2,000 warmup", the right column starts "steps, and vary
    # the learning rate"; Figure 1 and its caption come between them in the content stream.
    page = parsed("2302.13971.pdf").pages[2]
    assert "We use 2,000 warmup\nsteps, and vary the learning rate" in page.text
    assert "Billion of tokens" not in page.text and "Figure 1:" not in page.text


def test_headings_are_section_metadata_not_text():
    page = parsed("2302.13971.pdf").pages[2]
    sections = {s.title: s.offset for s in page.sections}
    assert "2.3 Optimizer" in sections
    assert page.text[sections["2.3 Optimizer"] :].startswith("Our models are trained using the AdamW")
    assert "2.3 Optimizer" not in page.text
    on_page = [c for c in chunks("2302.13971.pdf") if c.page_start == 3]
    assert "2.3 Optimizer" in {c.section for c in on_page}
    assert not any("2.3 Optimizer" in c.text for c in on_page)


def test_display_equations_are_marked_and_inline_math_is_not():
    page = parsed("1706.03762.pdf").pages[3]  # Attention(Q, K, V) = softmax(QK^T / sqrt(d_k)) V   (1)
    marked = [page.text[s:e] for s, e, kind in page.spans if kind == "equation"]
    assert any("softmax(" in text and "(1)" in text for text in marked)
    page5 = parsed("1706.03762.pdf").pages[4]
    sentence = page5.text.index("and the inner-layer has dimensionality")
    assert not any(s <= sentence < e for s, e, _ in page5.spans)
    chunk = next(c for c in chunks("1706.03762.pdf") if "= softmax(" in c.text)
    assert any(kind == "equation" and "softmax" in chunk.text[s:e] for s, e, kind in chunk.spans)


def test_references_are_parsed_entries_kept_out_of_prose():
    refs = [e for c in chunks("1706.03762.pdf") if c.block == "reference" for e in c.references]
    assert len(refs) >= 35
    ba = next(e for e in refs if e.get("arxiv") == "1607.06450")
    assert ba["title"] == "Layer normalization"
    assert ba["authors"] == ["Jimmy Lei Ba", "Jamie Ryan Kiros", "Geoffrey E Hinton"]
    assert ba["year"] == "2016"
    # LoRA cites the adapter papers (author-year style); they are findable and parsed.
    lora = [e for c in chunks("2106.09685.pdf") if c.block == "reference" for e in c.references]
    houlsby = next(
        e for e in lora if "Parameter-Efficient Transfer Learning for NLP".lower() in e.get("title", "").lower()
    )
    assert houlsby["year"] == "2019" and houlsby["authors"][0].startswith("Neil Houlsby")
    assert "Parameter-Efficient Transfer Learning for NLP" not in prose_chunks("2106.09685.pdf")
    reference = next(c for c in chunks("2106.09685.pdf") if c.block == "reference")
    assert unquotable_spans(reference.metadata({}), reference.text)[0][2] == "reference"


def test_front_matter_is_kept_out_of_the_text():
    doc = parsed("1706.03762.pdf")
    front = "\n".join(b.text for b in doc.pages[0].blocks if b.kind == "front")
    assert "avaswani@google.com" in front and "arXiv:1706.03762v7" in front and "Equal contribution" in front
    prose = prose_chunks("1706.03762.pdf")
    assert "@google.com" not in prose and "Equal contribution" not in prose
    assert prose_chunks("1706.03762.pdf").lstrip().startswith("The dominant sequence transduction models")


def test_parse_report_counts_what_was_found():
    report = parsed("1706.03762.pdf").report
    assert report["pages"] == 15 and report["tables"] == 4 and report["references"] >= 35
    assert report["words"] > 5000 and report["equations"] >= 3 and report["figures"] >= 3
    assert 0 < report["figure_text_share"] < 0.2
    assert report["warnings"] == []


# --- PDFs made here ---------------------------------------------------------------------------------


def make_pdf(pages: list[list[tuple[float, float, str, str]]], image_pages: int = 0) -> bytes:
    """A PDF whose pages show `(x, y, font, text)` lines in the order given (font "R" Helvetica, "B"
    Helvetica-Bold, 10 pt), then `image_pages` pages that are one full-page image each (a scan)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")
    pages_id = add(b"")
    regular = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    bold = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>")
    image = add(
        b"<< /Type /XObject /Subtype /Image /Width 1 /Height 1 /ColorSpace /DeviceGray /BitsPerComponent 8 "
        b"/Length 1 >>\nstream\n\x80\nendstream"
    )
    kids = []
    resources = b"<< /Font << /R %d 0 R /B %d 0 R >> /XObject << /Im %d 0 R >> >>" % (regular, bold, image)
    streams = []
    for lines in pages:
        ops = "".join(
            f"BT /{font} 10 Tf 1 0 0 1 {x} {y} Tm ({text.replace('(', '[').replace(')', ']')}) Tj ET\n"
            for x, y, font, text in lines
        )
        streams.append(ops.encode())
    streams += [b"q 612 0 0 792 0 0 cm /Im Do Q\n"] * image_pages
    for stream in streams:
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R /Resources %s >>"
                % (pages_id, content, resources)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id
    objects[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    return write_pdf(objects, root=catalog)


LEFT = [
    "Left column line one starts the first sentence",
    "of this page and carries it on for a while",
    "until it reaches the end of the left column",
    "where the reader moves on to the next line.",
    "A second sentence of the left column begins",
    "here and goes on to the bottom of the column",
    "so that the column is long enough to count",
    "as running text for the layout analysis too.",
    "The left column ends here in the middle of a",
]
RIGHT = [
    "sentence that the right column finishes now.",
    "The right column then has sentences of its own",
    "which continue down the page line after line",
    "in the same way as the left column did before",
    "so both columns have the same number of lines",
    "and the same width, like a paper set in two",
    "columns, with a gutter of white space between",
    "them that no line of running text ever crosses",
    "until the very last line of the right column.",
]


def test_interleaved_two_columns_are_read_column_by_column():
    lines = []
    for i, (left, right) in enumerate(zip(LEFT, RIGHT, strict=True)):  # the stream goes left, right, left, ...
        y = 700 - 12 * i
        lines += [(60, y, "R", left), (320, y, "R", right)]
    doc = parse_pdf_bytes(make_pdf([lines]))
    text = " ".join(doc.pages[0].text.split())
    assert " ".join(LEFT + RIGHT) in text
    assert "in the middle of a sentence that the right column finishes now." in text
    assert any("odd reading order" in w for w in doc.report["warnings"])


def test_a_heading_becomes_section_metadata():
    body = [
        "Our models are trained using the AdamW optimizer with the following",
        "hyper-parameters, and a cosine learning rate schedule, such that the",
        "final learning rate is equal to ten percent of the maximal learning rate.",
    ]
    lines = [(72, 700, "R", "The previous section ends with this sentence about the data we used here.")]
    lines += [(72, 676, "B", "2.3 Optimizer")]
    lines += [(72, 660 - 12 * i, "R", text) for i, text in enumerate(body)]
    page = parse_pdf_bytes(make_pdf([lines])).pages[0]
    assert [s.title for s in page.sections] == ["2.3 Optimizer"]
    assert page.text[page.sections[0].offset :].startswith("Our models are trained")
    assert "Optimizer Our" not in " ".join(page.text.split())


def test_pages_without_a_text_layer_are_reported():
    doc = parse_pdf_bytes(make_pdf([], image_pages=3))
    assert any(w.startswith("no text layer: scanned?") for w in doc.report["warnings"])
    blank = parse_pdf_bytes(make_scanned_pdf(3))
    assert any(w.startswith("no text layer: scanned?") for w in blank.report["warnings"])
    # One page of text and two scanned ones: the document is usable, the report says which pages are scans.
    text_page = [(72, 700 - 12 * i, "R", line) for i, line in enumerate(LEFT)]
    mixed = parse_pdf_bytes(make_pdf([text_page], image_pages=2))
    assert "Left column line one" in mixed.pages[0].text
    assert "no text layer: scanned? (page(s) [2, 3])" in mixed.report["warnings"]


def test_a_scan_fails_with_its_report(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(make_pdf([], image_pages=2))
    with pytest.raises(ParseError, match="scanned PDF") as failure:
        parse_file(str(path), "pdf")
    assert any(w.startswith("no text layer: scanned?") for w in failure.value.report["warnings"])


def test_figure_text_takes_its_captions_vector_and_references_share_one():
    from ingest.chunk import embedding_plan

    all_chunks = chunks("2302.13971.pdf")
    texts, plan = embedding_plan(all_chunks, "LLaMA")
    assert len(plan) == len(all_chunks) and len(texts) < len(all_chunks)
    by_kind = {}
    for chunk, index in zip(all_chunks, plan, strict=True):
        by_kind.setdefault((chunk.block, chunk.page_start, chunk.label), set()).add(index)
    assert by_kind[("figure", 3, "Figure 1")] == by_kind[("caption", 3, "Figure 1")]
    references = {i for (block, _, _), found in by_kind.items() if block == "reference" for i in found}
    assert len(references) == 1 and texts[references.pop()] == "LLaMA - References"
    prose = [i for c, i in zip(all_chunks, plan, strict=True) if c.block == "prose"]
    assert len(set(prose)) == len(prose)  # running text is embedded chunk by chunk
