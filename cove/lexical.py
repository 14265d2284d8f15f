"""The lexical (BM25) side of the index, persisted beside Chroma and kept in step with it.

Dense MiniLM vectors see at most 256 tokens of a chunk and blur exact terms ("warmup", "h = 8",
"WikiText-103"); BM25 sees every word, so the two are fused at query time (see `cove.retrieve`).

Consistency with the Chroma collection does not rely on every writer being careful: the store keeps
a *generation* token that every writer renews before and after it changes the collection (see
`cove.store.ChunkStore.mark_changed`). The BM25 index records the token it was built from; whenever
the two differ (a finished ingest, a crash mid-ingest, another instance writing to a shared Chroma
server), the BM25 index is rebuilt from the collection itself, which is the source of truth.
Rebuilding ~1,000 chunks takes well under a second; `benchmarks/scale_bench.py` measures 100k+.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from cove import text as tx

# Bump when the tokenizer changes (cove.text.index_form, stop words, stemmer): stored BM25 indexes
# are then rebuilt.
TOKENIZER_VERSION = 3
GREEK = tx.GREEK
STOP_WORDS = tx.STOP_WORDS
normalize = tx.index_form


def lexical_text(text: str, metadata: dict) -> str:
    """What BM25 indexes for a chunk: paper title, file name and section ahead of the text, so a
    passage can be found by the name of the paper it is in (like the header of `embedding_text`)."""
    source = str(metadata.get("source", "")).rsplit("/", 1)[-1].rsplit(".", 1)[0]
    header = " ".join(str(metadata.get(key, "")) for key in ("title", "section"))
    return f"{header} {source}\n{text}"


def tokenize(texts: list[str], as_strings: bool = False):
    """bm25s tokens for texts or queries: normalised, lower-cased, English stop words dropped, stemmed."""
    import bm25s

    return bm25s.tokenize(
        [tx.index_form(t) for t in texts],
        stopwords=tx.STOP_WORDS,
        stemmer=tx.stemmer(),
        show_progress=False,
        return_ids=not as_strings,
    )


@dataclass
class LexicalHit:
    id: str
    score: float


class LexicalIndex:
    """A bm25s index of chunk texts, stored in `directory` with the chunk ids and a generation."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._retriever = None
        self._ids: list[str] = []
        self.generation: str | None = None
        self._lock = threading.Lock()
        self._load()

    # --- persistence -------------------------------------------------------------------------------
    @property
    def _meta_path(self) -> Path:
        return self.directory / "cove-meta.json"

    def _load(self) -> None:
        if not self._meta_path.exists():
            return
        import bm25s

        meta = json.loads(self._meta_path.read_text())
        if meta.get("tokenizer", 1) != TOKENIZER_VERSION:
            return  # built by an older tokenizer: generation None makes the next sync rebuild it
        self._ids = meta["ids"]
        self.generation = str(meta["generation"])
        if self._ids:
            self._retriever = bm25s.BM25.load(str(self.directory / "bm25"), show_progress=False)

    def rebuild(self, ids: list[str], texts: list[str], generation: str) -> None:
        """Replace the index with these chunks; written to a new folder, then swapped in.

        Folder names are unique per call: app instances sharing one home may rebuild at once."""
        import bm25s

        unique = f"{os.getpid()}-{threading.get_ident()}"
        tmp = self.directory.with_name(f"{self.directory.name}.tmp-{unique}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            (tmp / "bm25").mkdir(parents=True)
            retriever = None
            if ids:
                retriever = bm25s.BM25()
                retriever.index(tokenize(texts), show_progress=False)
                retriever.save(str(tmp / "bm25"), show_progress=False)
            meta = {"generation": generation, "ids": ids, "tokenizer": TOKENIZER_VERSION}
            (tmp / "cove-meta.json").write_text(json.dumps(meta))
        except BaseException:  # a full disk (or Ctrl-C): no half-written folder is left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with self._lock:
            old = self.directory.with_name(f"{self.directory.name}.old-{unique}")
            try:
                if self.directory.exists():
                    self.directory.rename(old)
                tmp.rename(self.directory)
            except OSError:  # another process swapped its copy in at the same moment: ours is not needed
                shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            self._retriever, self._ids, self.generation = retriever, list(ids), generation

    # --- search ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def search(self, query: str, k: int = 20, doc_ids: set[str] | None = None) -> list[LexicalHit]:
        """BM25 top-k chunks; with `doc_ids`, only chunks of those documents."""
        import numpy as np

        with self._lock:
            if self._retriever is None or not self._ids:
                return []
            mask = None
            if doc_ids is not None:
                mask = np.array([chunk_doc_id(i) in doc_ids for i in self._ids], dtype=np.float32)
                k = min(k, int(mask.sum()))
                if k == 0:
                    return []
            tokens = [t for t in tokenize([query], as_strings=True)[0] if t in self._retriever.vocab_dict]
            if not tokens:
                return []
            k = min(k, len(self._ids))
            docs, scores = self._retriever.retrieve([tokens], k=k, show_progress=False, n_threads=1, weight_mask=mask)
        return [
            LexicalHit(self._ids[int(i)], float(s)) for i, s in zip(docs[0], scores[0], strict=True) if float(s) > 0
        ]


def chunk_doc_id(chunk_id: str) -> str:
    """Chunk ids are '<doc_id>:<index>' (see ingest.chunk)."""
    return chunk_id.rsplit(":", 1)[0]


def lexical_dir(settings) -> Path:
    """Where the BM25 index of the current index identity lives."""
    return settings.home_dir / "index" / "lexical" / settings.collection_name


def sync_lexical_index(
    settings, store, index: LexicalIndex | None = None, generation: str | None = None
) -> LexicalIndex:
    """The BM25 index, rebuilt from the vector store if it lags behind the store's generation: in
    this process (`LexicalIndex`), or on the PostgreSQL server of `lexical.postgres_url`."""
    wanted = store.generation() if generation is None else generation
    server = getattr(store, "lexical_server", None)
    if server is not None:
        server.sync(store, wanted)
        return server
    index = index or LexicalIndex(lexical_dir(settings))
    if index.generation != wanted:
        ids, texts, metadatas = store.all_chunks()
        index.rebuild(ids, [lexical_text(t, m) for t, m in zip(texts, metadatas, strict=True)], wanted)
    return index


def drop_other_lexical_indexes(settings) -> None:
    """Remove BM25 indexes of other index identities (the vector side drops its collections too)."""
    root = settings.home_dir / "index" / "lexical"
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name != settings.collection_name:
            shutil.rmtree(path, ignore_errors=True)
