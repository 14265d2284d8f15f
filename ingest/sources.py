"""What to ingest: turn user input (arXiv ids, URLs, files, folders, reading lists) into `Source`s.

A `Source` says where a document comes from and fixes its document id, deterministically, so the same
paper ingested twice is recognised: arXiv papers by their version-less id, web documents by URL, local
files by path (or by arXiv id when the file is named like one, e.g. ``1706.03762.pdf``).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from ingest.arxiv import FILENAME_RE, TEXT_RE, doc_id_for, parse_arxiv_id, split_version

LOCAL_KINDS = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
}


@dataclass
class Source:
    doc_id: str
    location: str  # URL, or absolute path of a local file
    source: str  # what users see: the file name for local files, the URL otherwise
    kind_hint: str | None = None  # "pdf" | "html" | "markdown" | "text": what we expect to receive
    title: str = ""
    topic: str = ""
    arxiv_id: str = ""  # with version when one was asked for
    local: bool = False
    authors: list[str] = field(default_factory=list)
    year: str = ""
    citekey: str = ""  # from a reference manager's export (BibTeX, Zotero): kept on the document
    alias: str = ""  # the name people use for it ("GPT-2"), shown after the title

    @property
    def link(self) -> str:
        """Where a reader opens the document (citations add #page=N)."""
        if self.local:  # the user's own copy: its pages are the ones we indexed
            return Path(self.location).as_uri()
        if self.arxiv_id:
            return f"https://arxiv.org/pdf/{self.arxiv_id}"
        return self.location


class SourceError(Exception):
    """Input that names no document we can ingest (bad path, unsupported file type)."""


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def from_arxiv(text: str, title: str = "", topic: str = "") -> Source:
    arxiv_id = parse_arxiv_id(text)
    if not arxiv_id:
        raise SourceError(f"not an arXiv id or arXiv URL: {text!r}")
    return Source(
        doc_id=doc_id_for(arxiv_id),
        location=f"arxiv:{arxiv_id}",
        source=f"https://arxiv.org/abs/{arxiv_id}",
        kind_hint="pdf",
        title=title,
        topic=topic,
        arxiv_id=arxiv_id,
    )


def from_url(url: str, title: str = "", topic: str = "", kind_hint: str | None = None, doc_id: str = "") -> Source:
    url = url.strip()
    if parse_arxiv_id(url) and urlsplit(url).hostname and "arxiv.org" in urlsplit(url).hostname:
        return from_arxiv(url, title, topic)
    parts = urlsplit(url)
    if kind_hint is None and parts.path.lower().endswith(".pdf"):
        kind_hint = "pdf"
    slug = _slug(f"{parts.hostname or ''}{parts.path}")
    return Source(
        doc_id=doc_id or f"web-{slug}-{_short_hash(url)}",
        location=url,
        source=url,
        kind_hint=kind_hint,
        title=title,
        topic=topic,
    )


def from_path(path: Path) -> Source:
    """One local file. The kind comes from the extension (content is sniffed again when parsing)."""
    path = path.expanduser().resolve()
    kind = LOCAL_KINDS.get(path.suffix.lower())
    if kind is None:
        raise SourceError(f"unsupported file type {path.suffix or '(none)'!r}: {path.name}")
    arxiv_name = FILENAME_RE.match(path.stem)
    if arxiv_name and kind == "pdf":
        arxiv_id = arxiv_name.group(1)
        doc_id = doc_id_for(arxiv_id)
    else:
        arxiv_id = ""
        doc_id = f"file-{_slug(path.stem, 40) or 'doc'}-{_short_hash(str(path))}"
    return Source(doc_id=doc_id, location=str(path), source=path.name, kind_hint=kind, local=True, arxiv_id=arxiv_id)


def expand_local(target: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """Sources for a file or every supported file under a folder, plus (input, reason) for bad input."""
    target = target.expanduser()
    if not target.exists():
        return [], [(str(target), "no such file or folder")]
    if target.is_file():
        try:
            return [from_path(target)], []
        except SourceError as err:
            return [], [(str(target), str(err))]
    files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_KINDS)
    files = [p for p in files if not any(part.startswith(".") for part in p.relative_to(target).parts)]
    return [from_path(p) for p in files], []


def from_text(item: str) -> Source:
    """An arXiv id, arXiv URL or any http(s) URL, as typed by a user."""
    item = item.strip()
    if parse_arxiv_id(item):
        return from_arxiv(item)
    if urlsplit(item).scheme not in ("http", "https") or not urlsplit(item).hostname:
        raise SourceError(f"not an arXiv id or an http(s) URL: {item!r}")
    return from_url(item)


def collect_sources(
    paths: Sequence[Path | str] = (),
    items: Sequence[str] = (),
    arxiv_ids: Sequence[str] = (),
    reading_lists: Sequence[Path | str] = (),
) -> tuple[list[Source], list[tuple[str, str]]]:
    """Sources for what a user typed or picked (files/folders, URLs or arXiv ids, arXiv ids only,
    Markdown reading lists), plus (input, reason) for each input that names nothing ingestible."""
    chosen: list[Source] = []
    bad: list[tuple[str, str]] = []
    for path in paths:
        found, problems = expand_local(Path(path))
        chosen += found
        bad += problems
    for item, make in [(i, from_text) for i in items] + [(i, from_arxiv) for i in arxiv_ids]:
        item = item.strip()
        if not item:
            continue
        try:
            chosen.append(make(item))
        except SourceError as err:
            bad.append((item, str(err)))
    for md in reading_lists:
        try:
            chosen += parse_markdown_reading_list(Path(md).read_text(encoding="utf-8"))
        except OSError as err:
            bad.append((str(md), f"cannot read reading list: {err.strerror or err}"))
    return chosen, bad


def from_upload(name: str, data: bytes, uploads_dir: Path, max_bytes: int) -> Source:
    """A PDF uploaded through the app: checked, then saved under `uploads_dir` by its content hash,
    so uploading the same file twice gives the same document (and the same copy on disk)."""
    shown = Path(name).name or "upload.pdf"
    if not data:
        raise SourceError("the file is empty")
    if len(data) > max_bytes:
        raise SourceError(f"{len(data) / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit")
    if b"%PDF-" not in data[:1024]:
        raise SourceError("not a PDF (it does not start with %PDF-)")
    digest = hashlib.sha256(data).hexdigest()[:12]
    stem = _slug(Path(shown).stem, 60) or "upload"
    # An arXiv-named upload ("1706.03762v7.pdf") keeps its name, so it gets the paper's id.
    arxiv_named = FILENAME_RE.match(Path(shown).stem)
    target = uploads_dir / (f"{Path(shown).stem}.pdf" if arxiv_named else f"{stem}-{digest}.pdf")
    uploads_dir.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_bytes() != data:
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(target)  # atomic: a killed upload leaves no half PDF behind
    source = from_path(target)
    source.source = shown
    return source


# --- reading lists -------------------------------------------------------------------------------


def _reading_list_entries() -> list[dict]:
    return tomllib.loads(resources.files("ingest").joinpath("reading_list.toml").read_text())["paper"]


def reading_list_aliases(source: Source, title: str) -> list[str]:
    """The short names the reading list gives a paper ("GPT-1", "Transformers"), matched by arXiv id
    or by title; [] for a paper the list does not have."""
    from cove.aliases import aliases_from_title, title_without_alias
    from cove.text import fold

    wanted = fold(title_without_alias(title))
    for entry in _reading_list_entries():
        listed = parse_arxiv_id(entry["url"]) or ""
        same_id = bool(source.arxiv_id and listed) and split_version(listed)[0] == split_version(source.arxiv_id)[0]
        listed_title = entry.get("title", "")
        if same_id or (wanted and listed_title and fold(title_without_alias(listed_title)) == wanted):
            return aliases_from_title(listed_title) + ([entry["alias"]] if entry.get("alias") else [])
    return []


def curated_reading_list() -> list[Source]:
    """The reading list shipped with Cove (ingest/reading_list.toml)."""
    data = {"paper": _reading_list_entries()}
    sources = []
    for entry in data["paper"]:
        title = entry.get("title", "")
        if entry["kind"] == "arxiv":
            source = from_arxiv(entry["url"], title, entry.get("topic", ""))
        else:
            source = from_url(entry["url"], title, entry.get("topic", ""), entry["kind"], doc_id=entry["id"])
        source.alias = entry.get("alias", "")
        sources.append(source)
    return sources


MD_LINK = re.compile(r"(!?)\[([^\]]*)\]\((<[^>]+>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
BARE_URL = re.compile(r"(?<![(<\[])\bhttps?://[^\s)>\]]+")
SKIP_LINK = re.compile(r"\.(png|jpe?g|gif|svg|webp|css|js|zip|mp4)$|^mailto:|^#", re.I)


def parse_markdown_reading_list(markdown: str) -> list[Source]:
    """Every paper or article link in a Markdown reading list (links, bare URLs, 'arXiv:ID' mentions).

    Images, anchors, e-mail links and media files are skipped; duplicates (same document id) are kept once.
    """
    found: list[Source] = []
    for line in markdown.splitlines():
        for bang, text, target in MD_LINK.findall(line):
            target = target.strip("<>")
            if bang or SKIP_LINK.search(target) or not target.lower().startswith(("http://", "https://")):
                continue
            found.append(from_url(target, title=text.strip()))
        stripped = MD_LINK.sub(" ", line)
        for url in BARE_URL.findall(stripped):
            url = url.rstrip(".,;:")
            if not SKIP_LINK.search(url):
                found.append(from_url(url))
        for arxiv_id in TEXT_RE.findall(stripped):
            found.append(from_arxiv(arxiv_id))
    return dedupe(found)


def dedupe(sources: list[Source]) -> list[Source]:
    """First occurrence of each document id wins (later ones may only add a missing title or citekey)."""
    seen: dict[str, Source] = {}
    for src in sources:
        if src.doc_id in seen:
            first = seen[src.doc_id]
            first.title = first.title or src.title
            first.citekey = first.citekey or src.citekey
            continue
        seen[src.doc_id] = src
    return list(seen.values())
