"""arXiv ids: recognise them in ids and URLs, build PDF/abstract URLs, read metadata from the API."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

# New-style ids (1706.03762, 2106.09685v2) and old-style ones (hep-th/9901001v1).
NEW_ID = r"\d{4}\.\d{4,5}(?:v\d+)?"
OLD_ID = r"[a-z\-]+(?:\.[A-Z]{2})?/\d{7}(?:v\d+)?"
ID_RE = re.compile(rf"^(?:arxiv:)?({NEW_ID}|{OLD_ID})$", re.I)
URL_RE = re.compile(
    rf"^https?://(?:www\.|export\.)?arxiv\.org/(?:abs|pdf|html)/({NEW_ID}|{OLD_ID})(?:\.pdf)?/?(?:[?#].*)?$",
    re.I,
)
FILENAME_RE = re.compile(rf"^({NEW_ID})$")
TEXT_RE = re.compile(rf"(?:arxiv[:\s]\s*|arxiv\.org/(?:abs|pdf)/)({NEW_ID})", re.I)
ATOM = {"a": "http://www.w3.org/2005/Atom"}


def parse_arxiv_id(text: str) -> str | None:
    """'1706.03762', 'arXiv:1706.03762v7' or an arxiv.org abs/pdf URL -> the id (with version if given)."""
    text = text.strip()
    match = ID_RE.match(text) or URL_RE.match(text)
    return match.group(1) if match else None


def carries_arxiv_stamp(first_page: str, arxiv_id: str) -> bool:
    """Does page 1 carry arXiv's stamp for this paper ("arXiv:1706.03762v7 [cs.CL] 2 Aug 2023", printed
    up the left margin of every arXiv PDF)? Text cleaning may glue the stamp to the word before it
    ("pe-" + "arXiv:..." -> "pearXiv:..."), so the match starts at "Xiv:"."""
    base = re.escape(split_version(arxiv_id)[0])
    return re.search(rf"Xiv:\s*{base}(?:v\d+)?(?![\d.])", first_page) is not None


def split_version(arxiv_id: str) -> tuple[str, str]:
    """'2106.09685v2' -> ('2106.09685', 'v2'); no version -> ('2106.09685', '')."""
    match = re.match(r"^(.*?)(v\d+)?$", arxiv_id)
    assert match
    return match.group(1), match.group(2) or ""


def doc_id_for(arxiv_id: str) -> str:
    """Version-less, so a newer version replaces the old one's chunks instead of duplicating them."""
    return "arxiv-" + split_version(arxiv_id)[0].replace("/", "_")


@dataclass
class ArxivMeta:
    title: str = ""
    authors: list[str] = field(default_factory=list)
    year: str = ""
    version: str = ""


def parse_api_response(xml_text: str) -> ArxivMeta | None:
    """The first entry of an arXiv API Atom feed, or None when it has none (unknown id)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return None
    entry = root.find("a:entry", ATOM)
    if entry is None:
        return None
    title = " ".join((entry.findtext("a:title", "", ATOM) or "").split())
    if not title or title.lower() == "error":
        return None
    entry_id = entry.findtext("a:id", "", ATOM) or ""
    version = split_version(entry_id.rstrip("/").rsplit("/", 1)[-1])[1]
    published = entry.findtext("a:published", "", ATOM) or ""
    authors = [" ".join((a.findtext("a:name", "", ATOM) or "").split()) for a in entry.findall("a:author", ATOM)]
    return ArxivMeta(title=title, authors=[a for a in authors if a], year=published[:4], version=version)
