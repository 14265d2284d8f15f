"""Parse stage: a downloaded or local file becomes cleaned page text with section headings.

PDFs go through pypdf page by page and then `ingest.clean`; HTML through `ingest.html`; Markdown and
plain text are one page each. Every failure is a `ParseError` whose message a user can act on
("encrypted PDF: a password is needed"), never a pypdf traceback.

Documents are untrusted, so parsing runs under `ParseLimits`: a file-size cap, a page cap read from
the page tree before it is walked, and caps on the decoded content pages draw (a 3 KB PDF can make
every one of its pages draw the same 0.7 MB stream). pypdf's own limits (`LimitReachedError`) and a
structure nested too deep for Python's stack (`RecursionError`) become plain failures too. Time and
memory are bounded one level up: `ingest.workers` runs `parse_file` in a child process with a
deadline and an address-space limit.

`parse_file` is a top-level function of plain arguments so a child process can run it.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cove.docs import Page, ParsedDocument, Section
from ingest.clean import clean_page_text, find_sections, fix_ligatures, remove_running_lines

if TYPE_CHECKING:
    from cove.settings import ParseSettings

MB = 1 << 20


class ParseError(Exception):
    """A document that cannot be turned into text; the message says why in plain words. `report`
    is the parse report when the document was read but held too little text (a scan)."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


@dataclass(frozen=True)
class ParseLimits:
    """The caps one parse runs under: plain values, so a parser process gets them without settings."""

    min_chars: int = 200
    max_file_bytes: int = 64 * MB
    max_pages: int = 2000
    max_page_content_bytes: int = 8 * MB
    max_content_bytes: int = 32 * MB

    @classmethod
    def from_settings(cls, parse: ParseSettings) -> ParseLimits:
        return cls(
            min_chars=parse.min_chars_per_doc,
            max_file_bytes=parse.max_file_mb * MB,
            max_pages=parse.max_pages,
            max_page_content_bytes=int(parse.max_page_content_mb * MB),
            max_content_bytes=int(parse.max_content_mb * MB),
        )


_MARKUP_START = re.compile(rb"^(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body|meta|title)\b", re.S)


def sniff_kind(head: bytes) -> str | None:
    """What a file really is, from its first bytes: 'pdf', 'html', 'text' or None (binary).

    HTML is a document that *starts* as markup (a doctype, `<html>`, `<head>`...; comments and an
    XML declaration may come first): notes that mention `<html>` in their text stay text."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"%PDF-") or b"%PDF-" in head[:1024]:
        return "pdf"
    lowered = stripped[:1024].lower()
    if lowered.startswith(b"<?xml"):
        lowered = lowered[lowered.find(b"?>") + 2 :].lstrip() if b"?>" in lowered else lowered
        if b"<html" in lowered:
            return "html"
    if _MARKUP_START.match(lowered):
        return "html"
    if b"\x00" in head[:4096]:
        return None
    try:
        head[:4096].decode("utf-8")
    except UnicodeDecodeError as err:
        # A multi-byte character cut at the end of the sample is still text.
        if err.start < len(head[:4096]) - 4:
            return None
    return "text"


_MARKDOWN_SIGNS = (
    re.compile(r"^#{1,6}\s+\S", re.M),  # a heading
    re.compile(r"\[[^\]\n]+\]\([^)\s]+\)"),  # a link
    re.compile(r"^```", re.M),  # a fenced block
    re.compile(r"^\s{0,3}[-*+]\s+\S", re.M),  # a list item
    re.compile(r"\*\*[^*\n]+\*\*"),  # bold
)


def looks_like_markdown(head: bytes) -> bool:
    """Text written in Markdown: at least two kinds of its marks, one of them a heading or a link."""
    text = head[:4096].decode("utf-8", errors="replace")
    found = [bool(sign.search(text)) for sign in _MARKDOWN_SIGNS]
    return sum(found) >= 2 and (found[0] or found[1])


def open_regular_file(path: str | Path, max_bytes: int | None = None) -> BinaryIO:
    """Open a local document for reading, refusing what is not a regular file or is too large.

    Opened without blocking, then checked on the open descriptor: a FIFO (or a device) swapped in
    under a document's name can neither hang the read nor be read. Raises `ParseError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ParseError(f"cannot read file: {err.strerror or err}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ParseError(f"not a regular file ({_file_type(info.st_mode)}): refused")
        if max_bytes is not None and info.st_size > max_bytes:
            raise ParseError(
                f"the file is {info.st_size / MB:,.0f} MB: over the {max_bytes / MB:,.0f} MB limit (parse.max_file_mb)"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_type(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}  # fmt: skip
    return next((name for check, name in kinds.items() if check(mode)), "a special file")


def parse_file(path: str, kind: str, min_chars: int | None = None, limits: ParseLimits | None = None) -> ParsedDocument:
    """Parse `path` as `kind` ('pdf', 'html', 'markdown', 'text') under `limits`."""
    limits = limits or ParseLimits()
    min_chars = limits.min_chars if min_chars is None else min_chars
    try:
        with open_regular_file(path, limits.max_file_bytes) as f:
            data = f.read()
    except OSError as err:
        raise ParseError(f"cannot read file: {err.strerror or err}") from err
    if kind == "pdf":
        doc = parse_pdf_bytes(data, limits)
    elif kind == "html":
        from ingest.html import parse_html

        doc = parse_html(data)
    elif kind in ("markdown", "text"):
        doc = parse_plain_text(data, markdown=kind == "markdown")
    else:
        raise ParseError(f"unsupported document kind {kind!r}")
    if doc.char_count < min_chars:
        if kind == "pdf":
            raise ParseError(
                f"no extractable text ({doc.char_count} characters in {len(doc.pages)} pages): "
                "probably a scanned PDF; run OCR on it first",
                report=doc.report,
            )
        raise ParseError(f"too little text to index ({doc.char_count} characters)")
    return doc


# --- PDF ------------------------------------------------------------------------------------------


def parse_pdf_bytes(data: bytes, limits: ParseLimits | None = None) -> ParsedDocument:
    import io

    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, LimitReachedError, PyPdfError

    limits = limits or ParseLimits()
    # pypdf logs recoverable oddities (missing fontTools, XObject limits) as warnings: keep them
    # out of the user's terminal; the text is still extracted.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    if not data.lstrip()[:1024].count(b"%PDF-"):
        raise ParseError("not a PDF (the file does not start with %PDF-)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            _decrypt_or_fail(reader)
        check_pdf_size(reader, limits)
        if not reader.pages:
            raise ParseError("the PDF has no pages")
        metadata_title = _pdf_title(reader)
        doc = _layout_document(reader)
        if doc is not None:
            return _with_title(doc, metadata_title)
        raw_pages = [_extract_page(page) for page in reader.pages]
        metadata_title = metadata_title or _largest_font_title(reader.pages[0], raw_pages[0])
    except ParseError:
        raise
    except FileNotDecryptedError as err:
        raise ParseError("encrypted PDF: a password is needed to read it") from err
    except LimitReachedError as err:
        raise ParseError(f"the PDF goes past a safety limit of the PDF reader ({err})") from err
    except RecursionError as err:
        raise ParseError("the PDF's structure is nested too deeply to read") from err
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise ParseError(f"corrupt or unreadable PDF ({type(err).__name__}: {err})") from err
    if not raw_pages:
        raise ParseError("the PDF has no pages")
    texts = remove_running_lines([clean_page_text(t) for t in raw_pages])
    pages = [Page(number=i + 1, text=t, sections=find_sections(t)) for i, t in enumerate(texts)]
    warnings = []
    empty = [p.number for p in pages if not p.text]
    if empty and len(empty) < len(pages):
        warnings.append(f"{len(empty)} page(s) without text: {empty[:10]}")
    warnings.append("layout analysis failed: plain text (no tables, figures or references told apart)")
    title = _tidy_title(metadata_title or _first_line_title(pages))
    return ParsedDocument(kind="pdf", pages=pages, title=title, warnings=warnings, report={"warnings": warnings})


def _layout_document(reader) -> ParsedDocument | None:
    """The layout-aware parse (`ingest.layout`); None when it fails, so plain extraction takes over."""
    from ingest.layout import analyze_pdf

    try:
        return analyze_pdf(reader)
    except MemoryError:
        raise
    except Exception as err:  # a parser bug must cost the layout, not the document
        logging.getLogger(__name__).warning(
            "layout analysis failed (%s: %s); using plain text", type(err).__name__, err
        )
        return None


def _with_title(doc: ParsedDocument, metadata_title: str) -> ParsedDocument:
    """The printed title (largest text on page 1), spelt as the PDF's metadata spells it when both
    agree; the metadata title, then the first line, when the page gave none."""
    printed = _tidy_title(doc.title)
    if metadata_title and _same_title(printed, metadata_title):
        doc.title = _tidy_title(metadata_title)
    else:
        doc.title = printed or _tidy_title(metadata_title or _first_line_title(doc.pages))
    return doc


def _same_title(a: str, b: str) -> bool:
    squash = lambda text: re.sub(r"[^a-z0-9]", "", text.lower())  # noqa: E731
    return bool(a) and squash(a) == squash(b)


def check_pdf_size(reader, limits: ParseLimits) -> None:
    """Refuse a PDF whose page count or decoded page content is over `limits`, before extracting text.

    The page count the root of the page tree declares is read first (walking a million-page tree is
    itself the attack); the walk that follows is capped by pypdf. Content is counted per page, so a
    stream shared by every page counts once per page: that is what text extraction would walk."""
    declared = _declared_page_count(reader)
    if declared > limits.max_pages:
        raise ParseError(
            f"the PDF declares {declared:,} pages: over the {limits.max_pages:,}-page limit (parse.max_pages)"
        )
    count = len(reader.pages)
    if count > limits.max_pages:
        raise ParseError(f"the PDF has {count:,} pages: over the {limits.max_pages:,}-page limit (parse.max_pages)")
    total = 0
    for number, page in enumerate(reader.pages, start=1):
        size = page_content_bytes(page)
        if size > limits.max_page_content_bytes:
            raise ParseError(
                f"page {number} draws {size / MB:.1f} MB of content: over the "
                f"{limits.max_page_content_bytes / MB:g} MB limit per page (parse.max_page_content_mb)"
            )
        total += size
        if total > limits.max_content_bytes:
            raise ParseError(
                f"the pages draw more than {limits.max_content_bytes / MB:g} MB of content in all "
                f"(parse.max_content_mb; reached at page {number} of {count})"
            )


def _declared_page_count(reader) -> int:
    try:
        count = reader.trailer["/Root"].get_object()["/Pages"].get_object().get("/Count", 0)
        return int(count)
    except (KeyError, TypeError, ValueError, AttributeError):
        return 0  # no usable /Count: the capped walk still counts the pages


def page_content_bytes(page, max_depth: int = 8) -> int:
    """Decoded bytes of what a page draws: its content streams and the form XObjects it can use
    (nested forms too, each form once per page)."""
    from pypdf.generic import DictionaryObject

    total = 0
    seen: set[int] = set()
    todo = [(page.get("/Contents"), page.get("/Resources"), 0)]
    while todo:
        contents, resources, depth = todo.pop()
        total += sum(len(stream.get_data()) for stream in _streams(contents))
        resources = resources.get_object() if resources is not None else None
        xobjects = resources.get("/XObject") if isinstance(resources, DictionaryObject) else None
        xobjects = xobjects.get_object() if xobjects is not None else None
        if depth >= max_depth or not isinstance(xobjects, DictionaryObject):
            continue
        for ref in xobjects.values():
            form = ref.get_object()
            key = getattr(ref, "idnum", id(form))
            if key in seen or not isinstance(form, DictionaryObject) or form.get("/Subtype") != "/Form":
                continue
            seen.add(key)
            todo.append((form, form.get("/Resources"), depth + 1))
    return total


def _streams(contents) -> list:
    from pypdf.generic import ArrayObject, StreamObject

    contents = contents.get_object() if contents is not None else None
    if isinstance(contents, StreamObject):
        return [contents]
    if isinstance(contents, ArrayObject):
        return [s for s in (item.get_object() for item in contents) if isinstance(s, StreamObject)]
    return []


def _tidy_title(title: str) -> str:
    return re.sub(r"\s+([:,])", r"\1", " ".join(fix_ligatures(title).split()))


def _decrypt_or_fail(reader) -> None:
    """Many PDFs are 'encrypted' with an empty user password (copy protection only): open those."""
    try:
        result = reader.decrypt("")
    except Exception as err:  # pypdf raises several types here, some from cryptography
        raise ParseError(f"encrypted PDF that cannot be opened ({err})") from err
    if not result:
        raise ParseError("encrypted PDF: a password is needed to read it")


def _extract_page(page) -> str:
    try:
        return page.extract_text() or ""
    except MemoryError:
        raise  # the whole parse is over its memory limit, not just this page
    except Exception:  # one broken page must not lose the rest of the paper
        return ""


def _pdf_title(reader) -> str:
    try:
        title = (reader.metadata or {}).get("/Title") or ""
    except Exception:
        return ""
    title = str(title).strip()
    # Producers often leave junk such as "Microsoft Word - draft3.docx" or an empty string.
    if len(title) < 8 or re.search(r"\.(docx?|tex|pdf|dvi)$|^untitled", title, re.I):
        return ""
    return title


def _largest_font_title(page, page_text: str) -> str:
    """The title of a paper is usually the largest text on page 1. Figures and small caps fool that,
    so a candidate must read like a title and appear verbatim in the page text."""
    runs: list[tuple[float, str]] = []

    def visit(text, cm, tm, font_dict, font_size):
        if text.strip():
            runs.append((round(abs(font_size * (tm[3] or tm[0]) * (cm[3] or 1)), 1), text))

    try:
        page.extract_text(visitor_text=visit)
    except Exception:
        return ""
    squashed_page = re.sub(r"\s+", "", page_text).lower()
    for size in sorted({s for s, _ in runs}, reverse=True)[:4]:
        candidate = " ".join(" ".join(t.split()) for s, t in runs if s == size).strip()
        if _title_like(candidate) and re.sub(r"\s+", "", candidate).lower() in squashed_page:
            return candidate
    return ""


def _title_like(text: str) -> bool:
    words = text.split()
    if not 10 <= len(text) <= 200 or len(words) < 2:
        return False
    letters = sum(c.isascii() and (c.isalnum() or c in ":-,'") for c in text.replace(" ", ""))
    return letters >= 0.9 * len(text.replace(" ", "")) and sum(map(len, words)) / len(words) >= 3


BOILERPLATE_LINE = re.compile(r"^(arxiv|preprint|published|provided|copyright|under review|proceedings)", re.I)


def _first_line_title(pages: list[Page]) -> str:
    lines = [ln.strip() for ln in (pages[0].text.split("\n")[:12] if pages else [])]
    lines = [ln for ln in lines if ln]
    # Title set in capitals over several lines: "CHAIN-OF-VERIFICATION REDUCES HALLUCINATION / IN LARGE ..."
    caps = []
    for line in lines:
        if line.isupper() and len(line) > 3:
            caps.append(line)
        elif caps:
            break
    if caps:
        joined = ""
        for line in caps:  # "LAN-" + "GUAGE" -> "LANGUAGE"
            joined = joined[:-1] + line if joined.endswith("-") else f"{joined} {line}".strip()
        return joined
    for line in lines:
        if 8 <= len(line) <= 160 and not BOILERPLATE_LINE.match(line):
            return line
    return ""


# --- Markdown and plain text ----------------------------------------------------------------------

MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def parse_plain_text(data: bytes, markdown: bool) -> ParsedDocument:
    text = data.decode("utf-8", errors="replace")
    text = clean_page_text(text) if not markdown else text.replace("\r\n", "\n").strip()
    sections: list[Section] = []
    title = ""
    if markdown:
        offset = 0
        for line in text.split("\n"):
            match = MD_HEADING.match(line)
            if match:
                heading = match.group(2).strip()
                sections.append(Section(offset, heading, _slug(heading)))
                if not title and len(match.group(1)) == 1:
                    title = heading
            offset += len(line) + 1
    else:
        sections = find_sections(text)
    kind = "markdown" if markdown else "text"
    return ParsedDocument(kind=kind, pages=[Page(1, text, sections)], title=title or _first_line_title([Page(1, text)]))


def _slug(text: str) -> str:
    """GitHub-style heading anchor."""
    return re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-")
