"""Answers as Markdown for the chat app: literal text, and citation markers that open the cited page.

Kept apart from the Streamlit script (no Streamlit import) so the formatting is unit-tested directly.
Every string here comes from documents or a shared store, so nothing is formatted raw: text goes
through `md`, link targets through `safe_url` / `doc_path` (see `cove.untrusted`), and the app never
renders HTML.
"""

from __future__ import annotations

import re
from typing import Any

from cove.untrusted import doc_path, md, plain_text, safe_url

__all__ = ["answer_markdown", "citation_link", "md", "source_lines", "verification_line"]

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


def citation_link(citation: dict[str, Any]) -> str | None:
    """Where a citation opens: the served local copy for PDFs, the article (with anchor) otherwise;
    None when neither is safe (a `javascript:` URL and an odd document id, say)."""
    url = str(citation.get("url", ""))
    if "#page=" not in url:
        web = safe_url(url)  # an HTML article: its own address and section anchor, re-encoded
        if web:
            return web
    return doc_path(citation.get("doc_id", ""), citation.get("page"))


def source_lines(citation: dict[str, Any]) -> tuple[str, str, str, str]:
    """The sources panel's entry for one citation, as Markdown: heading, quote, links ("" if none are
    safe) and the file name or URL it came from."""
    page = _page(citation)
    title = md(plain_text(str(citation.get("title") or citation.get("source") or ""), 300))
    key = f" · @{md(plain_text(str(citation['citekey']), 100))}" if citation.get("citekey") else ""
    heading = f"**\\[{_page(citation, 'n')}\\] {title}**, page {page}{key}"
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


def _page(citation: dict[str, Any], key: str = "page") -> int:
    try:
        return int(citation.get(key, 0))
    except (TypeError, ValueError):
        return 0


def _title_attr(citation: dict[str, Any]) -> str:
    title = plain_text(str(citation.get("title") or citation.get("source") or ""), 200)
    return md(f"{title}, p. {_page(citation)}".replace('"', "'"))


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
