"""Answers as Markdown for the chat app: literal text, and citation markers that open the cited page.

Kept apart from the Streamlit script (no Streamlit import) so the formatting is unit-tested directly.
Every string here comes from documents or a shared store, so nothing is formatted raw: text goes
through `md`, link targets through `safe_url` / `doc_path` (see `cove.untrusted`), and the app never
renders HTML.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from cove.docs import table_row_of
from cove.untrusted import doc_path, md, plain_text, safe_url

__all__ = [
    "answer_markdown",
    "citation_link",
    "cited_page",
    "is_pdf_citation",
    "md",
    "source_lines",
    "text_fragment",
    "verification_line",
]

_MARKER = re.compile(r"\\\[(\d+)\\\]")


def answer_markdown(text: str, citations: list[dict[str, Any]]) -> str:
    """The answer as Markdown: text escaped (a "$" must not start LaTeX), citation markers [n] as links
    that open the cited PDF at its page."""
    by_n = {c["n"]: c for c in citations}
    escaped = md(text)

    def link(match: re.Match) -> str:
        citation = by_n.get(int(match.group(1)))
        target = citation_link(citation) if citation else None
        if target is None:
            return f"\\[{match.group(1)}\\]"
        return f'[\\[{citation["n"]}\\]]({target} "{_title_attr(citation)}")'

    return _MARKER.sub(link, escaped)


def is_pdf_citation(citation: dict[str, Any]) -> bool:
    """Does the citation name a page of a PDF (its link says `#page=N`)?"""
    return "#page=" in str(citation.get("url", ""))


def citation_link(citation: dict[str, Any]) -> str | None:
    """Where a citation opens: the served local copy for PDFs, the article (with anchor) otherwise;
    None when neither is safe (a `javascript:` URL and an odd document id, say). A link to an article
    or a served text copy also carries the quote as a text fragment, so the browser scrolls to the
    passage and marks it (a PDF viewer ignores those: PDFs get "Show on page" instead)."""
    url = str(citation.get("url", ""))
    if is_pdf_citation(citation):
        return doc_path(citation.get("doc_id", ""), citation.get("page"))
    target = safe_url(url) or doc_path(citation.get("doc_id", ""), citation.get("page"))
    if target is None:
        return None
    directive = text_fragment(str(citation.get("quote", "")))
    if not directive:
        return target
    return target + directive if "#" in target else f"{target}#{directive}"


def text_fragment(quote: str, edge_words: int = 4) -> str:
    """A text-fragment directive (`:~:text=start,end`) that finds the quote in a web page or plain
    text: its first and last words (all of a short one), percent-encoded so that nothing in it can
    end a link. "" for an empty quote. A table-row quote is searched by its row."""
    quote = plain_text(quote, 1000).removesuffix("\u2026").removesuffix("...")
    words = (table_row_of(quote) or quote).replace("|", " ").split()
    if not words:
        return ""
    if len(words) <= 2 * edge_words:
        return ":~:text=" + _fragment_part(" ".join(words))
    start, end = " ".join(words[:edge_words]), " ".join(words[-edge_words:])
    return f":~:text={_fragment_part(start)},{_fragment_part(end)}"


def _fragment_part(text: str) -> str:
    # "-", "," and "&" mean something in a text directive; quote() leaves "-" and "~" as they are.
    return quote(text, safe="").replace("-", "%2D").replace("~", "%7E")


def source_lines(citation: dict[str, Any]) -> tuple[str, str, str, str]:
    """The sources panel's entry for one citation, as Markdown: heading, quote, links ("" if none are
    safe) and the file name or URL it came from."""
    page = cited_page(citation)
    title = md(plain_text(str(citation.get("title") or citation.get("source") or ""), 300))
    key = f" · @{md(plain_text(str(citation['citekey']), 100))}" if citation.get("citekey") else ""
    heading = f"**\\[{cited_page(citation, 'n')}\\] {title}**, page {page}{key}"
    links = []
    target = citation_link(citation)
    if target:
        links.append(f"[Open page {page} ↗]({target})")
    online = safe_url(str(citation.get("url", "")))
    if online and "#page=" in online:
        links.append(f"[online copy ↗]({online})")
    source = md(plain_text(str(citation.get("source", "")), 300))
    quote = "> " + md(plain_text(str(citation.get("quote", "")), 1000))
    return heading, quote, " · ".join(links), source


def cited_page(citation: dict[str, Any], key: str = "page") -> int:
    """A citation's page (or other number field) as an int; 0 when it is missing or odd."""
    try:
        return int(citation.get(key, 0))
    except (TypeError, ValueError):
        return 0


def _title_attr(citation: dict[str, Any]) -> str:
    title = plain_text(str(citation.get("title") or citation.get("source") or ""), 200)
    return md(f"{title}, p. {cited_page(citation)}".replace('"', "'"))


VERDICTS = {
    "confirmed": "✅ confirmed",
    "answered": "✅ answered from its own sources",
    "contradicted": "⚠️ contradicted: corrected",
    "unconfirmed": "❌ not confirmed: dropped",
    "not_found": "❌ the library does not say",
}


def verification_line(question: str, reply: str, status: str) -> str:
    mark = VERDICTS.get(status, status)
    return f"- **{md(question)}** → {md(reply or '(no answer)')} ({mark})"
