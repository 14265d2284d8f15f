"""Answers as Markdown for the chat app: literal text, and citation markers that open the cited page.

Kept apart from the Streamlit script (no Streamlit import) so the formatting is unit-tested directly.
"""

from __future__ import annotations

import re
from typing import Any

DOC_URL = "/cove/doc/{doc_id}#page={page}"  # served by app/server.py

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+|$~])")
_MARKER = re.compile(r"\\\[(\d+)\\\]")


def md(text: str) -> str:
    """`text` shown literally by st.markdown ("$" would start LaTeX, "*" emphasis, "<" HTML)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def answer_markdown(text: str, citations: list[dict[str, Any]]) -> str:
    """The answer as Markdown: text escaped (a "$" must not start LaTeX), citation markers [n] as links
    that open the cited PDF at its page."""
    by_n = {c["n"]: c for c in citations}
    escaped = md(text)

    def link(match: re.Match) -> str:
        citation = by_n.get(int(match.group(1)))
        if citation is None:
            return f"\\[{match.group(1)}\\]"
        return f'[\\[{citation["n"]}\\]]({citation_link(citation)} "{_title_attr(citation)}")'

    return _MARKER.sub(link, escaped)


def citation_link(citation: dict[str, Any]) -> str:
    """Where a citation opens: the served local copy for PDFs, the article (with anchor) otherwise."""
    url = citation.get("url", "")
    if url.startswith(("http://", "https://")) and "#page=" not in url:
        return url  # an HTML article: its own address and section anchor
    return DOC_URL.format(doc_id=citation["doc_id"], page=citation["page"])


def _title_attr(citation: dict[str, Any]) -> str:
    return f"{citation.get('title') or citation.get('source')}, p. {citation['page']}".replace('"', "'")


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
