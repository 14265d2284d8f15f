"""Cove in LangChain: `CoveRetriever` and `CoveAnswerer` composed in LCEL chains over the real small library."""

from __future__ import annotations

from operator import itemgetter

import pytest

pytestmark = pytest.mark.slow
langchain_core = pytest.importorskip("langchain_core", reason="the LangChain integration needs langchain-core")


def test_lcel_chain_with_cove_retriever_returns_pages(small_library):
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda, RunnableParallel

    from cove.store import ChunkStore
    from service.integrations.langchain import CoveRetriever

    retriever = CoveRetriever(settings=small_library, k=4)
    cite = RunnableLambda(lambda docs: [f"{d.metadata['title']} p.{d.metadata['page']}" for d in docs])
    search = RunnableParallel(docs=itemgetter("question") | retriever, question=itemgetter("question"))
    chain = search | RunnableParallel(
        docs=itemgetter("docs"), pages=itemgetter("docs") | cite, question=itemgetter("question")
    )
    out = chain.invoke({"question": "How are LoRA's matrices A and B initialized?"})

    docs = out["docs"]
    assert len(docs) == 4 and all(isinstance(d, Document) for d in docs)
    assert docs[0].metadata["doc_id"] == "arxiv-2106.09685"
    for doc in docs:
        meta = doc.metadata
        assert {"title", "source", "page", "section", "url", "chunk_id", "doc_id", "citekey"} <= set(meta)
        assert isinstance(meta["page"], int) and meta["page"] >= 1 and meta["title"]
        stored = ChunkStore(small_library).get([meta["chunk_id"]])[0]
        assert stored.text == doc.page_content and stored.metadata["page_start"] == meta["page"]
        assert doc.id == meta["chunk_id"]
    assert out["pages"][0].lower().startswith("lora") and out["question"].startswith("How are")


def test_answer_runnable_takes_question_and_history(small_library):
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.runnables import RunnableParallel

    from service.integrations.langchain import CoveAnswerer, CoveRetriever

    chain = RunnableParallel(
        answer=CoveAnswerer(settings=small_library, pipeline="baseline"),
        passages=itemgetter("question") | CoveRetriever(settings=small_library, k=2),
    )
    history = [HumanMessage("What is LoRA?"), AIMessage("LoRA trains low-rank matrices [1].")]
    out = chain.invoke({"question": "How are its matrices A and B initialized?", "history": history})
    answer = out["answer"]
    assert answer["query"].startswith("What is LoRA?") and answer["pipeline"] == "baseline"
    assert not answer["refused"] and answer["citations"]
    assert {c["doc_id"] for c in answer["citations"]} & {d.metadata["doc_id"] for d in out["passages"]}

    refused = CoveAnswerer(settings=small_library, pipeline="baseline").invoke("What is the capital of France?")
    assert refused["refused"]
    with pytest.raises(TypeError):
        CoveAnswerer(settings=small_library).invoke({"q": "no question key"})
