"""A chat over the library for any front end: the Streamlit app is a thin layer over this module.

    service = ChatService(settings)              # one per process, shared by every browser session
    chat = service.conversations.create()
    message = service.ask(chat.id, "How many heads?", {"answer": {"pipeline": "baseline"}}, on_event)

`ask` keeps the question, answers it with `cove.engine.AnswerEngine` (the conversation so far goes
along for follow-ups) and keeps the answer. A question may choose the pipeline and the number of
sources (`SESSION_CHOICES`); the model and everything else come from the service's settings.
Whatever goes wrong (the model cannot load, the library is empty, a server went away, a question
too long or past its deadline) becomes an `error` message in the conversation with a plain reason:
the front end never shows a traceback and never loses the conversation.

The expensive parts are shared between sessions: one retriever (embedding model, Chroma, BM25) and
one chat model per model setting (`cove.llm.load_chat_model`); model calls queue on the model's lock
and a waiting caller is told so through its `on_event` callback.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cove.catalog import STATUS_FAILED, STATUS_OK, DocumentRecord, LibraryEmpty
from cove.engine import AnswerDeadline, AnswerEngine
from cove.events import EventCallback
from cove.llm import ModelCrashed, ModelError
from cove.lock import LibraryBusy
from cove.settings import CoveSettings, with_overrides
from cove.store import StoreUnavailable
from service.conversations import ConversationStore, Message

log = logging.getLogger("service.chat")

# `LibraryEmpty` is defined beside the catalog (the retriever raises it too); the front ends import it from here.


class QuestionTooLong(ValueError):
    """A question over `app.max_question_chars`."""


# What one question may change: a browser session picks the pipeline and the number of sources, never
# the model, a server URL, a file path or a folder (those come from the settings file and environment).
SESSION_CHOICES = {"retrieve": {"k"}, "answer": {"pipeline"}}


def session_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`overrides` with everything a session may not choose left out."""
    kept: dict[str, Any] = {}
    for section, values in (overrides or {}).items():
        allowed = SESSION_CHOICES.get(section, set())
        chosen = {k: v for k, v in values.items() if k in allowed} if isinstance(values, dict) else {}
        if chosen:
            kept[section] = chosen
        if not isinstance(values, dict) or len(chosen) < len(values):
            log.warning("ignored per-question settings outside %s: %r", SESSION_CHOICES, section)
    return kept


@dataclass
class LibraryStatus:
    """What the library holds, for a sidebar or `cove library`."""

    documents: list[DocumentRecord] = field(default_factory=list)

    @property
    def ready(self) -> list[DocumentRecord]:
        return [d for d in self.documents if d.status == STATUS_OK]

    @property
    def failed(self) -> list[DocumentRecord]:
        return [d for d in self.documents if d.status == STATUS_FAILED]

    @property
    def pages(self) -> int:
        return sum(d.pages for d in self.ready)

    @property
    def chunks(self) -> int:
        return sum(d.chunks for d in self.ready)

    @property
    def empty(self) -> bool:
        return not self.ready


def friendly_error(err: BaseException) -> str:
    """A reason a reader can act on, without a traceback."""
    if isinstance(err, (LibraryEmpty, QuestionTooLong)):
        return str(err)
    if isinstance(err, AnswerDeadline):
        return f"Not answered in time: {err}. Try again, or the single-answer pipeline (faster)."
    if isinstance(err, ModelCrashed):  # already says what failed and the command that fixes it
        return f"The model could not answer: {err}"
    if isinstance(err, ModelError):
        return f"The model could not answer: {err}. Check the model setting, or pick the bundled model."
    if isinstance(err, StoreUnavailable):
        return f"The library cannot be searched: {err}."
    if isinstance(err, LibraryBusy):
        return f"The library is busy: {err}."
    if isinstance(err, MemoryError):
        return "Out of memory while answering; try fewer sources or a smaller model."
    return f"Something went wrong while answering ({type(err).__name__}: {err}). The conversation is kept."


class ChatService:
    """The library, its conversations and its answer engine, shared by all sessions of a process."""

    def __init__(self, settings: CoveSettings) -> None:
        self.settings = settings
        self.conversations = ConversationStore(settings.chats_path)
        self._retriever = None
        self._lock = threading.Lock()

    # --- the library -------------------------------------------------------------------------------
    def library(self) -> LibraryStatus:
        """The documents, caught up with a shared Chroma server (the last known list if it is down)."""
        from cove.sync import library_documents

        if not self.settings.catalog_path.exists() and not self.settings.store.chroma_url:
            return LibraryStatus()
        try:  # no retries: the page is drawn on every click, and a question will say what is wrong
            documents = library_documents(with_overrides(self.settings, {"store": {"retries": 0}}))
        except StoreUnavailable:
            log.warning("the Chroma server is unreachable; showing the last known library", exc_info=True)
            documents = library_documents(with_overrides(self.settings, {"store": {"chroma_url": ""}}))
        return LibraryStatus(sorted(documents, key=lambda d: (d.status != STATUS_OK, d.title or d.source)))

    def retriever(self):
        """The shared retriever; built on first use (loading the embedding model takes seconds)."""
        from cove.retrieve import Retriever

        with self._lock:
            if self._retriever is None:
                self._retriever = Retriever(self.settings)
            return self._retriever

    # --- answering ---------------------------------------------------------------------------------
    def ask(
        self,
        conversation_id: str,
        question: str,
        overrides: dict[str, Any] | None = None,
        on_event: EventCallback | None = None,
    ) -> Message:
        """Answer `question` in a conversation; returns the kept answer, or the kept error message.

        A question longer than `app.max_question_chars` is kept cut short and answered with an error."""
        limit = self.settings.app.max_question_chars
        history = self.conversations.history(conversation_id)
        kept = question if len(question) <= limit else question[:limit] + "\u2026"
        self.conversations.add_user(conversation_id, kept)
        try:
            if len(question) > limit:
                raise QuestionTooLong(
                    f"The question is {len(question):,} characters long; the limit is {limit:,} "
                    "(app.max_question_chars). Ask a shorter question."
                )
            if self.library().empty:
                raise LibraryEmpty("The library is empty: add papers first (sidebar, or `cove ingest`).")
            settings = with_overrides(self.settings, session_overrides(overrides))
            engine = AnswerEngine(settings, retriever=self.retriever())
            answer = engine.ask(question, history, on_event=on_event, id=f"{conversation_id}-{int(time.time())}")
            return self.conversations.add_answer(conversation_id, answer)
        except Exception as err:  # every failure, storing the answer included, becomes a message
            log.warning("answering %r failed", question[:200], exc_info=True)
            return self.conversations.add_error(conversation_id, friendly_error(err))
