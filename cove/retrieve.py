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

A question that names a paper ("the Transformer", "GPT-1", "LoRA") also ranks that paper's chunks on
their own, so its best pages compete with chunks that merely share common words. Papers are named by
the name-like words of their titles and file names and by their aliases (`cove.aliases`), learned at
ingest; a name several papers share singles out none.

Each search first calls `refresh()` once, under the retriever's lock: the BM25 copy and the name
index catch up with the store's generation (another process or instance may have ingested).
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cove import text as tx
from cove.settings import CoveSettings

_WORD = re.compile(r"[a-z0-9]+")
MAX_NAMED_RANKINGS = 3  # a question naming more papers than this names none in particular


@dataclass
class Hit:
    """One retrieved chunk with the evidence of why it was retrieved."""

    id: str
    text: str
    metadata: dict[str, Any]
    cosine: float = 0.0  # dense similarity to the query
    lexical_rank: int | None = None  # 1-based rank in the BM25 list, if there
    fused: float = 0.0  # reciprocal-rank-fusion score
    vector: Any = field(default=None, repr=False)
    rank: int = 0  # 1-based place in the final list

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

    @property
    def section(self) -> str:
        """The heading the chunk sits under ("" when none)."""
        return str(self.metadata.get("section") or "")


@dataclass
class RetrievalResult:
    query: str
    hits: list[Hit]
    seconds: float
    candidates: int  # distinct chunks seen before fusion picked the top k
    named: set[str] = field(default_factory=set)  # documents the query names


words = tx.words
jaccard = tx.jaccard


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
    """Hybrid search over the library under `settings.home`. Create once; share it between threads."""

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
        self._lock = threading.RLock()
        self._names: dict[str, set[str]] = {}
        self._aliases: dict[str, list[str]] = {}
        self._names_generation: str | None = None
        # The BM25 search runs on this thread while the dense one runs on the caller's: with the
        # lexical index on PostgreSQL and Chroma on a server, both mostly wait on a socket. One
        # long-lived thread keeps its PostgreSQL connection (connections are per thread).
        self._lexical_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cove-bm25")

    def close(self) -> None:
        if self._lexical is not None and hasattr(self._lexical, "close"):  # PostgreSQL: the thread's connection
            self._lexical_thread.submit(self._lexical.close)
        self._lexical_thread.shutdown(wait=True)
        self.catalog.close()

    # --- keeping up with the store -------------------------------------------------------------------
    def refresh(self) -> None:
        """Catch the BM25 copy and the document names up with the store's generation (cheap when
        nothing changed: one token read)."""
        from cove.sync import sync_home

        with self._lock:
            self._lexical = sync_home(self.settings, self.catalog, self.store, self._lexical)
            if self._names_generation != self._lexical.generation:
                self._names, self._aliases = self._document_names()
                self._names_generation = self._lexical.generation

    @property
    def lexical(self):
        """The BM25 index, caught up with the store first."""
        self.refresh()
        return self._lexical

    def _document_names(self) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
        """({name key: doc ids}, {doc id: aliases}) from the catalog's titles, file names and aliases.

        Keys (`name_key` forms) are the name-like words of titles and file names ("lora", "gpt2"),
        pairs of consecutive content words of titles ("key-value memories", "text degeneration") and
        aliases ("transformer", "ioi", "gpt1"). An alias is what a paper is *called*: where it is also a
        word of another paper's title ("GPT-2" in "... in GPT-2 small"), the alias wins."""
        from cove.aliases import alias_keys

        from_titles: dict[str, set[str]] = {}
        from_aliases: dict[str, set[str]] = {}
        aliases: dict[str, list[str]] = {}
        for record in self.catalog.all():
            if record.status != "ok":
                continue
            aliases[record.doc_id] = list(record.aliases)
            source = record.source.rsplit("/", 1)[-1].rsplit(".", 1)[0].replace("_", " ")
            for key in tx.name_words(f"{record.title} {source}") | title_phrases(record.title):
                from_titles.setdefault(key, set()).add(record.doc_id)
            for key in {tx.name_key(k) for alias in record.aliases for k in alias_keys(alias)}:
                from_aliases.setdefault(key, set()).add(record.doc_id)
        index = {**from_titles, **from_aliases}
        # A name shared by many documents ("GPT-2" in half the titles) singles out nothing.
        most = self.settings.retrieve.max_name_documents
        return {t: d for t, d in index.items() if len(d) <= most}, aliases

    def aliases(self, doc_id: str) -> list[str]:
        """The names a document is known by (learned at ingest)."""
        return self._aliases.get(doc_id, [])

    def named_documents(self, query: str) -> set[str]:
        """Documents the query names ("the LoRA paper", "GPT-1", "the Transformer")."""
        with self._lock:
            if self._names_generation is None:
                self.refresh()
            return match_names(query, self._names)

    # --- search ------------------------------------------------------------------------------------
    def search(self, query: str, k: int | None = None, mode: str | None = None) -> RetrievalResult:
        """The top-k chunks for `query`. `mode`: "hybrid" (default), "dense" or "lexical".

        Raises `cove.catalog.LibraryEmpty` when the catalog lists indexed documents but the store
        holds no chunk (an interrupted `--rebuild`): every surface says so instead of "not covered"."""
        from cove.catalog import check_store_holds_documents

        with self._lock:
            self.refresh()
            result = self._search(query, k, mode)
            if not result.hits:  # only an empty result can come from an empty store: count only then
                check_store_holds_documents(self.catalog, self.store)
            return result

    def _add_missing(self, hits: dict[str, Hit], ids: list[str], query_vector) -> None:
        """Fetch chunks found by BM25 only, with their vectors, so every hit has a cosine."""
        import numpy as np

        for chunk in self.store.get([i for i in ids if i not in hits], with_embeddings=True):
            vector = np.asarray(chunk.embedding, dtype=np.float32)
            hits[chunk.id] = Hit(chunk.id, chunk.text, chunk.metadata, float(vector @ query_vector), vector=vector)

    def _lexical_search(self, query: str, k: int, doc_ids: set[str] | None = None) -> Future:
        """The BM25 top k, searched on the lexical thread while the caller goes on."""
        return self._lexical_thread.submit(self._lexical.search, query, k, doc_ids)

    def _search(self, query: str, k: int | None, mode: str | None) -> RetrievalResult:
        import numpy as np

        cfg = self.settings.retrieve
        k = k or cfg.k
        mode = mode or cfg.mode
        started = time.perf_counter()
        self.store.catch_up()  # an ingest in another process since the last search: load its vectors
        lexical_search = self._lexical_search(query, cfg.candidates) if mode in ("hybrid", "lexical") else None
        query_vector = np.asarray(self.embedder.embed([query])[0], dtype=np.float32)

        rankings: list[list[str]] = []
        hits: dict[str, Hit] = {}
        if mode in ("hybrid", "dense"):
            dense = self.store.query(query_vector.tolist(), cfg.candidates, with_embeddings=True)
            for chunk in dense:
                hits[chunk.id] = Hit(chunk.id, chunk.text, chunk.metadata, chunk.score, vector=chunk.embedding)
            rankings.append([c.id for c in dense])
        if lexical_search is not None:
            lexical = lexical_search.result()
            self._add_missing(hits, [h.id for h in lexical], query_vector)
            for rank, lex in enumerate(lexical, start=1):
                if lex.id in hits:
                    hits[lex.id].lexical_rank = rank
            rankings.append([h.id for h in lexical if h.id in hits])

        weights = [cfg.dense_weight, cfg.lexical_weight] if mode == "hybrid" else [1.0] * len(rankings)
        named = self.named_documents(query) if mode == "hybrid" else set()
        own: dict[str, list[str]] = {}  # each named paper's chunks, ranked for what is asked of it
        if named and len(named) <= MAX_NAMED_RANKINGS:
            # The question names papers ("GPT-1 and LLaMA"): search each named paper on its own, for
            # what the question asks of it, so every paper it names competes with chunks that merely
            # share words, and a comparison finds both sides.
            asked_of = papers_asked(query, named, self._names) if len(named) > 1 else {}
            for doc_id in sorted(named):
                asked = asked_of.get(doc_id, query)
                vector = query_vector if asked == query else np.asarray(self.embedder.embed([asked])[0], np.float32)
                lexical_search = self._lexical_search(asked, cfg.candidates, {doc_id})
                dense_named = self.store.query(
                    vector.tolist(), cfg.candidates, where={"doc_id": doc_id}, with_embeddings=True
                )
                for chunk in dense_named:
                    if chunk.id not in hits:
                        hits[chunk.id] = Hit(chunk.id, chunk.text, chunk.metadata, chunk.score, vector=chunk.embedding)
                lexical_named = [h.id for h in lexical_search.result()]
                self._add_missing(hits, lexical_named, query_vector)
                pair = [[c.id for c in dense_named], [i for i in lexical_named if i in hits]]
                rankings += pair
                weights += [cfg.dense_weight, cfg.lexical_weight]
                if doc_id in asked_of:
                    fused_own = rrf_fuse(pair, cfg.rrf_k, [cfg.dense_weight, cfg.lexical_weight])
                    own[doc_id] = sorted(fused_own, key=fused_own.get, reverse=True)
        for item, score in rrf_fuse(rankings, cfg.rrf_k, weights).items():
            hits[item].fused = score
        ranked = sorted(hits.values(), key=lambda h: h.fused, reverse=True)
        ranked = drop_near_duplicates(ranked)
        chosen = mmr_select(ranked[: cfg.candidates], k, cfg.mmr_lambda)
        chosen = each_named_paper(chosen, {d: [hits[i] for i in ids] for d, ids in own.items()}, k)
        for rank, hit in enumerate(chosen, start=1):
            hit.rank = rank
        return RetrievalResult(query, chosen, time.perf_counter() - started, len(hits), named)


def each_named_paper(chosen: list[Hit], own: dict[str, list[Hit]], k: int) -> list[Hit]:
    """A question that names several papers gets each paper's best passages from its own search
    (`own`: doc id -> its chunks ranked for what is asked of it): `k // papers` of them, at most 2
    and at least 1. A missing one replaces the last chosen passage of an unnamed paper, else of the
    named paper with the most passages beyond its share."""
    if len(own) < 2 or len(own) > k:
        return chosen
    share = max(1, min(2, k // len(own)))  # passages guaranteed per compared paper
    chosen = list(chosen)
    for doc_id in sorted(own):
        for best in own[doc_id][:share]:
            if any(h.id == best.id for h in chosen):
                continue
            drop = _replaceable(chosen, own, share)
            if drop is None:
                break
            chosen[drop] = best
    return chosen


def _replaceable(chosen: list[Hit], own: dict[str, list[Hit]], share: int) -> int | None:
    """The index of the passage to give up: the last of an unnamed paper, else the last of the named
    paper holding the most passages beyond its share."""
    unnamed = [i for i, h in enumerate(chosen) if h.doc_id not in own]
    if unnamed:
        return unnamed[-1]
    counts: dict[str, int] = {}
    for h in chosen:
        counts[h.doc_id] = counts.get(h.doc_id, 0) + 1
    crowded = max(counts, key=counts.get)
    if counts[crowded] <= share:
        return None
    return max(i for i, h in enumerate(chosen) if h.doc_id == crowded)


_TITLE_WORD = re.compile(r"[a-z0-9][a-z0-9-]*")


def title_phrases(title: str) -> set[str]:
    """Pairs of consecutive content words of a title, folded: 'Transformer Feed-Forward Layers Are
    Key-Value Memories' -> {'transformer feed-forward', 'feed-forward layers', 'key-value memories'}.
    A run of capitalised words is also called by its acronym, beside its neighbouring word in either
    order: 'A Comprehensive Overview of Large Language Models' -> 'overview llm', 'llm overview'."""
    from cove.aliases import title_without_alias

    plain = title_without_alias(title)
    found = _TITLE_WORD.findall(tx.fold(plain))
    stop = set(tx.STOP_WORDS)
    phrases = {f"{a} {b}" for a, b in zip(found, found[1:], strict=False) if a not in stop and b not in stop}
    words = re.findall(r"[A-Za-z][\w-]*", plain)
    for start, end in _capital_runs(words, stop):
        acronym = "".join(w[0] for w in words[start:end]).lower()
        before = [w for w in words[:start] if w.lower() not in stop][-1:]
        after = [w for w in words[end:] if w.lower() not in stop][:1]
        for word in map(tx.fold, before + after):
            phrases |= {f"{word} {acronym}", f"{acronym} {word}"}
    return phrases


def _capital_runs(words: list[str], stop: set[str]) -> list[tuple[int, int]]:
    """[start, end) of the runs of 3 or 4 capitalised plain words between stop words or the title's
    ends ("of Large Language Models"): the runs an acronym stands for."""
    runs, start = [], None
    for i, word in enumerate([*words, ""]):
        capital = word[:1].isupper() and word[1:].islower() and "-" not in word and word.lower() not in stop
        if capital and start is None:
            start = i
        elif not capital and start is not None:
            if 3 <= i - start <= 4:
                runs.append((start, i))
            start = None
    return runs


_MODEL_SIZE = r"(?:[- ]\d+(?:\.\d+)?[bmk])?"  # "LLaMA-65B", "LLaMA 7B": the family's name with a size


def name_spans(query: str, names: dict[str, set[str]]) -> tuple[str, list[tuple[int, int, set[str]]]]:
    """The query as names are compared (`tx.name_key`) and where documents' names occur in it. A
    name inside a longer matched name of another document does not count ("transformer" inside
    "transformer feed-forward layers")."""
    folded = tx.name_key(query)
    spans: list[tuple[int, int, set[str]]] = []
    for key, docs in names.items():
        for match in re.finditer(rf"(?<![\w-]){re.escape(key)}s?{_MODEL_SIZE}(?![\w-])", folded):
            spans.append((match.start(), match.end(), docs))
    kept = [
        (start, end, docs)
        for start, end, docs in spans
        if not any(s <= start and end <= e and (e - s) > (end - start) and d != docs for s, e, d in spans)
    ]
    return folded, kept


def match_names(query: str, names: dict[str, set[str]]) -> set[str]:
    """Documents whose names occur in the query."""
    return {doc for _, _, docs in name_spans(query, names)[1] for doc in docs}


_CLAUSE_BREAK = re.compile(r",\s*(?:and|while|whereas|but)\s+|;\s*|\s+(?:compared with|compared to|versus|vs\.?)\s+")


def papers_asked(query: str, named: set[str], names: dict[str, set[str]]) -> dict[str, str]:
    """What `query` asks of each paper it compares, to search that paper alone with: the clause
    naming it when the question is one clause per paper ("Which BERT layers did the probing paper
    prune, and which BERT sizes did LoRA adapt?"), else the question without the other papers' names
    ("Which tokenizer do T5 [and BART] share?"). A paper named in every clause of such a question is
    its topic (BERT above), not a side of the comparison: it is left out."""
    folded, spans = name_spans(query, names)
    clauses, start = [], 0
    for cut in [*_CLAUSE_BREAK.finditer(folded), None]:
        end = cut.start() if cut else len(folded)
        clauses.append((start, end))
        start = cut.end() if cut else end
    in_clause = [{d for s, e, docs in spans if c0 <= s and e <= c1 for d in docs} for c0, c1 in clauses]
    topic = set.intersection(*in_clause) if len(clauses) > 1 else set()
    asked = {}
    for doc_id in sorted(named - topic):
        own = [c for c, docs in zip(clauses, in_clause, strict=True) if doc_id in docs and not docs - topic - {doc_id}]
        if len(clauses) > 1 and len(own) == 1:
            c0, c1 = own[0]
            asked[doc_id] = folded[c0:c1].strip(" ,;?") + "?"
            continue
        text = folded
        # Only the others' one-word names go ("GPT-2", "LoRA"): a phrase of a title ("attention
        # heads") may be the very thing asked.
        names_only = [(s, e) for s, e, docs in spans if doc_id not in docs and " " not in folded[s:e]]
        for s, e in sorted(names_only, reverse=True):
            text = text[:s] + text[e:]
        asked[doc_id] = re.sub(r"\s+", " ", text).strip()
    return asked


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
