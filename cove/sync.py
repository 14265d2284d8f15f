"""Keeping one Cove home in step with its chunk store, embedded or on a shared Chroma server.

A Cove home holds two things derived from the chunk store: the BM25 index (`cove.lexical`) and the
catalog's list of indexed documents (`cove.catalog`). With an embedded Chroma the home is the only
writer, so its catalog is the truth. With a Chroma server, other instances (another app, an ingest
job on another machine) write too; the store's generation token tells every instance when to catch
up, and the document records published beside the chunks tell it what the library now holds.

Catching up costs one small request per search when nothing changed, and a BM25 rebuild from the
collection when something did (measured in `benchmarks/scale_bench.py`).
"""

from __future__ import annotations

from cove.catalog import STATUS_OK, STATUS_PENDING, Catalog, DocumentRecord
from cove.lexical import LexicalIndex, sync_lexical_index
from cove.settings import CoveSettings

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
        mirror_documents(catalog, [_record(r) for r in store.document_records()])
        catalog.set_meta(PULLED_KEY, generation)


def mirror_documents(catalog: Catalog, shared: list[DocumentRecord]) -> None:
    """Make the catalog's indexed documents those of the shared store.

    A published record wins over the local one (another instance indexed or re-indexed it). A local
    document the store does not hold (this home used another store before, or another instance
    rebuilt the index) is kept, but no longer counted as indexed, with a reason."""
    published = {r.doc_id: r for r in shared}
    with catalog.transaction():
        for local in catalog.all():
            if local.doc_id not in published and local.status == STATUS_OK:
                local.status, local.error = STATUS_PENDING, NOT_IN_SHARED_STORE
                catalog.upsert(local)
        for record in published.values():
            catalog.upsert(record)


def _record(data: dict) -> DocumentRecord:
    known = set(DocumentRecord.__dataclass_fields__)
    record = DocumentRecord(**{k: v for k, v in data.items() if k in known})
    record.status = STATUS_OK  # only indexed documents are published
    return record


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
