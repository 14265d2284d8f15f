"""The bibliography: split the reference section into entries and parse each one.

An entry starts where the layout says so: a number ("[12]", "12."), a line back at the column's
left edge after indented continuation lines (hanging indent), or a wider gap between lines. Each
entry is parsed into authors, title, year, arXiv id and DOI, for the two families of styles papers
use: "Authors. Year. Title. Venue." (ACL, natbib author-year) and "Authors. Title. Venue, Year."
(NeurIPS, ICLR, IEEE). Parsing is best effort: the entry's text is always kept, so a search for a
cited paper's words finds it even when the split between authors and title is wrong.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ingest.lines import Line

NUMBERED_ENTRY = re.compile(r"^\s*(?:\[\d{1,4}\]|\d{1,4}\.\s)")
ARXIV_ID = re.compile(r"(?:arXiv\s*[:.]?\s*(?:abs/)?|arxiv\.org/(?:abs|pdf)/|abs/)(\d{4}\.\d{4,5})(v\d+)?", re.I)
DOI = re.compile(r"\b(10\.\d{4,9}/[^\s,;\"<>]+[^\s,;.\"<>])")
YEAR = re.compile(r"(?<![\d.])((?:19[5-9]|20[0-4])\d)[a-z]?(?![\d])")
# "Authors. 2019. Title." (the year right after the authors)
AUTHOR_YEAR = re.compile(r"^(?P<authors>.{3,600}?)[.,]\s+(?P<year>(?:19|20)\d{2})[a-z]?\.\s+(?P<rest>.+)$", re.S)
# A full stop ending the author list: not one after an initial ("E.") or inside "et al."
AUTHORS_END = re.compile(r"(?<!\b[A-Z])(?<!\bal)(?<!\bJr)(?<!\bSt)\.\s+(?=[A-Z0-9\"“'(])")
SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]”\"?!])[.?!]\s+(?=[A-Za-z\"“(])")


@dataclass
class Reference:
    """One bibliography entry: its text and what could be read from it."""

    text: str
    page: int
    authors: list[str] = field(default_factory=list)
    title: str = ""
    year: str = ""
    arxiv: str = ""
    doi: str = ""

    def fields(self) -> dict:
        """The parsed fields (for chunk metadata), without the text."""
        data = asdict(self)
        data.pop("text")
        data.pop("page")
        return {k: v for k, v in data.items() if v}


def split_entries(lines: list[tuple[int, Line]]) -> list[tuple[int, list[Line]]]:
    """(page, lines) of each entry, from the reference section's (page, line) pairs in reading order."""
    if not lines:
        return []
    numbered = sum(bool(NUMBERED_ENTRY.match(ln.text)) for _, ln in lines) >= max(2, len(lines) // 8)
    entries: list[tuple[int, list[Line]]] = []
    previous: Line | None = None
    for page, line in lines:
        if previous is None or _starts_entry(line, previous, numbered):
            entries.append((page, [line]))
        else:
            entries[-1][1].append(line)
        previous = line
    return entries


def _starts_entry(line: Line, previous: Line, numbered: bool) -> bool:
    if numbered:
        return bool(NUMBERED_ENTRY.match(line.text))
    em = line.size
    same_column = abs(line.x0 - previous.x0) < 12 * em and previous.y > line.y
    if not same_column:  # a new column or page: an entry starts unless this line is indented
        return not line.notes & {"indented"}
    if line.x0 < previous.x0 - 0.6 * em:  # back to the left edge after a continuation line
        return True
    if line.x0 > previous.x0 + 0.6 * em:  # indented: a continuation
        return False
    gap = previous.y - line.y
    return gap > 1.45 * em  # extra space between entries (and no hanging indent to go by)


def parse_entry(text: str, page: int) -> Reference:
    text = " ".join(text.split())
    body = NUMBERED_ENTRY.sub("", text, count=1).strip()
    ref = Reference(text=body, page=page)
    arxiv = ARXIV_ID.search(body)
    if arxiv:
        ref.arxiv = arxiv.group(1)
    doi = DOI.search(body)
    if doi:
        ref.doi = doi.group(1)
    author_year = AUTHOR_YEAR.match(body)
    if author_year and _authorish(author_year.group("authors")):
        authors, ref.year = author_year.group("authors"), author_year.group("year")
        ref.title = _first_sentence(author_year.group("rest"))
    else:
        end = AUTHORS_END.search(body)
        authors = body[: end.start()] if end else ""
        rest = body[end.end() :] if end else body
        ref.title = _first_sentence(rest)
        years = YEAR.findall(rest) or YEAR.findall(body)
        ref.year = years[-1] if years else ""
    ref.authors = split_authors(authors)
    return ref


def _authorish(text: str) -> bool:
    """Reads like a list of names: capitalised words, commas, 'and', initials; no long lower-case run."""
    words = text.replace(",", " ").split()
    if not words or len(words) > 80:
        return False
    lower = [
        w for w in words if w[0].islower() and w not in ("and", "et", "al.", "al", "van", "von", "de", "der", "di")
    ]
    return len(lower) <= max(1, len(words) // 6)


def _first_sentence(text: str) -> str:
    match = SENTENCE_END.search(text)
    title = text[: match.start() + 1] if match else text
    return title.strip().rstrip(".").strip()[:300]


def split_authors(text: str) -> list[str]:
    text = text.strip().rstrip(".,")
    if not text:
        return []
    parts = re.split(r",\s*(?:and\s+)?|\s+and\s+|\s*&\s*", text)
    names = [p.strip() for p in parts if p.strip() and p.strip() not in ("et al", "et al.")]
    return [n for n in names if 1 < len(n) < 80][:60]
