"""Strings Cove did not write, made safe to show, link to or open.

Titles, file names, section names, anchors, quotes and URLs come from documents, web servers and
shared-store records: any of them may carry Markdown, HTML or a `javascript:` link meant to run in
the chat app. Every front end (the Streamlit app, the Markdown export) goes through these helpers
instead of formatting such strings itself, so there is one place that decides what is inert:

- `md` makes text literal in Markdown (no links, images, HTML or LaTeX can start in it);
- `answer_text` is an answer as API and MCP clients get it: literal, with Cove's [n] markers;
- `safe_url` lets only http(s) URLs through, percent-encoding whatever could end a Markdown link;
- `doc_path` is the app's own page route for a document id of a safe shape;
- `safe_anchor` and `plain_text` keep stored fields plain (defence in depth at ingest);
- `resolve_inside` decides whether a path really lies in a folder (symlinks resolved).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import quote, urlsplit

DOC_ROUTE = "/cove/doc/"  # served by app/server.py

SAFE_ANCHOR = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
SAFE_DOC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,159}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#+|$~&])")
# Characters kept as they are in a URL's path, query and fragment: none of them can end a Markdown
# link target or an HTML attribute (no quotes, parentheses, angle brackets, spaces or backslashes).
_URL_SAFE = "/%:@!$&*+,;=-._~?"


def md(text: str) -> str:
    """`text` shown literally by a Markdown renderer: "[" cannot start a link, "<" HTML, "$" LaTeX."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def answer_text(text: str, citations: list[dict]) -> str:
    """An answer for a Markdown-rendering client (an OpenAI or MCP host): literal text, in which only
    Cove's own citation markers [n] stay as they are. A quoted document sentence carrying
    ``![x](http://...)`` or ``[a link](http://...)`` then renders as text: no image loads, no link shows."""
    escaped = md(text)
    numbers = {str(c.get("n")) for c in citations}

    def marker(match: re.Match) -> str:
        return f"[{match.group(1)}]" if match.group(1) in numbers else match.group(0)

    # Not before "(", "[" or ":": "[1](http://...)" or "[1]: http://..." in a document would be a link.
    return re.sub(r"\\\[(\d+)\\\](?![(\[:]|\\[(\[:])", marker, escaped)


def safe_url(url: str) -> str | None:
    """`url` if it is an http(s) URL with a plain host name, re-encoded so it cannot break out of a
    Markdown link or an attribute; None for anything else (javascript:, data:, file:, mangled)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme.lower() not in ("http", "https") or not _HOST.fullmatch(host):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    target = f"{parts.scheme.lower()}://{netloc}{quote(parts.path, safe=_URL_SAFE) or '/'}"
    if parts.query:
        target += "?" + quote(parts.query, safe=_URL_SAFE)
    if parts.fragment:
        target += "#" + quote(parts.fragment, safe=_URL_SAFE)
    return target


def doc_path(doc_id: str, page: object = None) -> str | None:
    """The app's page route for a document (`/cove/doc/<id>#page=N`), or None for an odd id."""
    if not isinstance(doc_id, str) or not SAFE_DOC_ID.fullmatch(doc_id):
        return None
    try:
        number = int(page) if page is not None else 0
    except (TypeError, ValueError):
        number = 0
    return f"{DOC_ROUTE}{doc_id}" + (f"#page={number}" if number > 0 else "")


def safe_anchor(anchor: str | None) -> str:
    """An HTML id usable as a link fragment, or "" when it holds anything but [A-Za-z0-9_.:-]."""
    return anchor if anchor and SAFE_ANCHOR.fullmatch(anchor) else ""


def plain_text(text: str, limit: int) -> str:
    """One line of visible text: control and format characters dropped, whitespace collapsed, cut."""
    kept = "".join(" " if ch.isspace() else ch for ch in text if unicodedata.category(ch)[0] != "C" or ch.isspace())
    line = " ".join(kept.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "\u2026"


def allowed_paths(paths, roots: list, setting: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The paths that resolve (symlinks followed) inside `roots`, and (path, reason) for the rest;
    `setting` names where the roots are configured, for the reason."""
    allowed, refused = [], []
    for path in paths:
        real = resolve_inside(path, roots) if roots else None
        if real is not None:
            allowed.append(str(real))
        elif not roots:
            refused.append((str(path), f"no local folder may be read from here (set {setting} to allow some)"))
        else:
            where = ", ".join(str(r) for r in roots)
            refused.append((str(path), f"not found inside the folders that may be read ({where}; {setting})"))
    return allowed, refused


def resolve_inside(path: Path | str, roots: list[Path]) -> Path | None:
    """`path` with symlinks resolved, if it lies inside one of `roots` (also resolved); else None."""
    try:
        real = Path(path).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    for root in roots:
        try:
            if real.is_relative_to(Path(root).expanduser().resolve()):
                return real
        except (OSError, RuntimeError):
            continue
    return None
