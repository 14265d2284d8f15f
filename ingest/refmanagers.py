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
under `parse.timeout_s` and `parse.max_memory_mb`, like a PDF (`parse_bibtex_bounded`).
(The bibliography *inside* a paper is parsed by `ingest.references`.)
"""

from __future__ import annotations

from pathlib import Path

from ingest import zotero
from ingest.arxiv import doc_id_for, parse_arxiv_id
from ingest.refentries import ARXIV_DOI, Reference, ReferenceError, read_export

__all__ = ["Reference", "ReferenceError", "load_references", "to_source"]
from ingest.parse import ParseLimits
from ingest.sources import LOCAL_KINDS, Source, SourceError, dedupe, from_arxiv, from_path, from_url
from ingest.workers import BIBTEX, ParseJob, ParseSupervisor, WorkerLimits


def load_references(
    path: Path, roots: list[Path] = (), limits: WorkerLimits | None = None
) -> tuple[list[Source], list[tuple[str, str]]]:
    """Sources for every entry of a BibTeX or Zotero export, plus (entry, reason) for the rest.
    Attached files are read inside the export's folder and `roots` only. A BibTeX file is parsed in a
    parse worker under `limits` (default: the default `parse.*` limits)."""
    path = Path(path).expanduser()
    text = read_export(path)
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        references, bad = zotero.parse_csl_json(text, path.name)
    else:
        references, bad = parse_bibtex_bounded(path, limits)
    sources: list[Source] = []
    for reference in references:
        try:
            sources.append(to_source(reference, path.resolve().parent, list(roots)))
        except SourceError as err:
            bad.append((f"{path.name}: {reference.citekey or '(no citekey)'}", str(err)))
    return dedupe(sources), bad


def parse_bibtex_bounded(
    path: Path, limits: WorkerLimits | None = None
) -> tuple[list[Reference], list[tuple[str, str]]]:
    """`ingest.bibtex.parse_bibtex` of the file at `path`, run in a parse worker under `limits` (default: the
    default `parse.*` settings). A file that takes too long or needs too much memory raises
    `ReferenceError` saying which bound it crossed."""
    limits = limits or WorkerLimits(ParseLimits())
    with ParseSupervisor(limits, workers=1) as supervisor:
        (outcome,) = list(supervisor.run([ParseJob(str(path.absolute()), BIBTEX)]))
    if outcome.error is None:
        return outcome.document
    if outcome.limit == "time":
        reason = f"took longer than {limits.timeout_s:g} s to read (parse.timeout_s)"
    elif outcome.limit == "memory":
        reason = f"needed more than {limits.max_memory_mb} MB of memory to read (parse.max_memory_mb)"
    elif outcome.limit == "crash":  # CPython does not always survive running out of address space
        reason = f"could not be read within parse.max_memory_mb ({limits.max_memory_mb} MB): {outcome.error}"
    else:  # the reader itself failed: its reason, not a bound
        reason = f"could not be read ({outcome.error})"
    raise ReferenceError(f"the .bib file {path.name} {reason}: nothing in it was imported")


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
