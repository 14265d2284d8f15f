"""Keeping one Cove home in step with its chunk store, embedded or on a shared Chroma server.

A Cove home holds two things derived from the chunk store: the BM25 index (`cove.lexical`) and the
catalog's list of indexed documents (`cove.catalog`). With an embedded Chroma the home is the only
writer, so its catalog is the truth. With a Chroma server, other instances (another app, an ingest
job on another machine) write too; the store's generation token tells every instance when to catch
up, and the document records published beside the chunks tell it what the library now holds.

Catching up costs one small request per search when nothing changed, and a BM25 rebuild from the
collection when something did (measured in `benchmarks/scale_bench.py`).

A shared store is not trusted: anyone who can write to it can publish any record. Every field of a
published record is checked (types, lengths, the document id's shape); a record that fails is
skipped with a warning. And a record never says where a document lives on *this* machine: its
`location` is ignored (this home keeps its own, or none), so no record can make an instance open
or serve a file or fetch a URL it names; the page route serves only the copies this home made.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import fields

from cove.catalog import STATUS_FAILED, STATUS_OK, STATUS_PENDING, Catalog, DocumentRecord
from cove.lexical import LexicalIndex, sync_lexical_index
from cove.settings import CoveSettings
from cove.untrusted import SAFE_DOC_ID

log = logging.getLogger("cove.sync")

PULLED_KEY = "shared_generation"  # the store generation the catalog last mirrored

NOT_IN_SHARED_STORE = "not in the Chroma server's collection; run `cove ingest` on it again to add it there"


def sync_home(settings: CoveSettings, catalog: Catalog, store, lexical: LexicalIndex | None = None) -> LexicalIndex:
    """Bring the catalog (shared stores only) and the BM25 index up to the store's generation (an
    embedded store another process wrote to is reopened first, see `ChunkStore.catch_up`)."""
    generation = store.catch_up()
    pull_documents(catalog, store, generation)
    return sync_lexical_index(settings, store, lexical, generation)


def pull_documents(catalog: Catalog, store, generation: str | None = None) -> None:
    """Mirror a shared store's published document records into the catalog, if they changed."""
    if not store.shared:
        return
    generation = store.generation() if generation is None else generation
    if catalog.get_meta(PULLED_KEY) != generation:
        records = [r for r in (shared_record(data) for data in store.document_records()) if r is not None]
        mirror_documents(catalog, records)
        catalog.set_meta(PULLED_KEY, generation)


def mirror_documents(catalog: Catalog, shared: list[DocumentRecord]) -> None:
    """Make the catalog's indexed documents those of the shared store.

    A published record wins over the local one (another instance indexed or re-indexed it). A local
    document the store does not hold (this home used another store before, or another instance
    rebuilt the index) is kept, but no longer counted as indexed, with a reason."""
    published = {r.doc_id: r for r in shared}
    with catalog.transaction():
        locals_by_id = {local.doc_id: local for local in catalog.all()}
        for local in locals_by_id.values():
            if local.doc_id not in published and local.status == STATUS_OK:
                local.status, local.error = STATUS_PENDING, NOT_IN_SHARED_STORE
                catalog.upsert(local)
        for record in published.values():
            local = locals_by_id.get(record.doc_id)
            record.location = local.location if local else ""  # where it lives here: never the store's word
            catalog.upsert(record)


# What a published record may hold: (type, longest length) per field; "location" is never taken.
_TEXT_LIMITS = {
    "source": 2000,
    "kind": 16,
    "title": 500,
    "year": 8,
    "version": 8,
    "url": 2000,
    "topic": 200,
    "arxiv_id": 40,
    "content_hash": 64,
    "index_id": 64,
    "error": 2000,
    "warnings": 4000,
}
_KINDS = {"", "pdf", "html", "markdown", "text"}
_HEX = re.compile(r"[0-9a-f]*")
_ARXIV_ID = re.compile(r"[A-Za-z0-9./-]*")
_MAX_COUNT = 10_000_000


class BadRecord(ValueError):
    """A published document record that does not have the shape Cove writes."""


def shared_record(data: object) -> DocumentRecord | None:
    """A published record as a catalog record, or None (with a warning) when any field is off."""
    try:
        return _validated(data)
    except BadRecord as err:
        doc_id = data.get("doc_id") if isinstance(data, dict) else None
        shown = doc_id[:80] if isinstance(doc_id, str) else "?"
        log.warning("skipped a document record from the shared store (doc_id %r): %s", shown, err)
        return None


def _validated(data: object) -> DocumentRecord:
    if not isinstance(data, dict):
        raise BadRecord(f"not an object but {type(data).__name__}")
    doc_id = data.get("doc_id")
    if not isinstance(doc_id, str) or not SAFE_DOC_ID.fullmatch(doc_id):
        raise BadRecord("doc_id missing or not of the form [A-Za-z0-9][A-Za-z0-9_.:-]*")
    if data.get("status", STATUS_OK) not in (STATUS_OK, STATUS_PENDING, STATUS_FAILED):
        raise BadRecord("status is not one Cove writes")  # published means indexed: it becomes "ok"
    values: dict = {"doc_id": doc_id, "location": "", "status": STATUS_OK}
    for name, limit in _TEXT_LIMITS.items():
        value = data.get(name, "")
        if not isinstance(value, str) or len(value) > limit:
            raise BadRecord(f"{name} is not a string of at most {limit} characters")
        values[name] = value
    if values["kind"] not in _KINDS:
        raise BadRecord(f"unknown kind {values['kind'][:16]!r}")
    if not _HEX.fullmatch(values["content_hash"]) or not _HEX.fullmatch(values["index_id"]):
        raise BadRecord("content_hash and index_id must be lowercase hex")
    if not _ARXIV_ID.fullmatch(values["arxiv_id"]):
        raise BadRecord("arxiv_id has characters an arXiv id does not")
    values["authors"] = _authors(data.get("authors", []))
    for name in ("pages", "chunks"):
        value = data.get(name, 0)
        if type(value) is not int or not 0 <= value <= _MAX_COUNT:
            raise BadRecord(f"{name} is not a count")
        values[name] = value
    for name in ("ingested_at", "updated_at"):
        value = data.get(name, 0.0)
        if type(value) not in (int, float) or not math.isfinite(value):
            raise BadRecord(f"{name} is not a time")
        values[name] = float(value)
    known = {f.name for f in fields(DocumentRecord)}
    return DocumentRecord(**{k: v for k, v in values.items() if k in known})


def _authors(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > 200:
        raise BadRecord("authors is not a list of at most 200 names")
    if not all(isinstance(name, str) and len(name) <= 200 for name in value):
        raise BadRecord("an author is not a name of at most 200 characters")
    return list(value)


def library_documents(settings: CoveSettings) -> list[DocumentRecord]:
    """The catalog's documents, caught up with a shared store first (`cove library`, the app)."""
    catalog = Catalog(settings.catalog_path)
    try:
        if settings.store.chroma_url:
            from cove.store import ChunkStore

            pull_documents(catalog, ChunkStore(settings))
        return catalog.all()
    finally:
        catalog.close()
