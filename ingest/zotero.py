"""Zotero's CSL JSON export (File > Export Library… > CSL JSON; or Better CSL JSON) as `Reference`s.

The citekey is `citation-key` (Better BibTeX, and newer Zotero versions), else the item `id` when
it is a key rather than a Zotero URL or number. arXiv preprints are recognised by their `number` or
`container-title` ("arXiv:2106.09685"), an arxiv.org `URL` or an arXiv DOI. Attached files: CSL
JSON has no standard field for them; Cove reads `file` (paths separated by ";", as in BibTeX) and
`attachments` (a list of paths or of objects with a `path`), relative to the export file. Zotero's
own Better BibTeX `.bib` export with "Export Files" gives `file` fields too: `cove ingest --zotero
export.bib` reads it with `ingest.bibtex`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ingest.bibtex import file_paths
from ingest.refentries import Reference, ReferenceError, arxiv_id_in, clean_doi

_KEY_LIKE = re.compile(r"^[A-Za-z][\w:.+\-]*$")


def parse_csl_json(text: str, name: str) -> tuple[list[Reference], list[tuple[str, str]]]:
    """(references, [(item, reason)]) for a CSL JSON export's text; `name` labels bad items."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReferenceError(f"{name} is not JSON ({err.msg} at line {err.lineno})") from err
    items = data.get("items", data) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ReferenceError(f"{name}: expected a CSL JSON list of items")
    references, bad = [], []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            bad.append((f"{name}: item {number}", "not a CSL JSON item (an object)"))
            continue
        references.append(_reference(item, number))
    return references, bad


def _reference(item: dict[str, Any], number: int) -> Reference:
    text = {k: v.strip() if isinstance(v, str) else v for k, v in item.items()}
    arxiv_id = ""
    for key in ("number", "container-title", "archive_location", "note", "URL"):
        value = text.get(key)
        arxiv_id = arxiv_id_in(value) if isinstance(value, str) else ""
        if arxiv_id:
            break
    url = text.get("URL") if isinstance(text.get("URL"), str) else ""
    return Reference(
        citekey=_citekey(text) or f"item-{number}",
        title=text.get("title") if isinstance(text.get("title"), str) else "",
        authors=_authors(text.get("author")),
        year=_year(text.get("issued")),
        arxiv_id=arxiv_id,
        doi=clean_doi(text.get("DOI") or "") if isinstance(text.get("DOI", ""), str) else "",
        urls=[url] if url.lower().startswith(("http://", "https://")) else [],
        files=_files(text),
    )


def _citekey(item: dict[str, Any]) -> str:
    for key in ("citation-key", "citationKey", "citekey"):
        if isinstance(item.get(key), str) and item[key]:
            return item[key]
    raw = item.get("id")
    raw = str(raw) if isinstance(raw, str | int) else ""
    return raw if _KEY_LIKE.match(raw) and "://" not in raw else ""


def _authors(value: Any) -> list[str]:
    names = []
    for person in value if isinstance(value, list) else []:
        if isinstance(person, dict):
            name = person.get("literal") or " ".join(str(person.get(k, "")) for k in ("given", "family"))
            if str(name).strip():
                names.append(" ".join(str(name).split()))
    return names


def _year(issued: Any) -> str:
    if isinstance(issued, dict):
        parts = issued.get("date-parts")
        if isinstance(parts, list) and parts and isinstance(parts[0], list) and parts[0]:
            return str(parts[0][0])[:4]
        if isinstance(issued.get("raw"), str):
            return issued["raw"][:4]
    return ""


def _files(item: dict[str, Any]) -> list[str]:
    files = file_paths(item["file"]) if isinstance(item.get("file"), str) else []
    for attachment in item.get("attachments") or []:
        path = attachment.get("path") if isinstance(attachment, dict) else attachment
        if isinstance(path, str) and path:
            files.append(path)
    return files
