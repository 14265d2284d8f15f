"""Conversations: chats kept in SQLite under the data directory, reopened after a restart, exported.

    store = ConversationStore(settings.chats_path)
    chat = store.create()
    store.add_user(chat.id, "How many heads?")
    store.add_answer(chat.id, answer)          # an `cove.engine.Answer`, kept whole as JSON
    store.history(chat.id)                     # [{role, content}] for the next question
    export_markdown(store, chat.id)            # the chat with its citations, as Markdown

A failed turn (the model could not load, the library is missing) is kept as an `error` message:
the question stays in the conversation, and the error is left out of the history the model sees.
Every write commits at once, so a killed app loses nothing that was shown.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.catalog import open_sqlite
from cove.untrusted import md, plain_text, safe_url

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,            -- 'user' | 'assistant' | 'error'
    content TEXT NOT NULL,
    answer_json TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""

TITLE_CHARS = 60


@dataclass
class Conversation:
    id: str
    title: str
    created_at: float
    updated_at: float


@dataclass
class Message:
    id: int
    role: str  # 'user', 'assistant' or 'error'
    content: str
    answer: dict[str, Any] = field(default_factory=dict)  # Answer.to_json() for assistant messages
    created_at: float = 0.0

    @property
    def citations(self) -> list[dict[str, Any]]:
        return self.answer.get("citations", [])


class ConversationStore:
    """The chats of one data directory. Safe to share between threads (one lock around SQLite)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.db = open_sqlite(path, SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # --- conversations -----------------------------------------------------------------------------
    def create(self, title: str = "") -> Conversation:
        now = time.time()
        chat = Conversation(uuid.uuid4().hex[:12], title, now, now)
        self._run("INSERT INTO conversations VALUES (?, ?, ?, ?)", (chat.id, chat.title, now, now))
        return chat

    def get(self, conversation_id: str) -> Conversation | None:
        rows = self._run("SELECT * FROM conversations WHERE id = ?", (conversation_id,))
        return Conversation(*rows[0]) if rows else None

    def list(self, limit: int = 50) -> list[Conversation]:
        """Most recently used first; conversations with no message are left out."""
        rows = self._run(
            "SELECT c.* FROM conversations c WHERE EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id)"
            " ORDER BY c.updated_at DESC LIMIT ?",
            (limit,),
        )
        return [Conversation(*row) for row in rows]

    def rename(self, conversation_id: str, title: str) -> None:
        self._run("UPDATE conversations SET title = ? WHERE id = ?", (title.strip(), conversation_id))

    def delete(self, conversation_id: str) -> None:
        self._run("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # --- messages ---------------------------------------------------------------------------------
    def add_user(self, conversation_id: str, text: str) -> Message:
        message = self._add(conversation_id, "user", text, {})
        chat = self.get(conversation_id)
        if chat is not None and not chat.title:  # the first question names the chat
            self.rename(conversation_id, _title(text))
        return message

    def add_answer(self, conversation_id: str, answer: Any) -> Message:
        data = answer.to_json() if hasattr(answer, "to_json") else dict(answer)
        return self._add(conversation_id, "assistant", data.get("answer", ""), data)

    def add_error(self, conversation_id: str, text: str) -> Message:
        return self._add(conversation_id, "error", text, {})

    def _add(self, conversation_id: str, role: str, content: str, answer: dict) -> Message:
        if self.get(conversation_id) is None:
            raise KeyError(f"no conversation {conversation_id!r}")
        now = time.time()
        blob = json.dumps(answer, ensure_ascii=False) if answer else ""
        with self._lock:
            cursor = self.db.execute(
                "INSERT INTO messages (conversation_id, role, content, answer_json, created_at) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, blob, now),
            )
            self.db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
        return Message(int(cursor.lastrowid or 0), role, content, answer, now)

    def messages(self, conversation_id: str) -> list[Message]:
        rows = self._run(
            "SELECT id, role, content, answer_json, created_at FROM messages WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [Message(i, role, content, json.loads(blob) if blob else {}, at) for i, role, content, blob, at in rows]

    def history(self, conversation_id: str) -> list[dict[str, str]]:
        """The turns the engine sees for a follow-up: questions and answers, not errors."""
        return [
            {"role": m.role, "content": m.content}
            for m in self.messages(conversation_id)
            if m.role in ("user", "assistant")
        ]


def _title(question: str) -> str:
    text = " ".join(question.split())
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rsplit(" ", 1)[0] + "\u2026"


def export_markdown(store: ConversationStore, conversation_id: str) -> str:
    """The conversation as Markdown: each question, each answer with its numbered sources.

    Questions, answers, titles and quotes are escaped and only http(s) links are written, so a hostile
    document name or quote stays text in whatever Markdown viewer opens the file."""
    chat = store.get(conversation_id)
    if chat is None:
        raise KeyError(f"no conversation {conversation_id!r}")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(chat.created_at))
    lines = [f"# {md(plain_text(chat.title, 200)) or 'Conversation'}", "", f"_Cove conversation, started {when}._", ""]
    for message in store.messages(conversation_id):
        if message.role == "user":
            lines += [f"**Question:** {md(message.content)}", ""]
        elif message.role == "error":
            lines += [f"> **Not answered:** {md(plain_text(message.content, 2000))}", ""]
        else:
            lines += [f"**Answer:** {md(message.content)}", ""]
            lines += citation_lines(message.citations)
            note = answer_note(message.answer)
            if note:
                lines += [f"_{note}_", ""]
    return "\n".join(lines).rstrip() + "\n"


def citation_lines(citations: list[dict[str, Any]]) -> list[str]:
    """Markdown lines listing numbered sources: title, page, quoted passage, link."""
    if not citations:
        return []
    lines = ["Sources:", ""]
    for c in citations:
        url = safe_url(str(c.get("url", "")))
        link = f" <{url}>" if url else ""
        title = md(plain_text(str(c.get("title") or c.get("source") or ""), 300))
        quote = md(plain_text(str(c.get("quote", "")), 1000))
        key = f" [@{md(plain_text(str(c['citekey']), 100))}]" if c.get("citekey") else ""
        lines.append(f"{int(c['n'])}. {title}{key}, p. {int(c['page'])}: \u201c{quote}\u201d{link}")
    return lines + [""]


def answer_note(answer: dict[str, Any]) -> str:
    """How an answer was produced, in words: pipeline, and whether the checks rewrote it."""
    if not answer:
        return ""
    mode = answer.get("mode", "generated")
    pipeline = {"cove": "chain-of-verification", "baseline": "single answer"}.get(answer.get("pipeline", ""), "")
    if mode == "refused":
        return "Refused: the library does not cover the question."
    if mode == "extractive":
        return f"Quoted from the sources ({pipeline}): the model's own sentences were not added."
    if mode == "quoted":
        return f"Quoted from the sources, with checked sentences from the model ({pipeline})."
    corrected = sum(1 for c in answer.get("corrections", []) if correction_change(c) in ("corrected", "removed"))
    return f"{pipeline.capitalize()}; {corrected} sentence(s) corrected or removed by the checks."


def correction_text(correction: dict[str, Any] | str) -> str:
    """A correction as a line of text (answers kept before corrections were typed hold strings)."""
    return correction if isinstance(correction, str) else str(correction.get("text", ""))


def correction_change(correction: dict[str, Any] | str) -> str:
    if isinstance(correction, str):
        return correction.split(" ", 1)[0]
    return str(correction.get("change", ""))
