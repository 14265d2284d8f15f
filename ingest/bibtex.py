"""BibTeX entries (a `.bib` file, also Better BibTeX exports from Zotero) as `Reference`s.

Parsed with bibtexparser; what Cove reads of an entry:

- the citekey;
- title, author, year (or date);
- an arXiv id: `eprint` with `archivePrefix`/`eprinttype` arXiv (or an eprint that is one), or
  "arXiv:…" in `journal`, `journaltitle`, `note`, `howpublished`, `number`;
- `doi`, `url`;
- `file`: attached files, as JabRef and Better BibTeX write them ("Description:path:type", several
  separated by ";"), or plain paths.

Blocks the parser cannot read are reported as bad entries (the first `MAX_BAD_BLOCKS` one by one,
the rest in one line); the rest are used.

A `.bib` is a file from elsewhere: it is read in a parse worker (`ingest.workers`, job kind `BIBTEX`)
under `parse.timeout_s` and `parse.max_memory_mb`, like a PDF. bibtexparser itself is linear in the
input (2 MB of ``@article{x,`` lines, 174,762 broken blocks: 3 s and 440 MB); what cost minutes and
gigabytes was one report row and one log warning per broken block.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ingest.refentries import Reference, arxiv_id_in, clean_doi, plain, read_export, split_names

ARXIV_HINT_FIELDS = ("journal", "journaltitle", "note", "howpublished", "number", "volume")
MAX_BAD_BLOCKS = 20  # unreadable blocks reported one by one; a damaged file has thousands, counted in one row


def read_bibtex(path: Path) -> tuple[list[Reference], list[tuple[str, str]]]:
    """`parse_bibtex` of a file, as a parse worker runs it."""
    # bibtexparser logs a warning per unreadable block (27 MB of stderr for the 2 MB file above), and
    # logging again while it is out of memory; the blocks are reported in the result instead, bounded.
    logging.getLogger("bibtexparser").setLevel(logging.CRITICAL + 1)  # its modules log as bibtexparser.*
    return parse_bibtex(read_export(path), path.name)


def parse_bibtex(text: str, name: str) -> tuple[list[Reference], list[tuple[str, str]]]:
    """(references, [(entry, reason)]) for a BibTeX file's text; `name` labels bad entries."""
    import bibtexparser

    library = bibtexparser.parse_string(text)
    references = [_reference(entry.key, {k.lower(): str(v.value) for k, v in entry.fields_dict.items()})
                  for entry in library.entries]  # fmt: skip
    bad = []
    failed = library.failed_blocks
    for block in failed[:MAX_BAD_BLOCKS]:
        first_line = (getattr(block, "raw", "") or "").strip().splitlines()[:1]
        where = f"line {_line(block)}" + (f": {first_line[0][:60]}" if first_line else "")
        bad.append((f"{name}: {where}", f"not a readable BibTeX entry ({_error_text(block)})"))
    if len(failed) > MAX_BAD_BLOCKS:
        rest = len(failed) - MAX_BAD_BLOCKS
        bad.append((
            f"{name}: {rest:,} more blocks",
            f"not readable BibTeX entries either (from line {_line(failed[MAX_BAD_BLOCKS])} on; "
            f"{len(failed):,} in all): is the file damaged, or not BibTeX?",
        ))  # fmt: skip
    return references, bad


def _line(block) -> str:
    """The 1-based line a block starts on (bibtexparser counts from 0)."""
    line = getattr(block, "start_line", None)
    return str(line + 1) if isinstance(line, int) else "?"


def _reference(key: str, fields: dict[str, str]) -> Reference:
    return Reference(
        citekey=key.strip(),
        title=plain(fields.get("title", "")),
        authors=split_names(plain(fields.get("author", ""))),
        year=(fields.get("year") or fields.get("date", ""))[:4],
        arxiv_id=_arxiv_id(fields),
        doi=clean_doi(plain(fields.get("doi", ""))),
        urls=[u for u in plain(fields.get("url", "")).split() if u.lower().startswith(("http://", "https://"))],
        files=file_paths(fields.get("file", "")),
    )


def _arxiv_id(fields: dict[str, str]) -> str:
    eprint = plain(fields.get("eprint", ""))
    prefix = plain(fields.get("archiveprefix", "") or fields.get("eprinttype", "")).lower()
    if eprint and (prefix == "arxiv" or not prefix):
        found = arxiv_id_in(eprint)
        if found:
            return found
    for key in ARXIV_HINT_FIELDS:
        found = arxiv_id_in(plain(fields.get(key, "")))
        if found:
            return found
    return ""


def file_paths(value: str) -> list[str]:
    """Paths in a `file` field: "a.pdf", "Full Text:papers/a.pdf:application/pdf;Snapshot:b.html:text/html"."""
    paths = []
    for item in re.split(r"(?<!\\);", value.strip()):
        item = item.strip()
        if not item:
            continue
        parts = re.split(r"(?<!\\):", item)
        if len(parts) >= 3:  # Description:path:type (a Windows drive letter is escaped as C\:)
            item = ":".join(parts[1:-1])
        elif len(parts) == 2 and len(parts[0]) == 1:  # C:\papers\a.pdf
            item = ":".join(parts)
        paths.append(item.replace("\\:", ":").replace("\\;", ";").strip("{}"))
    return paths


def _error_text(block) -> str:
    error = getattr(block, "error", None)
    return str(error) or "cut off or malformed" if error else "malformed"
