"""The lexical index on a real PostgreSQL server (issue 23): chunks written with the Chroma ones, in
the same generation, BM25 scored in the server the way the embedded index scores, a crashed write
repaired from the chunk store, and nothing of the index held in a Cove process."""

from __future__ import annotations

import pytest
from conftest import CORPUS

pytestmark = pytest.mark.slow

QUERIES = [
    "warmup_steps = 4000",
    "Which optimizer and beta values were used?",
    "How many parallel attention heads does the base Transformer use?",
    "rank r of the LoRA update matrices",
    "dropout rate residual connections",
    "trainable parameters reduced by 10,000 times",
    "label smoothing value",
    "GPT-3 175B fine-tuning cost",
]


@pytest.fixture(scope="module")
def postgres():
    from servers import PostgresServer

    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def two_homes(tmp_path_factory, postgres):
    """The same two papers ingested into an embedded-BM25 home and a PostgreSQL home."""
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent: the lexical index tests ingest two of its papers")
    from cove.settings import load_settings
    from ingest.pipeline import ingest
    from ingest.sources import from_path

    homes = {}
    for name, lexical in (("embedded", {}), ("postgres", {"postgres_url": postgres.url})):
        settings = load_settings({"home": str(tmp_path_factory.mktemp(name)), "lexical": lexical})
        report = ingest([from_path(CORPUS / "1706.03762.pdf"), from_path(CORPUS / "2106.09685.pdf")], settings)
        assert not report.failed, report.failed
        homes[name] = settings
    return homes


def test_postgres_ranks_as_the_embedded_bm25_does(two_homes):
    from cove.lexical_pg import PostgresLexicalIndex
    from cove.retrieve import Retriever

    embedded, server = Retriever(two_homes["embedded"]), Retriever(two_homes["postgres"])
    assert isinstance(server.lexical, PostgresLexicalIndex)  # no BM25 copy in this process
    assert len(server.lexical) == len(embedded.lexical) == embedded.store.count()
    overlap = []
    for query in QUERIES:
        a = [h.id for h in embedded.lexical.search(query, 5)]
        b = [h.id for h in server.lexical.search(query, 5)]
        assert a[0] == b[0], (query, a, b)  # the same best chunk
        overlap.append(len(set(a) & set(b)) / 5)
    assert sum(overlap) / len(overlap) >= 0.9, overlap
    hits = server.search("warmup_steps = 4000", mode="lexical").hits
    assert ("1706.03762.pdf", 7) in [(h.source, h.page) for h in hits]
    lora = server.lexical.search("attention heads", 10, {"arxiv-2106.09685"})
    assert lora and all(h.id.startswith("arxiv-2106.09685:") for h in lora)


def test_writes_keep_the_generation_and_a_crashed_write_is_rebuilt(two_homes):
    from cove.lexical_pg import PostgresLexicalIndex
    from cove.store import ChunkStore

    settings = two_homes["postgres"]
    store = ChunkStore(settings)
    server = store.lexical_server
    assert server.generation == store.generation()  # the ingest's last mark_changed stamped it
    before = len(server)
    # A writer that dies between its write and its closing mark_changed: a stray chunk, a dirty table.
    crashed = PostgresLexicalIndex(settings.lexical.postgres_url, settings.collection_name)
    crashed.replace_document("stray-doc", ["stray-doc:0"], ["zebra quokka narwhal"], [{}])
    assert server.generation is None and len(server) == before + 1
    assert crashed.search("quokka", 5)  # readers would see it ...
    from cove.retrieve import Retriever

    reader = Retriever(settings)
    reader.refresh()  # ... but the next reader rebuilds the table from the Chroma collection
    assert server.generation == store.generation() and len(server) == before
    assert not reader.lexical.search("quokka", 5)


def test_deleting_a_document_removes_its_terms(two_homes):
    from cove.store import ChunkStore

    store = ChunkStore(two_homes["postgres"])
    server = store.lexical_server
    assert server.search("LoRA low-rank adaptation", 5, {"arxiv-2106.09685"})
    store.mark_changed()
    store.delete_document("arxiv-2106.09685")
    store.mark_changed()
    assert server.generation == store.generation()
    assert not server.search("LoRA low-rank adaptation", 5, {"arxiv-2106.09685"})
    assert len(server) == store.count()


def test_a_dropped_index_identity_leaves_no_rows(postgres, tmp_path):
    """Changed index settings drop the old Chroma collection; its PostgreSQL rows go with it."""
    import psycopg

    from cove.lexical_pg import TABLES
    from cove.settings import load_settings
    from cove.store import ChunkStore

    old = load_settings({"home": str(tmp_path), "lexical": {"postgres_url": postgres.url}})
    store = ChunkStore(old)
    store.mark_changed()
    store.replace_document("note", ["note:0"], ["a note about rotary heads"], [[0.1] * 384],
                           [{"doc_id": "note", "page_start": 1, "page_end": 1}])  # fmt: skip
    new = load_settings({"home": str(tmp_path), "lexical": {"postgres_url": postgres.url}, "chunk": {"size": 900}})
    assert new.collection_name != old.collection_name
    dropped = ChunkStore(new).drop_other_indexes()
    assert old.collection_name in dropped
    with psycopg.connect(postgres.url) as conn:
        for table in TABLES:
            left = conn.execute(f"SELECT count(*) FROM {table} WHERE collection = %s", (old.collection_name,))
            assert left.fetchone()[0] == 0, table


def _synthetic_library(seed: int, docs: int, chunks_per_doc: int):
    """Chunks of made-up words drawn by a Zipf law: the common ones fill several postings blocks."""
    import random

    rng = random.Random(seed)
    words = [f"t{i:03d}x" for i in range(400)]
    zipf = [1 / (rank + 1) for rank in range(len(words))]

    def chunk() -> str:
        return " ".join(rng.choices(words, weights=zipf, k=rng.randint(5, 80)))

    library = {f"doc{d}": [chunk() for _ in range(chunks_per_doc)] for d in range(docs)}
    queries = [" ".join(rng.choices(words, weights=zipf, k=rng.randint(1, 6))) for _ in range(40)]
    return library, queries, chunk


def _untied(hits: list[tuple[str, float]], tied: set[float]) -> list[str]:
    return [chunk_id for chunk_id, score in hits if round(score, 4) not in tied]


def test_the_threshold_search_finds_the_exact_top_k_through_writes_and_deletes(postgres, tmp_path):
    """The top k read from impact-ordered blocks is bm25s's top k over the same chunks (the embedded
    index, built afresh as the reference): right after a block build, and with delta rows written
    since, chunks deleted since (their postings still in the blocks) and the average chunk length
    moved since; while reading only part of the common terms' postings."""
    from cove.lexical import LexicalIndex, lexical_text
    from cove.lexical_pg import BLOCK, PostgresLexicalIndex, ThresholdSearch

    index = PostgresLexicalIndex(postgres.url, "threshold-search")
    library, queries, chunk = _synthetic_library(seed=7, docs=60, chunks_per_doc=50)
    indexed = {f"{doc}:{i}": text for doc, texts in library.items() for i, text in enumerate(texts)}
    index.rebuild(list(indexed), list(indexed.values()), "g1")

    def same_as_bm25s(stage: str) -> None:
        reference = LexicalIndex(tmp_path / stage.replace(" ", "-"))
        reference.rebuild(list(indexed), list(indexed.values()), stage)
        for query in queries:
            got = [(h.id, h.score) for h in index.search(query, 10)]
            deeper = [(h.id, h.score) for h in reference.search(query, 20)]
            want = deeper[:10]
            assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-5), (stage, query)
            # Equal scores (bm25s sums in float32) may come in any order, also across the 10th place.
            rounded = [round(s, 4) for _, s in deeper]
            tied = {s for s in rounded if rounded.count(s) > 1}
            assert _untied(got, tied) == _untied(want, tied), (stage, query)

    same_as_bm25s("after the block build")
    # Fewer than COMPACT_SHARE of the library changes: new chunks go to delta rows, old ones stay in
    # the blocks as postings of chunks that are gone, and long new chunks move the average length.
    replaced = {"doc3:0": chunk(), "doc3:1": chunk()}
    added = {f"new-doc:{i}": " ".join([chunk(), chunk(), chunk()]) for i in range(40)}
    index.replace_document("doc3", list(replaced), list(replaced.values()), [{}, {}])
    index.replace_document("new-doc", list(added), list(added.values()), [{}] * len(added))
    index.delete_document("doc5")
    indexed = {i: t for i, t in indexed.items() if not i.startswith(("doc3:", "doc5:"))}
    indexed |= {i: lexical_text(t, {}) for i, t in (replaced | added).items()}
    with index._connection().cursor() as cur:
        cur.execute("SELECT count(*) FROM cove_bm25_postings WHERE collection = %s AND block = -1", (index.collection,))
        assert cur.fetchone()[0] > 0  # delta rows, not yet folded into blocks
        scorer = index.scorer(cur, "t000x")
        assert scorer.drift > 1.02  # today's average chunk length is not the blocks' any more
    same_as_bm25s("with delta rows and deleted chunks")
    assert not index.search("t000x", 10, {"doc5"}) and index.search("t000x", 10, {"new-doc"})

    # The most common terms' postings span several blocks; the search stops before their end.
    conn = index._connection()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM cove_bm25_postings WHERE collection = %s AND term IN ('t000x', 't001x') "
            "AND block >= 0",
            (index.collection,),
        )
        blocks = cur.fetchone()[0]
        assert blocks >= 4, f"{blocks} blocks of {BLOCK}"
        scorer = index.scorer(cur, "t000x t001x t150x")
        ThresholdSearch(scorer, 10).run()
        assert scorer.blocks_read < blocks


def test_a_table_of_an_older_layout_is_rebuilt(two_homes):
    """Rows written by another layout (an older Cove) are not trusted: the next reader rebuilds them."""
    from cove.retrieve import Retriever
    from cove.store import ChunkStore

    settings = two_homes["postgres"]
    store = ChunkStore(settings)
    server = store.lexical_server
    with server._cursor() as cur:
        cur.execute("UPDATE cove_bm25_meta SET layout = 1 WHERE collection = %s", (server.collection,))
    assert server.generation is None
    Retriever(settings).refresh()
    assert server.generation == store.generation()
    assert server.search("warmup_steps = 4000", 5)
