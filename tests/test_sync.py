"""How a Cove home catches up with a shared store: the catalog mirror (fast unit tests over a stand-in
store; the real Chroma server is in test_servers.py) and the store's generation with embedded Chroma."""

from __future__ import annotations

from cove.catalog import STATUS_FAILED, STATUS_OK, STATUS_PENDING, Catalog, DocumentRecord
from cove.sync import NOT_IN_SHARED_STORE, pull_documents


class SharedStoreStandIn:
    """The two calls `pull_documents` makes of a shared ChunkStore."""

    shared = True

    def __init__(self, records: list[dict], generation: str = "g1") -> None:
        self.records = records
        self.token = generation
        self.reads = 0

    def generation(self) -> str:
        return self.token

    def document_records(self) -> list[dict]:
        self.reads += 1
        return self.records


def record(doc_id: str, status: str = STATUS_OK, **extra) -> DocumentRecord:
    return DocumentRecord(
        doc_id=doc_id, source=f"{doc_id}.pdf", location=f"/papers/{doc_id}.pdf", status=status, **extra
    )


def test_the_shared_store_decides_what_is_indexed(tmp_path):
    catalog = Catalog(tmp_path / "library.sqlite")
    catalog.upsert(record("mine-only"))  # indexed into another store before
    catalog.upsert(record("failed-here", STATUS_FAILED, error="HTTP 503"))
    catalog.upsert(record("interrupted", STATUS_PENDING))
    catalog.upsert(record("never-published", STATUS_FAILED, error="not a PDF"))
    published = [
        record("failed-here", chunks=40, title="Indexed elsewhere").to_dict(),
        record("from-elsewhere", chunks=12).to_dict() | {"status": STATUS_PENDING},  # published = indexed
    ]
    store = SharedStoreStandIn(published)
    pull_documents(catalog, store)

    docs = {d.doc_id: d for d in catalog.all()}
    assert docs["mine-only"].status == STATUS_PENDING and docs["mine-only"].error == NOT_IN_SHARED_STORE
    assert docs["failed-here"].status == STATUS_OK and docs["failed-here"].title == "Indexed elsewhere"
    assert docs["from-elsewhere"].status == STATUS_OK and docs["from-elsewhere"].chunks == 12
    assert docs["interrupted"].status == STATUS_PENDING  # the next ingest here redoes it
    assert docs["never-published"].status == STATUS_FAILED and docs["never-published"].error == "not a PDF"

    pull_documents(catalog, store)
    assert store.reads == 1, "nothing changed: the records are not read again"
    store.token, store.records = "g2", []
    pull_documents(catalog, store)
    assert store.reads == 2 and not [d for d in catalog.all() if d.status == STATUS_OK]
    catalog.close()


def test_embedded_store_is_not_mirrored(tmp_path):
    catalog = Catalog(tmp_path / "library.sqlite")
    catalog.upsert(record("mine"))
    store = SharedStoreStandIn([])
    store.shared = False
    pull_documents(catalog, store)
    assert store.reads == 0 and catalog.get("mine").status == STATUS_OK
    catalog.close()


def test_store_generation_changes_on_every_mark(tmp_path):
    from cove.settings import load_settings
    from cove.store import ChunkStore

    store = ChunkStore(load_settings({"home": str(tmp_path / "home"), "store": {"chroma_url": ""}}))
    assert store.generation() == "" and not store.shared
    tokens = {store.mark_changed() for _ in range(5)}
    assert len(tokens) == 5 and store.generation() in tokens
    store.put_document_record(record("a", chunks=3).to_dict())
    assert [r["doc_id"] for r in store.document_records()] == ["a"]
    store.delete_document("a")
    assert store.document_records() == []


class SharedView:
    """A real embedded ChunkStore, read the way `pull_documents` reads a shared one."""

    shared = True

    def __init__(self, store) -> None:
        self.store = store

    def generation(self) -> str:
        return self.store.generation()

    def document_records(self) -> list:
        return self.store.document_records()


def test_hostile_records_in_a_shared_store_are_skipped_or_neutralised(tmp_path, caplog):
    """Anyone who can write to a shared Chroma can publish records: on a real (embedded) Chroma,
    malformed ones are skipped with a warning, and no record says where a file lives here."""
    from cove.settings import load_settings
    from cove.store import ChunkStore
    from ingest.copies import document_file

    settings = load_settings({"home": str(tmp_path / "home"), "store": {"chroma_url": ""}})
    store = ChunkStore(settings)
    good = record("arxiv-1706.03762", chunks=40, title="Attention Is All You Need", kind="pdf").to_dict()
    good["content_hash"] = "a" * 64
    hostile = {
        "shadow": {"location": "/etc/shadow", "kind": "text"},  # kept, but its location is dropped
        "../../etc/passwd": {},
        "huge-title": {"title": "A" * 1_000_000},
        "wrong-types": {"chunks": "40", "authors": "Vaswani"},
        "not-a-time": {"ingested_at": float("nan")},
        "odd-kind": {"kind": "<script>"},
        "odd-status": {"status": {"$ne": ""}},
        "path-as-hash": {"content_hash": "../../../etc/shadow"},
        "authors-bomb": {"authors": ["x" * 300] * 3},
    }
    store.put_document_record(good)
    for doc_id, changes in hostile.items():
        store.put_document_record({**good, "doc_id": doc_id, **changes})
    where = {"collection": settings.collection_name, "kind": "document"}
    store.meta.upsert(ids=["junk-1", "junk-2"], embeddings=[[1.0], [1.0]], documents=["{not json", "[1, 2]"],
                      metadatas=[where, where])  # fmt: skip
    store.mark_changed()

    catalog = Catalog(settings.catalog_path)
    mine = record("arxiv-1706.03762")  # this home's own record of the paper, with its own location
    catalog.upsert(mine)
    with caplog.at_level("WARNING"):
        pull_documents(catalog, SharedView(store))
    docs = {d.doc_id: d for d in catalog.all()}
    catalog.close()

    assert set(docs) == {"arxiv-1706.03762", "shadow"}
    assert docs["arxiv-1706.03762"].status == STATUS_OK and docs["arxiv-1706.03762"].chunks == 40
    assert docs["arxiv-1706.03762"].location == mine.location  # the store's word never replaces it
    assert docs["shadow"].location == "" and docs["shadow"].kind == "text"
    assert document_file(docs["shadow"], settings) is None  # nothing this home copied: nothing served
    skipped = [r.getMessage() for r in caplog.records if "skipped a document record" in r.getMessage()]
    assert len(skipped) == len(hostile) - 1 + 2, skipped  # every malformed record, and both non-objects
