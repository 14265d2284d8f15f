"""One entry of a reference-manager export, and the field helpers both entry parsers share.

`ingest.bibtex` and `ingest.zotero` turn an export's entries into `Reference`s with these helpers;
`ingest.refmanagers` turns references into sources. Kept apart so that the parsers and the importer
depend on this module, not on each other (they imported each other before).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ingest.arxiv import TEXT_RE, parse_arxiv_id

MAX_EXPORT_BYTES = 32 * 1024 * 1024  # a library of tens of thousands of entries; more is not an export
ARXIV_DOI = re.compile(r"^10\.48550/arxiv\.(.+)$", re.I)
DOI = re.compile(r"^10\.\d{4,9}/\S+$")


class ReferenceError(ValueError):
    """The export file itself cannot be read (not the entries in it)."""


@dataclass
class Reference:
    """One entry of an export, in the terms Cove needs."""

    citekey: str
    title: str = ""
    authors: list[str] = field(default_factory=list)
    year: str = ""
    arxiv_id: str = ""
    doi: str = ""
    urls: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # as written in the export


def read_export(path: Path) -> str:
    """The export's text, bounded in size; a clear `ReferenceError` if it cannot be read."""
    try:
        size = path.stat().st_size
        if size > MAX_EXPORT_BYTES:
            raise ReferenceError(f"{path.name}: {size / 2**20:.0f} MB is over the {MAX_EXPORT_BYTES >> 20} MB limit")
        return path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise ReferenceError(f"cannot read {path}: {err.strerror or err}") from err


def arxiv_id_in(text: str) -> str:
    """An arXiv id in free text ("arXiv preprint arXiv:2106.09685", "arXiv:1706.03762v7"), or ""."""
    text = text.strip()
    if not text:
        return ""
    direct = parse_arxiv_id(text)
    if direct:
        return direct
    found = TEXT_RE.search(text)
    return found.group(1) if found else ""


def clean_doi(value: str) -> str:
    value = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)", "", value.strip(), flags=re.I)
    return value if DOI.match(value) else ""


def split_names(value: str) -> list[str]:
    """BibTeX author lists ("Vaswani, Ashish and Shazeer, Noam") as display names."""
    names = []
    for name in re.split(r"\s+and\s+", value.strip()):
        name = " ".join(name.split())
        if "," in name:
            last, _, first = name.partition(",")
            name = f"{first.strip()} {last.strip()}".strip()
        if name:
            names.append(name)
    return names


def plain(text: str) -> str:
    """LaTeX-ish field text as plain text: braces, common escapes and accents dropped."""
    text = re.sub(r"\\[`'^\"~=.uvHcdbtk]\{?([A-Za-z])\}?", r"\1", text)  # \'{e} -> e
    text = re.sub(r"\\(?:textit|textbf|emph|mathrm|textrm|texttt)\s*\{", "{", text)
    text = text.replace("\\&", "&").replace("\\%", "%").replace("\\_", "_").replace("~", " ")
    return " ".join(text.replace("{", "").replace("}", "").split())
