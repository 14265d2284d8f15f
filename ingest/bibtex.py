"""BibTeX entries (a `.bib` file, also Better BibTeX exports from Zotero) as `Reference`s.

Parsed with bibtexparser; what Cove reads of an entry:

- the citekey;
- title, author, year (or date);
- an arXiv id: `eprint` with `archivePrefix`/`eprinttype` arXiv (or an eprint that is one), or
  "arXiv:…" in `journal`, `journaltitle`, `note`, `howpublished`, `number`;
- `doi`, `url`;
- `file`: attached files, as JabRef and Better BibTeX write them ("Description:path:type", several
  separated by ";"), or plain paths.

Blocks the parser cannot read are reported as bad entries; the rest are used.
"""

from __future__ import annotations

import re

from ingest.refmanagers import Reference, arxiv_id_in, clean_doi, plain, split_names

ARXIV_HINT_FIELDS = ("journal", "journaltitle", "note", "howpublished", "number", "volume")


def parse_bibtex(text: str, name: str) -> tuple[list[Reference], list[tuple[str, str]]]:
    """(references, [(entry, reason)]) for a BibTeX file's text; `name` labels bad entries."""
    import bibtexparser

    library = bibtexparser.parse_string(text)
    references = [_reference(entry.key, {k.lower(): str(v.value) for k, v in entry.fields_dict.items()})
                  for entry in library.entries]  # fmt: skip
    bad = []
    for block in library.failed_blocks:
        first_line = (getattr(block, "raw", "") or "").strip().splitlines()[:1]
        where = first_line[0][:60] if first_line else f"line {getattr(block, 'start_line', '?')}"
        bad.append((f"{name}: {where}", f"not a readable BibTeX entry ({_error_text(block)})"))
    return references, bad


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
