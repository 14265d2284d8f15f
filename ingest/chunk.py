"""Chunk stage: cut each page into overlapping, retrievable pieces with citation metadata.

Chunks stay inside one page, so every chunk cites exactly one page (a page's short tail is merged
into the chunk before it rather than becoming a fragment). A page's running text is cut on
paragraph, sentence or word boundaries near the target size, and keeps the never-quote spans that
fall inside each piece. Its blocks become chunks of their own: a caption or figure text is one chunk;
a long table is split by rows, each part repeating the caption and header lines; the bibliography by
whole entries. Ids are ``<doc_id>:<index>``, so re-ingesting the same text gives the same ids and an
interrupted run can be finished by upserting again.
"""

from __future__ import annotations

import re

from cove.docs import UNQUOTABLE_BLOCKS, Block, Chunk, Page, ParsedDocument, Section

SENTENCE_END = re.compile(r"[.!?][)\]\"']?\s")


def chunk_spans(text: str, size: int, overlap: int, min_chars: int) -> list[tuple[int, int]]:
    """[start, end) character spans covering `text`; consecutive spans share about `overlap` chars."""
    spans: list[tuple[int, int]] = []
    start = _skip_space(text, 0)
    n = len(text)
    while start < n:
        end = n if n - start <= size else _break_point(text, start, start + size)
        if n - end < min_chars:  # merge a short tail rather than leave a fragment
            end = n
        spans.append((start, _trim_end(text, start, end)))
        if end >= n:
            break
        next_start = _word_start(text, max(start + 1, end - overlap), end)
        start = _skip_space(text, next_start)
    return [(s, e) for s, e in spans if e > s]


def _break_point(text: str, start: int, limit: int) -> int:
    """The best place to cut before `limit`: paragraph, then sentence, then line, then word."""
    floor = start + (limit - start) * 6 // 10
    window = text[floor:limit]
    para = window.rfind("\n\n")
    if para >= 0:
        return floor + para + 2
    sentences = list(SENTENCE_END.finditer(window))
    if sentences:
        return floor + sentences[-1].end()
    for sep in ("\n", " "):
        pos = window.rfind(sep)
        if pos >= 0:
            return floor + pos + 1
    return limit


def _word_start(text: str, pos: int, limit: int) -> int:
    """Move `pos` forward to the start of a word, so overlap never begins mid-word."""
    if pos == 0 or text[pos - 1].isspace():
        return pos
    nxt = text.find(" ", pos, limit)
    return nxt + 1 if nxt >= 0 else pos


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _trim_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _section_at(sections: list[Section], offset: int, inherited: Section | None) -> Section | None:
    current = inherited
    for section in sections:
        if section.offset <= offset:
            current = section
        else:
            break
    return current


def chunk_document(doc_id: str, doc: ParsedDocument, size: int, overlap: int, min_chars: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    inherited: Section | None = None  # the section a page starts in, carried over from the page before
    for page in doc.pages:
        pieces: list[tuple[int, Chunk]] = []
        for start, end in chunk_spans(page.text, size, overlap, min_chars):
            # A heading in the first third of the chunk names it better than the one before it.
            section = _section_at(page.sections, start + (end - start) // 3, inherited)
            chunk = _chunk(doc_id, page, page.text[start:end], start, end, section)
            chunk.spans = [
                (max(s, start) - start, min(e, end) - start, k) for s, e, k in page.spans if s < end and e > start
            ]
            pieces.append((start, chunk))
        for block in page.blocks:
            section = _section_at(page.sections, block.offset, inherited)
            for text, entries in block_texts(block, size, overlap, min_chars):
                chunk = _chunk(doc_id, page, text, block.offset, block.offset, section)
                chunk.block, chunk.label, chunk.header, chunk.references = (
                    block.kind,
                    block.label,
                    block.header,
                    entries,
                )
                if block.kind in UNQUOTABLE_BLOCKS:
                    chunk.spans = [(0, len(text), block.kind)]
                pieces.append((block.offset, chunk))
        for _, chunk in sorted(pieces, key=lambda p: p[0]):
            chunk.chunk_index = len(chunks)
            chunk.id = f"{doc_id}:{len(chunks):04d}"
            chunks.append(chunk)
        if page.sections:
            inherited = page.sections[-1]
    return chunks


def _chunk(doc_id: str, page: Page, text: str, start: int, end: int, section: Section | None) -> Chunk:
    return Chunk(
        id="",
        text=text,
        doc_id=doc_id,
        chunk_index=0,
        page_start=page.number,
        page_end=page.number,
        char_start=start,
        char_end=end,
        section=section.title if section else "",
        anchor=section.anchor if section else "",
    )


def block_texts(block: Block, size: int, overlap: int, min_chars: int) -> list[tuple[str, list[dict]]]:
    """The chunk texts of a block (with the parsed reference entries each holds)."""
    if block.kind == "table" and block.rows:
        head = [line for line in (block.caption, " | ".join(block.header)) if line]
        return [("\n".join(head + rows), []) for rows in _packed(block.rows, size - sum(len(h) + 1 for h in head))]
    if block.kind == "reference" and block.rows:
        out, at = [], 0
        for rows in _packed(block.rows, size):
            out.append(("\n".join(rows), block.entries[at : at + len(rows)]))
            at += len(rows)
        return out
    if len(block.text) <= 2 * size or block.kind == "figure":  # a figure's text stays one unit
        return [(block.text, [])]
    return [(block.text[s:e], []) for s, e in chunk_spans(block.text, size, overlap, min_chars)]


def _packed(rows: list[str], room: int) -> list[list[str]]:
    """Consecutive rows in groups of at most `room` characters (a longer row goes alone)."""
    groups: list[list[str]] = []
    used = 0
    for row in rows:
        if groups and used + len(row) + 1 <= max(room, 1):
            groups[-1].append(row)
            used += len(row) + 1
        else:
            groups.append([row])
            used = len(row) + 1
    return groups


# Characters of a block's text that are embedded. BM25 indexes every word of every chunk; the dense
# vector of a table only needs its caption and header (the rows are numbers the model reads poorly),
# and that of front matter only its gist.
EMBEDDED_CHARS = {"table": 300, "front": 120}


def embedding_text(chunk: Chunk, title: str) -> str:
    """What is embedded for a chunk: its text behind a short header naming the paper and section,
    so a passage that never repeats the paper's name can still be found by it."""
    label = chunk.label if chunk.label and chunk.label not in chunk.text[:80] else ""  # figure text: name it
    header = " - ".join(part for part in (title, chunk.section, label) if part)
    text = chunk.text
    if chunk.block == "table":  # caption and header
        text = "\n".join(text.split("\n")[:2])
    text = text[: EMBEDDED_CHARS.get(chunk.block, len(text))]
    return f"{header}\n{text}" if header else text


def embedding_plan(chunks: list[Chunk], title: str) -> tuple[list[str], list[int]]:
    """The texts to embed for a document's chunks, and for each chunk the text whose vector it takes.

    Figure text and reference lists are found by their words (BM25 indexes all of them) and are never
    quoted; their vector only needs to say what they belong to. A figure's text takes its caption's
    vector (same page and label), every reference chunk the vector of "<title> - References". This
    keeps ingest about as fast as before these blocks became chunks of their own (docs/benchmarks.md)."""
    texts: list[str] = []
    where: dict[str, int] = {}

    def index_of(text: str) -> int:
        if text not in where:
            where[text] = len(texts)
            texts.append(text)
        return where[text]

    captions = {(c.page_start, c.label): c for c in chunks if c.block == "caption"}
    plan = []
    for chunk in chunks:
        if chunk.block == "reference":
            plan.append(index_of(f"{title} - References" if title else "References"))
        elif chunk.block == "figure" and (chunk.page_start, chunk.label) in captions:
            plan.append(index_of(embedding_text(captions[(chunk.page_start, chunk.label)], title)))
        else:
            plan.append(index_of(embedding_text(chunk, title)))
    return texts, plan
