"""What to ingest: turn user input (arXiv ids, URLs, files, folders, reading lists) into `Source`s.

A `Source` says where a document comes from and fixes its document id, deterministically, so the same
paper ingested twice is recognised: arXiv papers by their version-less id, web documents by URL, local
files by path. A local file or upload named like an arXiv paper (``1706.03762.pdf``) only *claims* that
id: ingest keeps it if page 1 carries the paper's arXiv stamp, and indexes the file under its own id
otherwise (`disown_arxiv_id`), so a stray file cannot replace the real paper's chunks.

Folders are walked without trusting what is in them: a symbolic link that leads out of the folder,
a FIFO, a device or a file name that is not UTF-8 is reported as a bad input of its own, and the
rest of the folder is ingested.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import BinaryIO
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
    arxiv_unproven: bool = False  # the arXiv id comes from a file name only (see `disown_arxiv_id`)

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


def from_path(path: Path, shown_name: str | None = None) -> Source:
    """One local file, of any name: its kind is sniffed from its content at ingest, the extension
    only a hint (a folder is walked for the extensions in `LOCAL_KINDS`; a file named explicitly may
    have any, and binary content is refused then, as one bad input).

    A PDF named like an arXiv paper (by `shown_name`, for uploads, or its own name) claims that
    paper's id until ingest has read page 1 (see `disown_arxiv_id`)."""
    path = path.expanduser().resolve()
    if not _is_utf8(str(path)):
        raise SourceError(f"the file name is not valid UTF-8 ({_printable(str(path))}): rename it to ingest it")
    kind = LOCAL_KINDS.get(path.suffix.lower())
    name = shown_name or path.name
    arxiv_name = FILENAME_RE.match(Path(name).stem)
    if arxiv_name and kind == "pdf":
        arxiv_id = arxiv_name.group(1)
        return Source(
            doc_id=doc_id_for(arxiv_id),
            location=str(path),
            source=name,
            kind_hint=kind,
            local=True,
            arxiv_id=arxiv_id,
            arxiv_unproven=True,
        )
    return Source(doc_id=local_file_id(path), location=str(path), source=name, kind_hint=kind, local=True)


def local_file_id(path: Path) -> str:
    """The document id of a local file that is not an arXiv paper: its name and a hash of its path."""
    return f"file-{_slug(path.stem, 40) or 'doc'}-{_short_hash(str(path))}"


def disown_arxiv_id(source: Source) -> None:
    """Index a file that is named like an arXiv paper, but did not prove it, as the local file it is."""
    source.doc_id = local_file_id(Path(source.location))
    source.arxiv_id = ""
    source.arxiv_unproven = False


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode turned undecodable bytes into lone surrogates
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def expand_local(target: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """Sources for a file or every supported file under a folder, plus (input, reason) for bad input."""
    target = target.expanduser()
    if not os.path.lexists(target) or not target.exists():
        return [], [(_printable(str(target)), "no such file or folder")]
    if target.is_dir():
        return _folder_sources(target)
    problem = _not_a_document(target, root=None)
    if problem:
        return [], [(_printable(str(target)), problem)]
    try:
        return [from_path(target)], []
    except SourceError as err:
        return [], [(_printable(str(target)), str(err))]


def _folder_sources(folder: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """Every supported file under `folder` (hidden files and folders skipped, links to folders not
    followed), each checked on its own: one bad entry is one bad input, never the whole folder."""
    root = folder.resolve()
    sources: list[Source] = []
    bad: list[tuple[str, str]] = []
    for path in _entries(root):
        named_like_a_document = path.suffix.lower() in LOCAL_KINDS
        problem = _not_a_document(path, root)
        if problem is None and not named_like_a_document:
            continue  # a link to a folder or a file inside this folder: walked (or skipped) already
        if problem is None:
            try:
                sources.append(from_path(path))
                continue
            except SourceError as err:
                problem = str(err)
        bad.append((_printable(str(path)), problem))
    return sources, bad


def _entries(root: Path):
    """Files named like documents under `root`, plus every symbolic link (to check where it leads)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        linked_folders = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames) + linked_folders:
            path = Path(dirpath) / name
            if not name.startswith(".") and (path.suffix.lower() in LOCAL_KINDS or path.is_symlink()):
                yield path


def _not_a_document(path: Path, root: Path | None) -> str | None:
    """Why `path` must not be read as a document, or None. With `root`, a symbolic link must stay
    inside it: a link in a shared folder must not pull in (and later serve) a file from elsewhere."""
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):  # a dangling link, or a loop of links
        return "a broken symbolic link" if path.is_symlink() else "cannot be read"
    if root is not None and path.is_symlink() and not real.is_relative_to(root):
        return f"a symbolic link to {_printable(str(real))}, outside the folder: refused"
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device", stat.S_ISSOCK: "a socket"}
        what = next((name for check, name in kinds.items() if check(mode)), "a special file")
        return f"not a regular file ({what}): refused"
    return None


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


def from_upload(name: str, data: bytes | BinaryIO, uploads_dir: Path, max_bytes: int) -> Source:
    """A PDF uploaded through the app, streamed to disk in blocks while it is hashed and checked.

    It is kept as ``<name>-<content hash>.pdf``: a different file with the same name never replaces
    another upload, and the same file uploaded twice is one document (and one copy on disk). A name
    like ``1706.03762.pdf`` only claims the arXiv id (see `from_path`)."""
    shown = Path(name).name or "upload.pdf"
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    if hasattr(stream, "seek"):
        stream.seek(0)
    uploads_dir.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=uploads_dir, prefix=".upload-", suffix=".part")
    try:
        digest, head = hashlib.sha256(), b""
        with os.fdopen(fd, "wb") as out:
            size = 0
            while block := stream.read(1 << 20):
                size += len(block)
                if size > max_bytes:
                    raise SourceError(f"more than {max_bytes / 2**20:.0f} MB: over the upload limit")
                head += block[: max(0, 1024 - len(head))]
                digest.update(block)
                out.write(block)
        if not size:
            raise SourceError("the file is empty")
        if b"%PDF-" not in head:
            raise SourceError("not a PDF (it does not start with %PDF-)")
        target = uploads_dir / f"{_slug(Path(shown).stem, 60) or 'upload'}-{digest.hexdigest()[:16]}.pdf"
        if not target.exists():
            os.replace(partial, target)  # atomic: a killed upload leaves no half PDF behind
    except OSError as err:  # a full disk: nothing half-written stays behind
        raise SourceError(f"cannot save the upload: {err.strerror or err}") from err
    finally:
        Path(partial).unlink(missing_ok=True)
    return from_path(target, shown_name=shown)


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
    """First occurrence of each document id wins (later ones may only add a missing title or citekey).
    A file that only claims an arXiv id is kept apart until ingest has checked the claim: a stray
    ``1706.03762.pdf`` must not push the real paper out of the run (or the other way round)."""
    seen: dict[tuple[str, str], Source] = {}
    for src in sources:
        key = (src.doc_id, src.location if src.arxiv_unproven else "")
        if key in seen:
            first = seen[key]
            first.title = first.title or src.title
            first.citekey = first.citekey or src.citekey
            continue
        seen[key] = src
    return list(seen.values())
