"""The chunk store: a Chroma collection of chunk texts, vectors and citation metadata.

One collection per index identity (``cove_chunks_<hash>``, see `CoveSettings.index_id`), so chunks
from two embedding models or chunk sizes can never be mixed in one search. Writing a document is
"delete its old chunks, then upsert the new ones": chunk ids are deterministic, so repeating the
operation after an interruption converges to the same state, with no duplicates and no orphans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cove.settings import CoveSettings

WRITE_BATCH = 500  # below Chroma's max batch size on every backend


@dataclass
class StoredChunk:
    id: str
    text: str
    metadata: dict[str, Any]
    score: float = 0.0  # cosine similarity for query results
    embedding: Any = None  # the stored vector, when asked for


class ChunkStore:
    def __init__(self, settings: CoveSettings) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        settings.chroma_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.client = chromadb.PersistentClient(
            path=str(settings.chroma_dir), settings=ChromaSettings(anonymized_telemetry=False)
        )
        self.collection = self.client.get_or_create_collection(
            name=settings.collection_name,
            metadata={"hnsw:space": "cosine", **{k: str(v) for k, v in settings.index_identity().items()}},
            embedding_function=None,
        )

    # --- writing -----------------------------------------------------------------------------------
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

    def delete_document(self, doc_id: str) -> None:
        self.collection.delete(where={"doc_id": doc_id})

    def drop_other_indexes(self) -> list[str]:
        """Delete collections of other index identities (after settings changed). Returns their names."""
        prefix = self.settings.store.collection_prefix + "_"
        dropped = []
        for collection in self.client.list_collections():
            name = collection if isinstance(collection, str) else collection.name
            if name.startswith(prefix) and name != self.settings.collection_name:
                self.client.delete_collection(name)
                dropped.append(name)
        return dropped

    def reset(self) -> None:
        """Empty this index (``--rebuild``)."""
        self.client.delete_collection(self.settings.collection_name)
        self.__init__(self.settings)

    # --- reading -----------------------------------------------------------------------------------
    def count(self, doc_id: str | None = None) -> int:
        if doc_id is None:
            return self.collection.count()
        return len(self.collection.get(where={"doc_id": doc_id}, include=[])["ids"])

    def ids_by_document(self) -> dict[str, int]:
        """Chunk counts per doc_id, read from the store itself (for consistency checks)."""
        counts: dict[str, int] = {}
        total = self.collection.count()
        for offset in range(0, total, 5000):
            batch = self.collection.get(include=["metadatas"], limit=5000, offset=offset)
            for meta in batch["metadatas"]:
                counts[meta["doc_id"]] = counts.get(meta["doc_id"], 0) + 1
        return counts

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
