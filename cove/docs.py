"""The shapes of a document as it moves through Cove: parsed pages, then chunks.

These are plain dataclasses shared by ingest (which produces them) and the answer engine (which reads
chunks back from the store), so both agree on one metadata vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Section:
    """A heading found in a page's text: where it starts, what it says, and its anchor (HTML)."""

    offset: int
    title: str
    anchor: str = ""


@dataclass
class Page:
    """One page of cleaned text. HTML and text documents have a single page."""

    number: int  # 1-based, as pypdf counts pages
    text: str
    sections: list[Section] = field(default_factory=list)


@dataclass
class ParsedDocument:
    """What the parse stage returns: the cleaned pages and what it learned about the document."""

    kind: str  # "pdf" | "html" | "markdown" | "text"
    pages: list[Page]
    title: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def char_count(self) -> int:
        return sum(len(p.text) for p in self.pages)


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

    def metadata(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Chunk metadata for the store, joined with document fields (Chroma rejects None values)."""
        meta = {k: v for k, v in asdict(self).items() if k not in ("id", "text")}
        for key in ("title", "source", "url", "kind"):
            meta[key] = doc.get(key) or ""
        return meta
