"""Hybrid retrieval over a real library: BM25 + dense fusion, the lexical index kept in step, follow-ups."""

from __future__ import annotations

import pytest

from cove.retrieve import Retriever, looks_like_follow_up, rrf_fuse, standalone_query

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retriever(small_library):
    r = Retriever(small_library)
    yield r
    r.close()


def pages(result):
    return [(h.source, h.page) for h in result.hits]


def test_hybrid_finds_the_page_with_the_answer(retriever):
    result = retriever.search("How many parallel attention heads does the base Transformer use?")
    assert ("1706.03762.pdf", 5) in pages(result)
    assert len(result.hits) == 5 and all(h.cosine > 0 for h in result.hits)


def test_bm25_side_finds_exact_terms_that_dense_misses(retriever):
    result = retriever.search("warmup_steps = 4000", mode="lexical")
    assert ("1706.03762.pdf", 7) in pages(result)


def test_named_paper_routes_to_it(retriever):
    assert retriever.named_documents("How is LoRA initialised?") == {"arxiv-2106.09685"}
    result = retriever.search("How are the LoRA matrices A and B initialized?")
    assert result.hits[0].doc_id == "arxiv-2106.09685"


def test_lexical_index_is_rebuilt_when_the_store_changes(small_library, retriever):
    from cove.catalog import Catalog
    from cove.lexical import GENERATION_KEY

    before = retriever.lexical.generation
    catalog = Catalog(small_library.catalog_path)
    catalog.bump_meta_counter(GENERATION_KEY)  # what ingest does before touching the store
    catalog.close()
    assert retriever.lexical.generation == before + 1
    assert len(retriever.lexical) == retriever.store.count()


def test_rrf_and_follow_ups():
    fused = rrf_fuse([["a", "b"], ["b", "c"]], rrf_k=60)
    assert max(fused, key=fused.get) == "b"
    history = [{"role": "user", "content": "How many layers does the Transformer encoder have?"}]
    assert looks_like_follow_up("And its decoder?")
    assert standalone_query("And its decoder?", history).startswith("How many layers does the Transformer")
    assert standalone_query("What is LoRA's rank r in the GPT-3 experiments?", history).startswith("What is LoRA")
