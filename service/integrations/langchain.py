"""Cove in LangChain: its hybrid search as a retriever, its checked answers as a runnable.

    from service.integrations.langchain import CoveAnswerer, CoveRetriever

    retriever = CoveRetriever(k=4)              # the library in COVE_HOME (settings as for the CLI)
    docs = retriever.invoke("How is LoRA's B matrix initialized?")
    docs[0].metadata   # {"title", "source", "page", "section", "url", "chunk_id", "doc_id", "citekey", "score"}

    answerer = CoveAnswerer(pipeline="cove")    # input: a question, or {"question", "history"?, "pipeline"?}
    answerer.invoke({"question": "And its A matrix?", "history": [...]})   # the `cove ask --json` dict

Both run in-process on the shared `service.library` service (one embedding model, one chat model and
its queue per process), so they compose in LCEL chains with anything else; see the README for a
chain that returns the checked answer beside the retrieved pages. Only `langchain-core` is needed.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import ConfigDict

from cove.settings import CoveSettings, load_settings
from service.library import LibraryService, shared_service

_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant"}


def _service(settings: CoveSettings | None) -> LibraryService:
    return shared_service(settings or load_settings())


class CoveRetriever(BaseRetriever):
    """Cove's hybrid search (dense + BM25, fused, diversified) as LangChain `Document`s, one per passage."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    settings: CoveSettings | None = None  # None: from the environment (COVE_HOME, COVE_RETRIEVE__...)
    k: int = 5
    mode: str | None = None  # "hybrid" (default), "dense" or "lexical"

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        result = _service(self.settings).search(query, self.k, self.mode)
        return [
            Document(
                id=hit["chunk_id"],
                page_content=hit["text"],
                metadata={key: hit[key] for key in ("title", "source", "page", "section", "url", "doc_id", "citekey")}
                | {"chunk_id": hit["chunk_id"], "score": hit["score"]},
            )
            for hit in result["hits"]
        ]


def history_turns(history: Any) -> list[dict[str, str]]:
    """Conversation turns from dicts {"role", "content"} or LangChain messages (HumanMessage, AIMessage)."""
    turns = []
    for turn in history or []:
        role = turn.get("role") if isinstance(turn, dict) else getattr(turn, "type", "")
        content = turn.get("content") if isinstance(turn, dict) else getattr(turn, "content", "")
        if _ROLES.get(str(role)) and isinstance(content, str) and content.strip():
            turns.append({"role": _ROLES[str(role)], "content": content})
    return turns


class CoveAnswerer(Runnable[Any, dict[str, Any]]):
    """The answer engine as a runnable: a question (and history) in, Cove's checked answer dict out."""

    def __init__(self, settings: CoveSettings | None = None, pipeline: str | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run through LangChain's callback machinery (tracing, callbacks see the run)."""
        return self._call_with_config(self._answer, input, config)

    def _answer(self, input: Any) -> dict[str, Any]:
        if isinstance(input, str):
            question, history, pipeline = input, [], None
        elif isinstance(input, dict) and isinstance(input.get("question"), str):
            question, history, pipeline = input["question"], input.get("history"), input.get("pipeline")
        else:
            raise TypeError("CoveAnswerer takes a question string or {'question', 'history'?, 'pipeline'?}")
        service = _service(self.settings)
        return service.ask(question, history_turns(history), pipeline or self.pipeline).to_json()
