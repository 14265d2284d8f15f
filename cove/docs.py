"""The shapes of a document as it moves through Cove: parsed pages, then chunks.

These are plain dataclasses shared by ingest (which produces them) and the answer engine (which reads
chunks back from the store), so both agree on one metadata vocabulary.

What a chunk is (its `block`) and which of its characters must never be quoted as an answer (its
`spans`) is the contract between the parser and the answer side; `unquotable_spans` reads it back
from stored metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

# What a chunk holds. Prose is running text (quotable, except its marked spans); the others are
# searchable but never quoted as answer sentences, except tables and captions, which are quotable units.
BLOCK_KINDS = ("prose", "table", "caption", "figure", "reference", "front")
UNQUOTABLE_BLOCKS = ("figure", "reference", "front")
# Kinds of spans inside a chunk's text that must never be quoted.
SPAN_KINDS = ("equation", "figure", "front", "reference")


@dataclass
class Section:
    """A heading found in a page's text: where it starts, what it says, and its anchor (HTML)."""

    offset: int
    title: str
    anchor: str = ""


@dataclass
class Block:
    """A unit of a page that is not running text: a table, a caption, figure text, reference entries
    or front matter (title, authors, affiliations, e-mails, stamps). Chunked on its own."""

    kind: str  # one of BLOCK_KINDS except "prose"
    text: str
    label: str = ""  # "Table 3", "Figure 2" (tables, captions, figures)
    offset: int = 0  # where the block sits in its page's prose text (which section it is under)
    caption: str = ""  # tables: the caption line
    header: list[str] = field(default_factory=list)  # tables: the header cells
    rows: list[str] = field(default_factory=list)  # tables: one line per row; references: one entry each
    entries: list[dict[str, Any]] = field(default_factory=list)  # references: parsed fields per row


@dataclass
class Page:
    """One page of cleaned text. HTML and text documents have a single page.

    For PDFs, `text` is the page's running text only (headings are `sections`, not text); `spans`
    marks ranges of it never to be quoted (equations, stray figure text); `blocks` hold the rest."""

    number: int  # 1-based, as pypdf counts pages
    text: str
    sections: list[Section] = field(default_factory=list)
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)


@dataclass
class PagePositions:
    """Where a PDF page's text is drawn, for highlighting a quote on the page.

    `text` is every line of the page in reading order (cleaned, one line per row); each box maps the
    characters [start, end) of `text` to a rectangle (x0, y0, x1, y1) in PDF user space."""

    number: int
    box: tuple[float, float, float, float]  # the page's media box (x0, y0, x1, y1)
    text: str
    boxes: list[tuple[int, int, float, float, float, float]]


@dataclass
class ParsedDocument:
    """What the parse stage returns: the cleaned pages and what it learned about the document."""

    kind: str  # "pdf" | "html" | "markdown" | "text"
    pages: list[Page]
    title: str = ""
    warnings: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # the parse report (pages, words, tables, ...)
    positions: list[PagePositions] = field(default_factory=list)  # PDFs only

    @property
    def char_count(self) -> int:
        return sum(len(p.text) + sum(len(b.text) for b in p.blocks) for p in self.pages)


@dataclass
class Chunk:
    """A retrievable piece of one page (rarely two), with the metadata citations need."""

    id: str
    text: str
    doc_id: str
    chunk_index: int
    page_start: int
    page_end: int
    char_start: int  # offsets into the cleaned text of page_start
    char_end: int
    section: str = ""
    anchor: str = ""
    block: str = "prose"  # one of BLOCK_KINDS
    label: str = ""  # "Table 3" / "Figure 2" for table, caption and figure chunks
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # never-quote ranges of `text`
    header: list[str] = field(default_factory=list)  # table chunks: the header cells
    references: list[dict[str, Any]] = field(default_factory=list)  # reference chunks: parsed entries

    def metadata(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Chunk metadata for the store, joined with document fields (Chroma rejects None values;
        lists are stored as JSON strings, since metadata values must be scalars)."""
        meta = {k: v for k, v in asdict(self).items() if k not in ("id", "text", "spans", "header", "references")}
        meta["spans"] = json.dumps([list(s) for s in self.spans])
        if self.header:
            meta["header"] = json.dumps(self.header)
        if self.references:
            meta["references"] = json.dumps(self.references)
        for key in ("title", "source", "url", "kind"):
            meta[key] = doc.get(key) or ""
        return meta


WHOLE_CHUNK = 10**9  # the end of a span covering a chunk whose length is not known


def unquotable_spans(metadata: dict[str, Any], text: str | None = None) -> list[tuple[int, int, str]]:
    """The [start, end) ranges of a stored chunk's text that must never be quoted as answer sentences,
    with their kind ("equation", "figure", "front", "reference"). Figure, reference and front-matter
    chunks are unquotable as a whole: for them the result is one span over the whole chunk (its
    length from `text` when given, else from the stored span, else `WHOLE_CHUNK`)."""
    spans = []
    try:
        raw = json.loads(metadata.get("spans") or "[]")
    except (TypeError, ValueError):
        raw = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, list) and len(item) == 3 and all(isinstance(v, int) for v in item[:2]):
            spans.append((item[0], item[1], str(item[2])))
    block = metadata.get("block", "prose")
    if block in UNQUOTABLE_BLOCKS:
        end = len(text) if text is not None else max((e for _, e, _ in spans), default=WHOLE_CHUNK)
        return [(0, end, block)]
    return spans


def _squashed(text: str) -> tuple[str, list[int]]:
    """Lower-case letters and digits only, with each one's index in `text`."""
    kept, where = [], []
    for i, char in enumerate(text):
        if char.isalnum():
            kept.append(char.lower())
            where.append(i)
    return "".join(kept), where


def locate_quote(text: str, quote: str) -> tuple[int, int] | None:
    """Where `quote` occurs in `text` as [start, end), ignoring case, spacing, punctuation and line-break
    hyphens (a quote is whitespace-tidied, the text is not); a trailing ellipsis of a shortened quote
    is dropped. None when it does not occur."""
    quote = quote.rstrip().removesuffix("\u2026").removesuffix("...")
    haystack, where = _squashed(text)
    needle, _ = _squashed(quote)
    if not needle:
        return None
    found = haystack.find(needle)
    if found < 0:
        return None
    return where[found], where[found + len(needle) - 1] + 1


# A table row as the answer engine quotes it (`cove.quotes`): "Table 3 (N | dmodel): base | 6 | 512" or
# "Table 3: base | 6 | 512". The label is `ingest.layout`'s ("Table " + number), or "Table" alone.
_TABLE_QUOTE = re.compile(r"^Table(?: [A-Z]?\d{1,3}(?:\.\d{1,2})?| [IVX]{1,5})?(?: \(|: )")


def table_row_of(quote: str) -> str | None:
    """The row of a table-row quote (the cells as the page has them, without the label and header the
    engine puts before them), or None when `quote` is not shaped like one."""
    match = _TABLE_QUOTE.match(quote)
    if match is None:
        return None
    rest = quote[match.end() :]
    if match.group(0).endswith(": "):
        return rest.strip() or None
    depth = 1  # inside "(header)": header cells may hold parentheses of their own
    for i, char in enumerate(rest):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            row = rest[i + 1 :]
            if not row.startswith(": "):
                return None
            return row[2:].strip() or None
    return None


def quote_is_unquotable(quote: str, text: str, metadata: dict[str, Any]) -> bool:
    """Does a quote drawn from a chunk fall (even partly) on a never-quote span of it (an equation,
    figure text, a reference entry, front matter), or come from a chunk that is unquotable as a whole?"""
    if metadata.get("block", "prose") in UNQUOTABLE_BLOCKS:
        return True
    where = locate_quote(text, quote)
    if where is None:
        return False
    start, end = where
    return any(s < end and e > start for s, e, _ in unquotable_spans(metadata, text))
