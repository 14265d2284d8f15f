"""The chat service's limits, on the real small library and the bundled model: questions have a length
cap and an overall deadline (the model is stopped between tokens), a failure while keeping an answer
becomes a message, a session cannot choose the model, upstream error bodies stay out of the chat,
loaded models are bounded, and the Markdown export keeps hostile strings inert."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_answer import HEADS

from cove import events as ev
from cove import llm
from cove.engine import AnswerDeadline, AnswerEngine
from cove.settings import ModelSettings, with_overrides
from service.chat import ChatService, session_overrides
from service.conversations import ConversationStore, export_markdown

pytestmark = pytest.mark.slow

XSS = "<img src=x onerror=parent.__pwned=1>"


@pytest.fixture
def service(small_library, tmp_path):
    settings = with_overrides(small_library, {"home": str(tmp_path / "home")})
    shutil.copytree(small_library.home_dir, settings.home_dir)
    return ChatService(settings)


def test_overlong_question_is_kept_cut_short_with_a_clear_error(service):
    limit = service.settings.app.max_question_chars
    chat = service.conversations.create()
    message = service.ask(chat.id, "heads " * limit)
    assert message.role == "error" and f"the limit is {limit:,}" in message.content
    kept = service.conversations.messages(chat.id)
    assert [m.role for m in kept] == ["user", "error"] and len(kept[0].content) == limit + 1


def test_a_failure_while_keeping_the_answer_becomes_a_message(service, monkeypatch):
    chat = service.conversations.create()

    def disk_full(*args):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(service.conversations, "add_answer", disk_full)  # scripted: a full disk
    message = service.ask(chat.id, HEADS, {"answer": {"pipeline": "baseline"}})
    assert message.role == "error" and "disk is full" in message.content
    assert [m.role for m in service.conversations.messages(chat.id)] == ["user", "error"]


class StepClock:
    """A clock for `answer.deadline_s` that stands still until `expire()`, then jumps past any deadline:
    the deadline passes at a chosen point, whatever the machine's speed."""

    def __init__(self) -> None:
        self.expired = False
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return 1e12 if self.expired else 0.0


def test_deadline_stops_the_model_between_tokens(small_library):
    engine = AnswerEngine(with_overrides(small_library, {"answer": {"pipeline": "baseline"}}))
    clock = engine.clock = StepClock()
    tokens: list[str] = []

    def on_event(event) -> None:
        if isinstance(event, ev.DraftToken):
            tokens.append(event.text)
            if len(tokens) == 3:
                clock.expired = True  # the deadline passes while the model is streaming

    with pytest.raises(AnswerDeadline, match="no answer within"):
        engine.ask(HEADS, on_event=on_event)
    assert len(tokens) == 3, "the model was stopped at the next token"
    answer = engine.ask(HEADS)  # the model is usable again at once
    assert answer.citations and not answer.refused


def test_deadline_during_verification_answers_from_the_checked_draft(small_library):
    engine = AnswerEngine(with_overrides(small_library, {"answer": {"pipeline": "cove"}}))
    clock = engine.clock = StepClock()

    def on_event(event) -> None:
        if isinstance(event, ev.DraftReady):
            clock.expired = True  # after the draft, before the verification questions

    answer = engine.ask(HEADS, on_event=on_event)
    assert any("answered from the checked draft" in c["text"] for c in answer.corrections), answer.corrections
    assert answer.verification == [] and answer.draft and answer.answer


def test_deadline_in_the_chat_is_a_clear_message(service):
    slow = ChatService(with_overrides(service.settings, {"answer": {"deadline_s": 1e-6}}))
    chat = slow.conversations.create()
    message = slow.ask(chat.id, HEADS)
    assert message.role == "error" and message.content.startswith("Not answered in time: no answer within")


def test_a_session_cannot_choose_the_model_or_anything_else():
    chosen = session_overrides(
        {
            "model": {"backend": "openai", "openai_url": "http://169.254.169.254/v1"},
            "retrieve": {"k": 3, "candidates": 1000},
            "answer": {"pipeline": "baseline", "prompts_dir": "/etc"},
            "home": "/",
            "app": "x",
        }
    )
    assert chosen == {"retrieve": {"k": 3}, "answer": {"pipeline": "baseline"}}


def test_loaded_models_are_bounded_least_recently_used_first(monkeypatch):
    monkeypatch.setattr(llm, "_MODELS", type(llm._MODELS)())  # this test's own cache
    settings = [ModelSettings(backend="openai", openai_url=f"http://127.0.0.1:9/v{i}", max_loaded=2) for i in range(3)]
    first, second = llm.load_chat_model(settings[0]), llm.load_chat_model(settings[1])
    assert llm.load_chat_model(settings[0]) is first  # used again: now the most recent
    llm.load_chat_model(settings[2])
    assert len(llm._MODELS) == 2
    assert llm.load_chat_model(settings[0]) is first and llm.load_chat_model(settings[1]) is not second


class _Failing(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.dumps({"error": "SECRET-UPSTREAM-BODY token=abc123"}).encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_model_server_error_body_stays_out_of_the_chat(service, caplog):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        on_server = ChatService(with_overrides(service.settings, {"model": {"backend": "openai", "openai_url": url}}))
        chat = on_server.conversations.create()
        with caplog.at_level("WARNING", logger="cove.llm"):
            message = on_server.ask(chat.id, HEADS)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert message.role == "error" and "HTTP 500" in message.content and url in message.content
    assert "SECRET" not in message.content and "abc123" not in message.content
    assert any("SECRET-UPSTREAM-BODY" in r.getMessage() for r in caplog.records), "the body is logged"


def test_markdown_export_keeps_hostile_strings_inert(tmp_path):
    store = ConversationStore(tmp_path / "chats.sqlite")
    chat = store.create()
    store.add_user(chat.id, f"[x](javascript:alert(1)) {XSS}")
    store.add_answer(
        chat.id,
        {
            "answer": f"Answer {XSS} [1].",
            "citations": [
                {"n": 1, "title": f"[t](javascript:x) {XSS}", "page": 3, "quote": "<script>q</script>\n# h",
                 "url": "javascript:parent.__pwned=1"},
                {"n": 2, "title": "Web", "page": 1, "quote": "q", "url": "https://example.org/a#x)<iframe>"},
            ],  # fmt: skip
        },
    )
    store.add_error(chat.id, f"failed: {XSS}")
    text = export_markdown(store, chat.id)
    assert not re.search(r"(?<!\\)<(?!https://)", text), text  # no tag opens; autolinks are https only
    assert not re.search(r"(?<!\\)\]\(", text), text  # no Markdown link
    assert "javascript:parent" not in text and "<https://example.org/a#x%29%3Ciframe%3E>" in text
    assert "\\<script\\>q\\</script\\> \\# h" in text  # the quote: one line, escaped
