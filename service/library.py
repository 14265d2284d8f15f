"""The library as a service for other tools: the HTTP API (`cove serve`), the MCP server and LangChain.

    service = shared_service(settings)          # one per process and data directory
    answer = service.ask("How many heads?", history=[...], pipeline="cove")
    hits = service.search("multi-head attention", k=5)
    service.add(["2106.09685", "https://example.org/paper.pdf"])
    service.page_text("arxiv-1706.03762", 4)

It sits on the chat app's `service.chat.ChatService`, so every front end in a process shares one
retriever (embedding model, Chroma, BM25) and one chat model, whose lock is the queue all questions
wait in. Unlike the chat app, the caller brings the conversation (OpenAI messages, an MCP tool
argument, a LangChain input), so nothing is written to the app's chats.

Everything returned is plain data (dicts of str/int/float/list) that the front ends serialize as is:
`library_json` is `cove library --json`, `Answer.to_json()` is `cove ask --json`, `report_json` is
`cove ingest --json`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from cove.catalog import STATUS_OK, DocumentRecord
from cove.engine import Answer, AnswerEngine, citation_url
from cove.events import EventCallback
from cove.settings import CoveSettings
from cove.untrusted import allowed_paths
from service.chat import ChatService, LibraryEmpty

PIPELINES = ("cove", "baseline")

# What `cove library --json` (and every other front end) shows of a document.
LIBRARY_KEYS = (
    "doc_id",
    "title",
    "source",
    "kind",
    "pages",
    "chunks",
    "status",
    "error",
    "url",
    "authors",
    "year",
    "version",
    "topic",
    "citekey",
    "aliases",
    "content_hash",
    "ingested_at",
    "warnings",
    "report",
)


class NotFound(LookupError):
    """No such document, or no such page of it."""


def library_json(records: list[DocumentRecord]) -> list[dict[str, Any]]:
    return [{key: getattr(record, key) for key in LIBRARY_KEYS} for record in records]


def report_json(report) -> dict[str, Any]:
    """An `ingest.pipeline.IngestReport` as plain data (`cove ingest --json`)."""
    return {
        "ingested": len(report.ingested),
        "skipped": len(report.skipped),
        "failed": len(report.failed),
        "chunks_written": report.chunks_written,
        "rebuilt": report.rebuilt,
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
        "results": [asdict(r) for r in report.results],
    }


def page_text_from_chunks(chunks: list[tuple[str, dict[str, Any]]]) -> str:
    """A page's text rebuilt from its chunks: in page order, each overlap with the previous chunk once.

    Chunks are slices of the page's text with their offsets (`char_start`, `char_end`); the gaps
    between slices are whitespace, so a single space stands in for them."""
    ordered = sorted(chunks, key=lambda c: (int(c[1].get("char_start", 0)), int(c[1].get("chunk_index", 0))))
    parts: list[str] = []
    covered = 0
    for text, meta in ordered:
        start = int(meta.get("char_start", covered))
        end = int(meta.get("char_end", start + len(text)))
        if end <= covered and parts:
            continue
        skip = max(0, covered - start)
        if parts and start > covered:
            parts.append(" ")
        parts.append(text[skip:])
        covered = max(covered, end)
    return "".join(parts).strip()


class TooManyAnswers(Exception):
    """More questions wait for the model than `answer.max_queued`: this one is turned away now."""

    retry_after_s = 10  # about what one answer takes on the bundled model


class AnswerSlot:
    """One reserved place among the answers a process runs. It is freed when each of its `holders`
    has released it (a streamed answer: its thread and its response), however each one ends."""

    def __init__(self, free: Callable[[], None], holders: int = 1) -> None:
        self._free, self._holders = free, holders
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._free()


class LibraryService:
    """Ask, search, list, add and read pages, for front ends that bring their own conversation."""

    def __init__(self, settings: CoveSettings, chat: ChatService | None = None) -> None:
        self.chat = chat or ChatService(settings)
        self.settings = self.chat.settings
        self._engine: AnswerEngine | None = None
        self._lock = threading.Lock()
        self._answering = 0  # answers running or queued for the model in this process
        self._answering_lock = threading.Lock()

    def engine(self) -> AnswerEngine:
        """One answer engine for every request (the pipeline is chosen per question): prompts are read once."""
        with self._lock:
            if self._engine is None:
                self._engine = AnswerEngine(self.settings, retriever=self.chat.retriever())
            return self._engine

    # --- the library ---------------------------------------------------------------------------
    def documents(self) -> list[DocumentRecord]:
        return self.chat.library().documents

    def document(self, doc_id: str) -> DocumentRecord | None:
        return next((d for d in self.documents() if d.doc_id == doc_id), None)

    # --- asking and searching ------------------------------------------------------------------
    def ensure_ready(self) -> None:
        """Raise `LibraryEmpty` unless some document is indexed (one query on the open catalog; with a
        shared Chroma server, the library caught up with it first)."""
        if self.settings.store.chroma_url or not self.settings.catalog_path.exists():
            empty = self.chat.library().empty
        else:
            empty = not self.chat.retriever().catalog.has_indexed_documents()
        if empty:
            raise LibraryEmpty("The library is empty: add papers first (`cove ingest`, or POST /api/documents).")

    def ask(
        self,
        question: str,
        history: list[dict[str, str]] | None = None,
        pipeline: str | None = None,
        on_event: EventCallback | None = None,
        cancel: threading.Event | None = None,
        slot: AnswerSlot | None = None,
    ) -> Answer:
        """A checked, cited answer. Raises `LibraryEmpty`, `cove.llm.ModelError`, `StoreUnavailable`,
        `TooManyAnswers` (more than `answer.max_queued` waiting) and, once `cancel` is set,
        `AnswerCancelled`. A `slot` from `reserve_answer` is the caller's to release; without one, the
        answer reserves its own and releases it."""
        own = slot is None
        slot = slot or self.reserve_answer()
        try:
            if pipeline not in (None, *PIPELINES):
                raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}")
            self.ensure_ready()
            return self.engine().ask(question, history or None, pipeline, on_event, cancel=cancel)
        finally:
            if own:
                slot.release()

    def reserve_answer(self, holders: int = 1) -> AnswerSlot:
        """A place among the answers this process runs (one at the model, `answer.max_queued`
        waiting), or `TooManyAnswers` now: a server reserves before it starts streaming, and its
        response holds the place as well as the answer (a client reading slowly still counts)."""
        limit = 1 + self.settings.answer.max_queued
        with self._answering_lock:
            if self._answering >= limit:
                raise TooManyAnswers(
                    f"{self._answering} questions are being answered or waiting for the model "
                    f"(answer.max_queued is {limit - 1}); ask again shortly."
                )
            self._answering += 1
        return AnswerSlot(self._free_slot, holders)

    def _free_slot(self) -> None:
        with self._answering_lock:
            self._answering -= 1

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> dict[str, Any]:
        """Cove's hybrid search: the top-k passages with where they are (title, page, section, link)."""
        retriever = self.chat.retriever()
        result = retriever.search(query, k=k, mode=mode)
        hits = []
        for hit in result.hits:
            meta = hit.metadata
            hits.append(
                {
                    "chunk_id": hit.id,
                    "doc_id": hit.doc_id,
                    "title": hit.title,
                    "source": hit.source,
                    "page": hit.page,
                    "section": meta.get("section", ""),
                    "url": citation_url(meta),
                    "citekey": retriever.catalog.citekey(hit.doc_id),
                    "score": round(hit.fused, 5),
                    "cosine": round(hit.cosine, 4),
                    "text": hit.text,
                }
            )
        return {"query": query, "hits": hits, "seconds": round(result.seconds, 4)}

    def page_text(self, doc_id: str, page: int) -> str:
        """The indexed text of one page of a document (from its stored chunks)."""
        record = self.document(doc_id)
        if record is None or record.status != STATUS_OK:
            raise NotFound(f"no indexed document {doc_id!r}")
        if not 1 <= page <= max(record.pages, 1):
            raise NotFound(f"{doc_id!r} has pages 1-{record.pages}, not {page}")
        store = self.chat.retriever().store
        chunks = [(c.text, c.metadata) for c in store.document_chunks(doc_id) if c.metadata.get("page_start") == page]
        return page_text_from_chunks(chunks)

    # --- adding documents ----------------------------------------------------------------------
    def add(
        self,
        items: Sequence[str] = (),
        paths: Sequence[str] = (),
        progress: Callable[[Any], None] | None = None,
    ) -> dict[str, Any]:
        """Ingest arXiv ids / URLs (`items`) and local files or folders (`paths`); the ingest report.

        A path is read only if it resolves (symlinks followed) inside `ingest.allowed_roots`: the API
        and MCP clients that call this are not the user at the keyboard, and a prompt-injected agent
        must not be able to index (and then read back) any file on the disk."""
        roots = (self.settings.ingest.allowed_roots, "ingest.allowed_roots")
        return report_json(add_papers(self.settings, items, paths, roots=roots, progress=progress))

    def add_upload(self, name: str, data: bytes, max_bytes: int) -> dict[str, Any]:
        """Ingest an uploaded PDF (saved under the data directory's uploads); the ingest report."""
        return report_json(add_papers(self.settings, uploads=[(name, data)], max_upload_bytes=max_bytes))


def add_papers(
    settings: CoveSettings,
    items: Sequence[str] = (),
    paths: Sequence[str] = (),
    uploads: Sequence[tuple[str, Any]] = (),
    roots: tuple[Sequence[str], str] = ((), "ingest.allowed_roots"),
    max_upload_bytes: int | None = None,
    progress: Callable[[Any], None] | None = None,
    reading_list: bool = False,
):
    """The one way a front end adds papers: arXiv ids and URLs, local paths (only those that resolve
    inside `roots`, the folders and the setting that names them), uploads as (file name, bytes or a
    readable file) streamed to disk under the size limit, and with `reading_list` the curated papers.
    Returns the `IngestReport`; inputs that cannot be read are in its failures, with the reason."""
    from ingest.pipeline import ingest
    from ingest.sources import SourceError, collect_sources, curated_reading_list, from_upload

    allowed_roots, setting = roots
    readable, refused = allowed_paths(paths, allowed_roots, setting) if paths else ([], [])
    sources, bad = collect_sources(paths=readable, items=list(items)) if readable or items else ([], [])
    limit = max_upload_bytes if max_upload_bytes is not None else settings.app.max_upload_mb * 2**20
    for name, data in uploads:
        try:
            sources.append(from_upload(name, data, settings.uploads_dir, limit))
        except SourceError as err:
            bad.append((name, str(err)))
    if reading_list:
        sources += curated_reading_list()
    return ingest(sources, settings, progress, bad_inputs=refused + bad)


_SERVICES: dict[str, LibraryService] = {}
_SERVICES_LOCK = threading.Lock()


def shared_service(settings: CoveSettings) -> LibraryService:
    """The process's service for `settings`' data directory (built once: the models load once)."""
    key = str(settings.home_dir)
    with _SERVICES_LOCK:
        if key not in _SERVICES:
            _SERVICES[key] = LibraryService(settings)
        return _SERVICES[key]
