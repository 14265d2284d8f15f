"""Reference-manager exports as sources: BibTeX files and Zotero exports, one document per entry.

    sources, bad = load_references(Path("refs.bib"))        # or a Zotero CSL JSON / Better BibTeX export

Each entry becomes a `Source` carrying its citekey (kept on the document in the catalog, shown with
its citations), its title, authors and year. What is fetched, first that applies:

1. an attached file (`file` field) that exists: the user's own copy, no network request (paths are
   relative to the export file). The file must resolve (symlinks followed) inside the export's
   folder or one of `ingest.allowed_roots` (Zotero's storage folder, say): an export is a document
   from elsewhere, and ``file = {../../.ssh/notes.txt}`` must not index what it points at;
2. an arXiv id (`eprint` with `archivePrefix = {arXiv}`, a journal or note like "arXiv:2106.09685",
   an arxiv.org URL, or an arXiv DOI 10.48550/arXiv.…): the paper from arXiv;
3. a DOI: its https://doi.org/ link (the publisher's page; many are paywalled and fail with a reason);
4. a URL.

An entry that names none of these, or whose only file is missing, is reported with its citekey and
the reason; the others are ingested. Re-importing the same export is incremental: unchanged
documents are skipped by the pipeline (content hash), and a changed citekey is updated in place.
The entry parsers live in `ingest.bibtex` and `ingest.zotero`; a `.bib` is parsed in a parse worker
under `parse.timeout_s` and `parse.max_memory_mb`, like a PDF (`ingest.bibtex.parse_bibtex_bounded`).
(The bibliography *inside* a paper is parsed by `ingest.references`.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.arxiv import TEXT_RE, doc_id_for, parse_arxiv_id
from ingest.sources import LOCAL_KINDS, Source, SourceError, dedupe, from_arxiv, from_path, from_url

MAX_EXPORT_BYTES = 32 * 1024 * 1024  # a library of tens of thousands of entries; more is not an export
ARXIV_DOI = re.compile(r"^10\.48550/arxiv\.(.+)$", re.I)
DOI = re.compile(r"^10\.\d{4,9}/\S+$")

if TYPE_CHECKING:
    from ingest.workers import WorkerLimits


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


def load_references(
    path: Path, roots: list[Path] = (), limits: WorkerLimits | None = None
) -> tuple[list[Source], list[tuple[str, str]]]:
    """Sources for every entry of a BibTeX or Zotero export, plus (entry, reason) for the rest.
    Attached files are read inside the export's folder and `roots` only. A BibTeX file is parsed in a
    parse worker under `limits` (default: the default `parse.*` limits)."""
    from ingest import bibtex, zotero

    path = Path(path).expanduser()
    text = read_export(path)
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        references, bad = zotero.parse_csl_json(text, path.name)
    else:
        references, bad = bibtex.parse_bibtex_bounded(path, limits)
    sources: list[Source] = []
    for reference in references:
        try:
            sources.append(to_source(reference, path.resolve().parent, list(roots)))
        except SourceError as err:
            bad.append((f"{path.name}: {reference.citekey or '(no citekey)'}", str(err)))
    return dedupe(sources), bad


def to_source(reference: Reference, base_dir: Path, roots: list[Path] = ()) -> Source:
    """The document an entry names (see the module docstring for the order), with its citekey."""
    arxiv_id = reference.arxiv_id or _arxiv_from_links(reference)
    local, missing, outside = _attached_file(reference.files, base_dir, [base_dir, *roots])
    if local is not None:
        source = from_path(local)
        if arxiv_id and not source.arxiv_id:  # the same paper as its arXiv copy: one document
            source.doc_id, source.arxiv_id = doc_id_for(arxiv_id), arxiv_id
    elif arxiv_id:
        source = from_arxiv(arxiv_id)
    elif reference.doi:
        source = from_url(f"https://doi.org/{reference.doi}")
    elif reference.urls:
        source = from_url(reference.urls[0])
    elif outside:
        raise SourceError(
            f"attached file outside the export's folder: {outside[0]} (add its folder to ingest.allowed_roots)"
        )
    elif missing:
        raise SourceError(f"attached file not found: {missing[0]}")
    else:
        raise SourceError("names nothing Cove can fetch (no file, arXiv id, DOI or URL)")
    source.citekey = reference.citekey
    source.title = reference.title or source.title
    source.authors = reference.authors or source.authors
    source.year = reference.year or source.year
    return source


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


def _arxiv_from_links(reference: Reference) -> str:
    arxiv_doi = ARXIV_DOI.match(reference.doi)
    if arxiv_doi and parse_arxiv_id(arxiv_doi.group(1)):
        return parse_arxiv_id(arxiv_doi.group(1)) or ""
    for url in reference.urls:
        found = parse_arxiv_id(url)
        if found:
            return found
    return ""


def _attached_file(files: list[str], base_dir: Path, roots: list[Path]) -> tuple[Path | None, list[str], list[str]]:
    """The best attached file that exists inside `roots` (a PDF first), the ones named but missing,
    and the ones that exist outside `roots` (never read)."""
    from cove.untrusted import resolve_inside

    existing: list[Path] = []
    missing: list[str] = []
    outside: list[str] = []
    for written in files:
        path = Path(written).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.suffix.lower() not in LOCAL_KINDS:
            continue  # e.g. a Zotero snapshot's .png, or a file type Cove does not read
        if not path.is_file():
            missing.append(written)
        elif (inside := resolve_inside(path, roots)) is not None:
            existing.append(inside)
        else:
            outside.append(written)
    existing.sort(key=lambda p: p.suffix.lower() != ".pdf")
    return (existing[0] if existing else None), missing, outside


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
