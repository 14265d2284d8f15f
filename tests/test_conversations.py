"""Conversation storage, Markdown export, the chat service's error handling, and app-side input checks."""

from __future__ import annotations

import pytest
from conftest import make_text_pdf

from cove.llm import ModelError
from cove.settings import load_settings
from ingest.sources import SourceError, collect_sources, from_upload
from service.chat import ChatService, LibraryEmpty, friendly_error
from service.conversations import ConversationStore, export_markdown

ANSWER = {
    "answer": "The base model uses 8 heads [1].",
    "pipeline": "cove",
    "mode": "generated",
    "corrections": ["removed \u201cIt uses 64 heads.\u201d (number 64 not in source [1])"],
    "citations": [
        {
            "n": 1,
            "title": "Attention Is All You Need",
            "source": "1706.03762.pdf",
            "doc_id": "arxiv-1706.03762",
            "page": 5,
            "quote": "In this work we employ h = 8 parallel attention layers, or heads.",
            "url": "https://arxiv.org/pdf/1706.03762#page=5",
        }
    ],
}


def test_conversations_persist_and_reopen(tmp_path):
    store = ConversationStore(tmp_path / "chats.sqlite")
    empty = store.create()
    chat = store.create()
    store.add_user(chat.id, "How many heads does the base Transformer use?")
    store.add_answer(chat.id, ANSWER)
    store.add_user(chat.id, "and its decoder?")
    store.add_error(chat.id, "The model could not answer: model file not found")
    store.close()

    reopened = ConversationStore(tmp_path / "chats.sqlite")  # as after a restart
    assert [c.id for c in reopened.list()] == [chat.id]  # a chat with no message is not listed
    assert reopened.get(empty.id) is not None
    assert reopened.get(chat.id).title == "How many heads does the base Transformer use?"
    messages = reopened.messages(chat.id)
    assert [m.role for m in messages] == ["user", "assistant", "user", "error"]
    assert messages[1].citations[0]["page"] == 5
    # Errors stay in the chat but are not shown to the model as conversation.
    assert [t["role"] for t in reopened.history(chat.id)] == ["user", "assistant", "user"]

    markdown = export_markdown(reopened, chat.id)
    assert markdown.startswith("# How many heads does the base Transformer use?")
    assert "**Answer:** The base model uses 8 heads \\[1\\]." in markdown  # escaped: shows as [1]
    assert "1. Attention Is All You Need, p. 5: \u201cIn this work we employ h = 8" in markdown
    assert "<https://arxiv.org/pdf/1706.03762#page=5>" in markdown
    assert "1 sentence(s) corrected or removed" in markdown
    assert "> **Not answered:** The model could not answer" in markdown

    reopened.delete(chat.id)
    assert reopened.messages(chat.id) == [] and reopened.list() == []
    with pytest.raises(KeyError):
        reopened.add_user(chat.id, "gone")


def test_long_first_question_makes_a_short_title(tmp_path):
    store = ConversationStore(tmp_path / "chats.sqlite")
    chat = store.create()
    store.add_user(chat.id, "word " * 40)
    assert len(store.get(chat.id).title) <= 60 and store.get(chat.id).title.endswith("\u2026")


def test_asking_an_empty_library_keeps_the_question_and_says_why(cove_home):
    service = ChatService(load_settings())
    chat = service.conversations.create()
    message = service.ask(chat.id, "What is LoRA?")
    assert message.role == "error" and "library is empty" in message.content
    assert [m.role for m in service.conversations.messages(chat.id)] == ["user", "error"]


def test_friendly_errors_name_the_cause_without_a_traceback():
    assert "model could not answer: model file not found" in friendly_error(ModelError("model file not found"))
    assert friendly_error(LibraryEmpty("The library is empty")) == "The library is empty"
    text = friendly_error(ValueError("boom"))
    assert "ValueError: boom" in text and "Traceback" not in text


def test_uploads_are_checked_and_saved_once(tmp_path):
    pdf = make_text_pdf("Some text. " * 30)
    first = from_upload("My Paper.pdf", pdf, tmp_path / "up", max_bytes=10_000_000)
    again = from_upload("My Paper.pdf", pdf, tmp_path / "up", max_bytes=10_000_000)
    assert first.doc_id == again.doc_id and first.source == "My Paper.pdf" and first.local
    assert len(list((tmp_path / "up").iterdir())) == 1
    other = from_upload("My Paper.pdf", make_text_pdf("Other text. " * 30), tmp_path / "up", max_bytes=10_000_000)
    assert other.doc_id != first.doc_id and len(list((tmp_path / "up").iterdir())) == 2  # kept by content hash
    # Named like an arXiv paper: the id is only claimed (ingest keeps it if page 1 has the stamp).
    arxiv = from_upload("1706.03762v7.pdf", pdf, tmp_path / "up", max_bytes=10_000_000)
    assert arxiv.doc_id == "arxiv-1706.03762" and arxiv.arxiv_unproven
    for name, data, reason in [
        ("x.pdf", b"", "empty"),
        ("x.pdf", b"<html>not a pdf</html>", "not a PDF"),
        ("x.pdf", pdf, "over the upload limit"),
    ]:
        with pytest.raises(SourceError, match=reason):
            from_upload(name, data, tmp_path / "up", max_bytes=100 if "limit" in reason else 10_000_000)


def test_collect_sources_reports_bad_input_and_keeps_the_rest(tmp_path):
    sources, bad = collect_sources(
        paths=[tmp_path / "missing"], items=["2106.09685", "not a url", "https://example.org/p.pdf", " "]
    )
    assert [s.doc_id for s in sources][0] == "arxiv-2106.09685" and len(sources) == 2
    assert [b[0] for b in bad] == [str(tmp_path / "missing"), "not a url"]
