"""Hybrid retrieval: dense (Chroma + MiniLM) and lexical (BM25) candidates, fused, de-duplicated, diversified.

    query -> dense top-N  ┐
                          ├─ reciprocal rank fusion -> near-duplicates dropped -> MMR -> top-k hits
    query -> BM25 top-N   ┘

Reciprocal rank fusion (RRF) needs no score calibration between the two lists: a chunk's fused score
is the sum of 1 / (rrf_k + rank) over the lists it appears in. MMR then picks k hits greedily,
trading relevance against similarity to hits already picked, so five overlapping chunks of one page
do not crowd out the second page or paper that the answer also needs.

Every hit carries its cosine similarity to the query (also for BM25-only hits), which the answer
engine uses to decide whether the library covers the question at all.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cove.settings import CoveSettings

_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Hit:
    """One retrieved chunk with the evidence of why it was retrieved."""

    id: str
    text: str
    metadata: dict[str, Any]
    cosine: float = 0.0  # dense similarity to the query
    dense_rank: int | None = None  # 1-based rank in the dense list, if there
    lexical_rank: int | None = None  # 1-based rank in the BM25 list, if there
    fused: float = 0.0  # reciprocal-rank-fusion score
    vector: Any = field(default=None, repr=False)

    @property
    def doc_id(self) -> str:
        return self.metadata.get("doc_id", "")

    @property
    def page(self) -> int:
        return int(self.metadata.get("page_start", 0))

    @property
    def source(self) -> str:
        return self.metadata.get("source", "")

    @property
    def title(self) -> str:
        return self.metadata.get("title", "")


@dataclass
class RetrievalResult:
    query: str
    hits: list[Hit]
    seconds: float
    candidates: int  # distinct chunks seen before fusion picked the top k


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def rrf_fuse(rankings: list[list[str]], rrf_k: int = 60, weights: list[float] | None = None) -> dict[str, float]:
    """Reciprocal rank fusion of ranked id lists: {id: sum of weight / (rrf_k + rank)}."""
    weights = weights or [1.0] * len(rankings)
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (rrf_k + rank)
    return scores


def drop_near_duplicates(hits: list[Hit], threshold: float = 0.9) -> list[Hit]:
    """Keep the first of chunks whose word sets are nearly identical (e.g. one paper ingested twice)."""
    kept: list[tuple[Hit, set[str]]] = []
    for hit in hits:
        bag = words(hit.text)
        if all(jaccard(bag, other) < threshold for _, other in kept):
            kept.append((hit, bag))
    return [hit for hit, _ in kept]


def mmr_select(hits: list[Hit], k: int, lambda_: float = 0.75) -> list[Hit]:
    """Maximal marginal relevance over fused scores, with redundancy measured by vector cosine."""
    import numpy as np

    if len(hits) <= k:
        return hits
    top = max(h.fused for h in hits) or 1.0
    relevance = [h.fused / top for h in hits]
    vectors = np.array([h.vector for h in hits], dtype=np.float32)
    chosen: list[int] = []
    remaining = list(range(len(hits)))
    while remaining and len(chosen) < k:
        if chosen:
            redundancy = (vectors[remaining] @ vectors[chosen].T).max(axis=1)
        else:
            redundancy = np.zeros(len(remaining))
        scores = [lambda_ * relevance[i] - (1 - lambda_) * float(r) for i, r in zip(remaining, redundancy, strict=True)]
        best = remaining[int(np.argmax(scores))]
        chosen.append(best)
        remaining.remove(best)
    return [hits[i] for i in chosen]


class Retriever:
    """Hybrid search over the library under `settings.home`. Create once; thread-safe enough to share."""

    def __init__(self, settings: CoveSettings, embedder=None, store=None) -> None:
        from cove.catalog import Catalog
        from cove.embed import Embedder
        from cove.store import ChunkStore

        self.settings = settings
        self.embedder = embedder or Embedder(settings.embed)
        self.store = store or ChunkStore(settings)
        self.catalog = Catalog(settings.catalog_path)
        self._lexical = None
        # Searches take milliseconds; one at a time keeps the BM25 rebuild and name index simple to
        # share between the app's sessions (each runs in its own thread).
        self._lock = threading.Lock()
        self._names: tuple[str, dict[str, set[str]]] | None = None

    def close(self) -> None:
        self.catalog.close()

    @property
    def lexical(self):
        """The BM25 index, rebuilt first if ingest (here or elsewhere) changed the store since."""
        from cove.sync import sync_home

        self._lexical = sync_home(self.settings, self.catalog, self.store, self._lexical)
        return self._lexical

    def _add_missing(self, hits: dict[str, Hit], ids: list[str], query_vector) -> None:
        """Fetch chunks found by BM25 only, with their vectors, so every hit has a cosine."""
        import numpy as np

        for chunk in self.store.get([i for i in ids if i not in hits], with_embeddings=True):
            vector = np.asarray(chunk.embedding, dtype=np.float32)
            hits[chunk.id] = Hit(chunk.id, chunk.text, chunk.metadata, float(vector @ query_vector), vector=vector)

    def named_documents(self, query: str) -> set[str]:
        """Documents the query names ("the LoRA paper", "GPT-1") by a name in their title or file name."""
        from cove.lexical import tokenize

        names = self._document_names()
        found: set[str] = set()
        for token in tokenize([query], as_strings=True)[0]:
            found |= names.get(token, set())
        return found

    def _document_names(self) -> dict[str, set[str]]:
        """{name token: doc ids} from names in titles and file names ("LoRA", "GPT-2", "FlashAttention")."""
        from cove.lexical import lexical_text

        generation = self.lexical.generation  # catches the catalog up with a shared store, too
        if self._names is None or self._names[0] != generation:
            index: dict[str, set[str]] = {}
            for record in self.catalog.all():
                if record.status == "ok":
                    for token in name_tokens(lexical_text("", {"title": record.title, "source": record.source})):
                        index.setdefault(token, set()).add(record.doc_id)
            # A name shared by many documents ("GPT-2" in half the titles) singles out nothing.
            self._names = (generation, {t: d for t, d in index.items() if len(d) <= 2})
        return self._names[1]

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> RetrievalResult:
        """The top-k chunks for `query`. `mode`: "hybrid" (default), "dense" or "lexical"."""
        with self._lock:
            return self._search(query, k, mode)

    def _search(self, query: str, k: int | None, mode: str | None) -> RetrievalResult:
        import numpy as np

        cfg = self.settings.retrieve
        k = k or cfg.k
        mode = mode or cfg.mode
        started = time.perf_counter()
        self.store.catch_up()  # an ingest in another process since the last search: load its vectors
        query_vector = np.asarray(self.embedder.embed([query])[0], dtype=np.float32)

        rankings: list[list[str]] = []
        hits: dict[str, Hit] = {}
        if mode in ("hybrid", "dense"):
            dense = self.store.query(query_vector.tolist(), cfg.candidates, with_embeddings=True)
            for rank, chunk in enumerate(dense, start=1):
                hits[chunk.id] = Hit(
                    chunk.id, chunk.text, chunk.metadata, chunk.score, dense_rank=rank, vector=chunk.embedding
                )
            rankings.append([c.id for c in dense])
        if mode in ("hybrid", "lexical"):
            lexical = self.lexical.search(query, cfg.candidates)
            self._add_missing(hits, [h.id for h in lexical], query_vector)
            for rank, lex in enumerate(lexical, start=1):
                if lex.id in hits:
                    hits[lex.id].lexical_rank = rank
            rankings.append([h.id for h in lexical if h.id in hits])

        weights = [cfg.dense_weight, cfg.lexical_weight] if mode == "hybrid" else [1.0] * len(rankings)
        named = self.named_documents(query) if mode == "hybrid" else set()
        if named:
            # The question names a paper ("GPT-1", "LoRA"): rank that paper's chunks on their own as
            # well, so its best pages compete with chunks that merely share common words.
            where = {"doc_id": {"$in": sorted(named)}} if len(named) > 1 else {"doc_id": next(iter(named))}
            dense_named = self.store.query(query_vector.tolist(), cfg.candidates, where=where, with_embeddings=True)
            for chunk in dense_named:
                if chunk.id not in hits:
                    hits[chunk.id] = Hit(chunk.id, chunk.text, chunk.metadata, chunk.score, vector=chunk.embedding)
            lexical_named = [h.id for h in self.lexical.search(query, cfg.candidates, named)]
            self._add_missing(hits, lexical_named, query_vector)
            rankings += [[c.id for c in dense_named], [i for i in lexical_named if i in hits]]
            weights += [cfg.dense_weight, cfg.lexical_weight]
        for item, score in rrf_fuse(rankings, cfg.rrf_k, weights).items():
            hits[item].fused = score
        ranked = sorted(hits.values(), key=lambda h: h.fused, reverse=True)
        ranked = drop_near_duplicates(ranked)
        chosen = mmr_select(ranked[: cfg.candidates], k, cfg.mmr_lambda)
        return RetrievalResult(query, chosen, time.perf_counter() - started, len(hits))


_NAME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def _is_name(word: str) -> bool:
    if word.isupper():  # an acronym (GPT, BERT), not a shouted title (LOW-RANK ADAPTATION)
        return 2 <= len(word) <= 5
    return any(c.isupper() for c in word[1:]) or (any(c.isdigit() for c in word) and len(word) > 2)


def name_tokens(text: str) -> set[str]:
    """BM25 tokens of the name-like words in a title or file name: inner capitals (LoRA, LLaMA,
    FlashAttention, GPT) or letters with digits (GPT-2 -> gpt2). Plain words ("Attention", "models")
    are left out: they name no paper in particular."""
    from cove.lexical import normalize, tokenize

    words_ = [w for w in _NAME_LIKE.findall(normalize(text)) if _is_name(w)]
    if not words_:
        return set()
    return {t for tokens in tokenize(words_, as_strings=True) for t in tokens}


# --- follow-up questions --------------------------------------------------------------------------

_FOLLOW_UP_OPENERS = ("and ", "what about", "how about", "why", "also", "but ", "so ", "then ")
_REFERRING = {
    "it",
    "its",
    "they",
    "their",
    "them",
    "this",
    "that",
    "these",
    "those",
    "he",
    "she",
    "his",
    "her",
    "one",
    "ones",
    "former",
    "latter",
    "same",
    "there",
}


def looks_like_follow_up(question: str) -> bool:
    """A question that leans on the conversation: 'and its decoder?', 'why does it work?'."""
    lowered = question.strip().lower()
    tokens = _WORD.findall(lowered)
    return lowered.startswith(_FOLLOW_UP_OPENERS) or bool(_REFERRING & set(tokens)) or len(tokens) <= 3


def standalone_query(question: str, history: list[dict[str, str]] | None) -> str:
    """A retrieval query that stands on its own: a follow-up is joined to the user's previous question.

    Deterministic on purpose: a 135M model asked to rewrite questions drops or invents terms, which
    then retrieves the wrong pages. The previous question carries the topic ("the Transformer"),
    the follow-up carries what is new ("its decoder"); BM25 and the dense model both use both."""
    previous = [turn["content"] for turn in (history or []) if turn.get("role") == "user" and turn.get("content")]
    if not previous or not looks_like_follow_up(question):
        return question
    return f"{previous[-1].strip()} {question.strip()}"
