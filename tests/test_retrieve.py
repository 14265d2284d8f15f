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
    from cove.store import ChunkStore

    before = retriever.lexical.generation
    token = ChunkStore(small_library).mark_changed()  # what every writer does around a change
    assert token != before
    assert retriever.lexical.generation == token
    assert len(retriever.lexical) == retriever.store.count()


def test_rrf_and_follow_ups():
    fused = rrf_fuse([["a", "b"], ["b", "c"]], rrf_k=60)
    assert max(fused, key=fused.get) == "b"
    history = [{"role": "user", "content": "How many layers does the Transformer encoder have?"}]
    assert looks_like_follow_up("And its decoder?")
    assert standalone_query("And its decoder?", history).startswith("How many layers does the Transformer")
    assert standalone_query("What is LoRA's rank r in the GPT-3 experiments?", history).startswith("What is LoRA")


def test_greek_letters_meet_their_names(retriever):
    from cove.lexical import normalize

    assert "beta" in normalize("β1 = 0.9, β2 = 0.98").split()
    result = retriever.search("Which optimizer and beta values were used?", mode="lexical")
    assert ("1706.03762.pdf", 7) in pages(result)  # "Adam optimizer [20] with β1 = 0.9, β2 = 0.98"


def test_an_index_built_by_an_older_tokenizer_is_rebuilt(small_library, tmp_path):
    import json
    import shutil

    from cove.lexical import TOKENIZER_VERSION, LexicalIndex, lexical_dir
    from cove.settings import with_overrides

    home = tmp_path / "home"
    shutil.copytree(small_library.home_dir, home)
    settings = with_overrides(small_library, {"home": str(home)})
    meta_path = lexical_dir(settings) / "cove-meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tokenizer": TOKENIZER_VERSION - 1}))
    assert LexicalIndex(lexical_dir(settings)).generation is None, "an old index is not trusted"
    rebuilt = Retriever(settings)
    try:
        assert rebuilt.lexical.generation == meta["generation"]
        assert json.loads(meta_path.read_text())["tokenizer"] == TOKENIZER_VERSION
        assert ("1706.03762.pdf", 7) in pages(rebuilt.search("beta values of the optimizer", mode="lexical"))
    finally:
        rebuilt.close()


def test_a_comparison_searches_each_paper_for_what_is_asked_of_it(retriever):
    from cove.retrieve import papers_asked, title_phrases

    assert {"llm overview", "overview llm"} <= title_phrases("A Comprehensive Overview of Large Language Models")
    names = {"gpt2": {"gpt2"}, "ioi": {"ioi"}, "flashattention": {"flash"}, "llama": {"llama"}, "gpt1": {"gpt1"}}
    asked = papers_asked("Which size of GPT-2 did the IOI paper study, and which GPT-2 sizes did FlashAttention train?",
                         {"gpt2", "ioi", "flash"}, names)  # fmt: skip
    assert asked == {"ioi": "which size of gpt2 did the ioi paper study?",
                     "flash": "which gpt2 sizes did flashattention train?"}  # GPT-2 is the topic, not a side
    asked = papers_asked("How did GPT-1 and LLaMA-65B score on RACE-high?", {"gpt1", "llama"}, names)
    assert asked == {"gpt1": "how did gpt1 and score on race-high?",
                     "llama": "how did and llama-65b score on race-high?"}  # fmt: skip
    # On the real library: a two-paper question gets passages of both papers, each from its own search.
    result = retriever.search("How many attention heads does the Transformer use, and what rank r does LoRA use?")
    assert {h.doc_id for h in result.hits} >= {"arxiv-1706.03762", "arxiv-2106.09685"}
    assert sum(h.doc_id == "arxiv-2106.09685" for h in result.hits) >= 2
