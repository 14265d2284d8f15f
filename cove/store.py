"""The chunk store: a Chroma collection of chunk texts, vectors and citation metadata.

One collection per index identity (``cove_chunks_<hash>``, see `CoveSettings.index_id`), so chunks
from two embedding models or chunk sizes can never be mixed in one search. Writing a document is
"delete its old chunks, then upsert the new ones": chunk ids are deterministic, so repeating the
operation after an interruption converges to the same state, with no duplicates and no orphans.

Chroma runs embedded (files under ``home``) or as a server (``store.chroma_url``, e.g. a shared
``chroma run``). Beside the chunks, a small ``cove_meta`` collection holds what several Cove
instances must agree on, so it lives with the chunks rather than in one instance's home:

- the *generation* of each chunk collection: a fresh random token written before and after every
  change, so any reader can tell that its BM25 copy (or its catalog) is stale;
- the *document records* of a collection (title, pages, chunks, ...): the shared library list.

A server that cannot be reached (stopped, restarting) is retried a few times, then reported as
`StoreUnavailable` with the URL and what to do, never as a raw HTTP traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from cove.settings import CoveSettings

WRITE_BATCH = 500  # below Chroma's max batch size on every backend
META_COLLECTION = "cove_meta"
_META_VECTOR = [1.0]  # Chroma wants a vector per record; meta records are only ever fetched by id


class StoreUnavailable(RuntimeError):
    """The Chroma server cannot be reached (after retries)."""


@dataclass
class StoredChunk:
    id: str
    text: str
    metadata: dict[str, Any]
    score: float = 0.0  # cosine similarity for query results
    embedding: Any = None  # the stored vector, when asked for


def _is_connection_error(err: BaseException) -> bool:
    import httpx

    if isinstance(err, httpx.TransportError):  # refused, reset, timed out, DNS
        return True
    return isinstance(err, ValueError) and "Could not connect to a Chroma server" in str(err)


def _remote(method):
    """Retry a store call after connection errors, then raise `StoreUnavailable` with a plain reason.

    Every store call is idempotent (upserts and deletes by id), so repeating one is safe."""

    @functools.wraps(method)
    def wrapper(self: ChunkStore, *args, **kwargs):
        return self._with_retries(lambda: method(self, *args, **kwargs))

    return wrapper


def connect(settings: CoveSettings):
    """A Chroma client: embedded under ``home``, or HTTP to ``store.chroma_url``."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    url = settings.store.chroma_url
    if not url:
        settings.chroma_dir.mkdir(parents=True, exist_ok=True)
        _forget_cached_system(settings.chroma_dir)
        return chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
    parsed = urlparse(url if "://" in url else f"http://{url}")
    headers = {"Authorization": f"Bearer {settings.store.chroma_token}"} if settings.store.chroma_token else None
    client = chromadb.HttpClient(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or (443 if parsed.scheme == "https" else 8000),
        ssl=parsed.scheme == "https",
        headers=headers,
        settings=chroma_settings,
    )
    import httpx

    # chromadb's HTTP session waits forever by default; a hung server must not hang an answer.
    client._server._session.timeout = httpx.Timeout(settings.store.timeout_s)
    return client


def _forget_cached_system(path) -> None:
    """Make the next embedded client load the store from disk instead of sharing a cached one.

    chromadb keeps one client state per path and process, and its vector index lives in memory: a
    process that opened the store before another process wrote to it searches the old vectors
    forever (the new chunks' texts are visible, their vectors are not). Each `ChunkStore` therefore
    loads its own state; clients opened earlier keep theirs (nothing is closed under them)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient._identifier_to_system.pop(str(path), None)


class ChunkStore:
    def __init__(self, settings: CoveSettings) -> None:
        self.settings = settings
        self.client = None
        # Generations whose data this store's embedded client has loaded or written itself; any
        # other generation was written by another process, and the client must be reopened.
        self._known_generations: set[str] = set()
        self._lexical_server = None
        self._with_retries(self._open)

    @property
    def lexical_server(self):
        """The lexical index on PostgreSQL (`lexical.postgres_url`), written with the chunks; None if unset."""
        url = self.settings.lexical.postgres_url
        if url and self._lexical_server is None:
            from cove.lexical_pg import PostgresLexicalIndex

            lexical = self.settings.lexical
            self._lexical_server = PostgresLexicalIndex(url, self.settings.collection_name, lexical.timeout_s)
        return self._lexical_server

    def _open(self) -> None:
        self.client = connect(self.settings)
        self.collection = self.client.get_or_create_collection(
            name=self.settings.collection_name,
            metadata={"hnsw:space": "cosine", **{k: str(v) for k, v in self.settings.index_identity().items()}},
            embedding_function=None,
        )
        self.meta = self.client.get_or_create_collection(name=META_COLLECTION, embedding_function=None)
        if not self.shared:
            self._known_generations = {self._read_generation()}

    @_remote
    def catch_up(self) -> str:
        """The collection's generation, after reopening an embedded store that another process changed
        since this one loaded it (a Chroma server needs nothing: it serves every client the same data)."""
        generation = self._read_generation()
        if self.shared or generation in self._known_generations:
            return generation
        self._open()
        return self._read_generation()

    @property
    def location(self) -> str:
        return self.settings.store.chroma_url or str(self.settings.chroma_dir)

    @property
    def shared(self) -> bool:
        """True for a Chroma server, which other Cove instances may write to as well."""
        return bool(self.settings.store.chroma_url)

    def _with_retries(self, call):
        cfg = self.settings.store
        for attempt in range(cfg.retries + 1):
            try:
                return call()
            except Exception as err:
                if not _is_connection_error(err):
                    raise
                if attempt == cfg.retries:
                    raise StoreUnavailable(
                        f"the Chroma server at {cfg.chroma_url} is not reachable ({err}); start it (`chroma run`) "
                        "or fix store.chroma_url, then run the command again: nothing finished is lost"
                    ) from err
                time.sleep(cfg.retry_backoff_s * 2**attempt)

    # --- writing -----------------------------------------------------------------------------------
    @_remote
    def replace_document(
        self, doc_id: str, ids: list[str], texts: list[str], embeddings: Any, metadatas: list[dict[str, Any]]
    ) -> None:
        self.delete_document(doc_id)
        for start in range(0, len(ids), WRITE_BATCH):
            end = start + WRITE_BATCH
            self.collection.upsert(
                ids=ids[start:end],
                documents=texts[start:end],
                embeddings=[list(map(float, v)) for v in embeddings[start:end]],
                metadatas=metadatas[start:end],
            )
        if self.lexical_server is not None:
            self.lexical_server.replace_document(doc_id, ids, texts, metadatas)

    @_remote
    def delete_document(self, doc_id: str) -> None:
        self.collection.delete(where={"doc_id": doc_id})
        self.meta.delete(ids=[self._record_id(doc_id)])
        if self.lexical_server is not None:
            self.lexical_server.delete_document(doc_id)

    @_remote
    def drop_other_indexes(self) -> list[str]:
        """Delete collections of other index identities (after settings changed). Returns their names."""
        prefix = self.settings.store.collection_prefix + "_"
        dropped = []
        for collection in self.client.list_collections():
            name = collection if isinstance(collection, str) else collection.name
            if name.startswith(prefix) and name != self.settings.collection_name:
                self.client.delete_collection(name)
                self.meta.delete(where={"collection": name})
                dropped.append(name)
        if self.lexical_server is not None:  # the same identities' rows in PostgreSQL
            self.lexical_server.drop_collections(dropped)
        return dropped

    @_remote
    def reset(self) -> None:
        """Empty this index (``--rebuild``)."""
        self.client.delete_collection(self.settings.collection_name)
        self.meta.delete(where={"collection": self.settings.collection_name})
        self._open()
        if self.lexical_server is not None:
            self.lexical_server.reset()

    # --- what several instances share: generation and document records ----------------------------
    def _generation_id(self) -> str:
        return f"{self.settings.collection_name}/generation"

    def _record_id(self, doc_id: str) -> str:
        return f"{self.settings.collection_name}/doc/{doc_id}"

    @_remote
    def generation(self) -> str:
        """The collection's change token ('' for a collection no writer has marked yet)."""
        return self._read_generation()

    def _read_generation(self) -> str:
        got = self.meta.get(ids=[self._generation_id()], include=["metadatas"])
        return str(got["metadatas"][0].get("token", "")) if got["ids"] else ""

    @_remote
    def mark_changed(self) -> str:
        """Give the collection a new generation token. Writers call it before *and* after a change:
        a reader that rebuilt its BM25 copy halfway through a write sees a newer token afterwards."""
        token = f"{time.time():.6f}-{uuid.uuid4().hex[:12]}"
        previous = self._read_generation() if self.lexical_server is not None else ""
        self.meta.upsert(
            ids=[self._generation_id()],
            embeddings=[_META_VECTOR],
            documents=[""],
            metadatas=[{"collection": self.settings.collection_name, "kind": "generation", "token": token}],
        )
        self._known_generations.add(token)
        if self.lexical_server is not None:
            self.lexical_server.advance(previous, token)
        return token

    @_remote
    def put_document_record(self, record: dict[str, Any]) -> None:
        """Publish a document's catalog record (after its chunks are stored) for other instances."""
        self.meta.upsert(
            ids=[self._record_id(record["doc_id"])],
            embeddings=[_META_VECTOR],
            documents=[json.dumps(record)],
            metadatas=[{"collection": self.settings.collection_name, "kind": "document"}],
        )

    @_remote
    def document_records(self) -> list[dict[str, Any]]:
        """Every published document record of this collection."""
        got = self.meta.get(
            where={"$and": [{"collection": self.settings.collection_name}, {"kind": "document"}]},
            include=["documents"],
        )
        return [record for record in map(_json_or_none, got["documents"]) if record is not None]

    # --- reading -----------------------------------------------------------------------------------
    @_remote
    def count(self, doc_id: str | None = None) -> int:
        if doc_id is None:
            return self.collection.count()
        return len(self.collection.get(where={"doc_id": doc_id}, include=[])["ids"])

    @_remote
    def ids_by_document(self) -> dict[str, int]:
        """Chunk counts per doc_id, read from the store itself (for consistency checks)."""
        counts: dict[str, int] = {}
        total = self.collection.count()
        for offset in range(0, total, 5000):
            batch = self.collection.get(include=["metadatas"], limit=5000, offset=offset)
            for meta in batch["metadatas"]:
                counts[meta["doc_id"]] = counts.get(meta["doc_id"], 0) + 1
        return counts

    @_remote
    def all_chunks(self) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        """Every chunk's id, text and metadata (to rebuild the lexical index from the source of truth)."""
        ids: list[str] = []
        texts: list[str] = []
        metadatas: list[dict[str, Any]] = []
        total = self.collection.count()
        for offset in range(0, total, 5000):
            batch = self.collection.get(include=["documents", "metadatas"], limit=5000, offset=offset)
            ids.extend(batch["ids"])
            texts.extend(batch["documents"])
            metadatas.extend(batch["metadatas"])
        return ids, texts, metadatas

    @_remote
    def document_chunks(self, doc_id: str) -> list[StoredChunk]:
        """Every chunk of one document, in chunk order (to show its pages' text)."""
        result = self.collection.get(where={"doc_id": doc_id}, include=["documents", "metadatas"])
        rows = zip(result["ids"], result["documents"], result["metadatas"], strict=True)
        chunks = [StoredChunk(id=i, text=t, metadata=m) for i, t, m in rows]
        return sorted(chunks, key=lambda c: c.metadata.get("chunk_index", 0))

    @_remote
    def get(self, ids: list[str], with_embeddings: bool = False) -> list[StoredChunk]:
        """Chunks by id, in the order asked (missing ids are left out)."""
        if not ids:
            return []
        include = ["documents", "metadatas"] + (["embeddings"] if with_embeddings else [])
        result = self.collection.get(ids=ids, include=include)
        vectors = result["embeddings"] if with_embeddings else [None] * len(result["ids"])
        by_id = {
            i: StoredChunk(id=i, text=t, metadata=m, embedding=v)
            for i, t, m, v in zip(result["ids"], result["documents"], result["metadatas"], vectors, strict=True)
        }
        return [by_id[i] for i in ids if i in by_id]

    @_remote
    def query(
        self, embedding: list[float], k: int = 5, where: dict | None = None, with_embeddings: bool = False
    ) -> list[StoredChunk]:
        """The k nearest chunks by cosine similarity (score = 1 - cosine distance)."""
        if self.collection.count() == 0:
            return []
        include = ["documents", "metadatas", "distances"] + (["embeddings"] if with_embeddings else [])
        result = self.collection.query(query_embeddings=[embedding], n_results=k, where=where, include=include)
        vectors = result["embeddings"][0] if with_embeddings else [None] * len(result["ids"][0])
        return [
            StoredChunk(id=i, text=t, metadata=m, score=1.0 - d, embedding=v)
            for i, t, m, d, v in zip(
                result["ids"][0],
                result["documents"][0],
                result["metadatas"][0],
                result["distances"][0],
                vectors,
                strict=True,
            )
        ]


def _json_or_none(text: object) -> object:
    """A published record's JSON, or None for text that is not JSON (a shared store is not trusted:
    `cove.sync` checks what the JSON holds)."""
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        logging.getLogger("cove.store").warning("skipped a document record that is not JSON")
        return None
