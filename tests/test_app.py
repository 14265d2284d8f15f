"""The Streamlit chat app through Streamlit's AppTest: the real script, the real answer engine and
bundled model over a real small library (Transformer, LoRA, a note), real conversation storage."""

from __future__ import annotations

import shutil

import pytest
from conftest import ROOT, make_text_pdf
from streamlit.testing.v1 import AppTest

from app.markdown import answer_markdown, citation_link, md
from cove.answer import REFUSAL
from cove.conversations import ConversationStore, export_markdown

APP = str(ROOT / "app" / "streamlit_app.py")
HEADS = "How many attention heads does the base Transformer use?"
NOTE = "Multi-head attention uses eight heads in the base model. "
TIMEOUT = 600  # one CoVe answer takes ~10 s on 2 cores; a loaded CI machine is slower


def start(home, monkeypatch) -> AppTest:
    monkeypatch.setenv("COVE_HOME", str(home))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input(key="question").set_value(question).run()
    assert not at.exception, at.exception
    return at


def chat_messages(home, at: AppTest):
    store = ConversationStore(home / "chats.sqlite")
    try:
        return store.messages(at.session_state.chat_id)
    finally:
        store.close()


@pytest.fixture
def library_home(small_library, tmp_path):
    """A private copy of the small real library, so each test's chats and additions are its own."""
    home = tmp_path / "home"
    shutil.copytree(small_library.home_dir, home)
    return home


# --- formatting (no Streamlit) -------------------------------------------------------------------------


def test_answer_markdown_links_markers_and_escapes_text():
    citations = [{"n": 2, "doc_id": "arxiv-1706.03762", "page": 5, "title": "Attention", "url": "file:///a.pdf#page=5"}]
    text = answer_markdown("It costs $3 and *8* heads [2]. Unknown [7].", citations)
    assert "\\$3" in text and "\\*8\\*" in text  # "$" would start LaTeX, "*" emphasis
    assert '[\\[2\\]](/cove/doc/arxiv-1706.03762#page=5 "Attention, p. 5")' in text
    assert "\\[7\\]" in text and "(/cove/doc" not in text.split("Unknown")[1]  # no source 7: no link
    html = {"n": 1, "doc_id": "web-x", "page": 1, "url": "https://example.org/post#intro"}
    assert citation_link(html) == "https://example.org/post#intro"
    assert md("<script>") == "\\<script\\>"


# --- flows ---------------------------------------------------------------------------------------------


def test_empty_library_shows_how_to_add_papers(cove_home, monkeypatch):
    at = start(cove_home, monkeypatch)
    assert any("library is empty" in i.value for i in at.info)
    assert at.chat_input(key="question").proto.disabled
    assert at.button(key="add_reading_list").label == "Add the curated reading list"
    text = " ".join(m.value for m in at.markdown)
    assert "cove ingest --from" in text and "Upload PDFs" in text


def test_ask_gives_cited_answer_with_verification_and_keeps_it(library_home, monkeypatch):
    at = ask(start(library_home, monkeypatch), HEADS)
    assert at.status[0].label.startswith(("Answered", "Refused")) is True
    messages = chat_messages(library_home, at)
    assert [m.role for m in messages] == ["user", "assistant"]
    answer = messages[1].answer
    assert not answer["refused"] and answer["citations"] and answer["pipeline"] == "cove"
    shown = " ".join(m.value for m in at.chat_message[1].markdown)
    first = answer["citations"][0]
    assert f"](/cove/doc/{first['doc_id']}#page={first['page']}" in shown  # marker opens the cited page
    assert f"page {first['page']}" in shown and first["title"] in shown  # sources panel
    labels = [e.label for e in at.expander]
    assert any(label.startswith("Sources (") for label in labels)
    assert any(label.startswith("Verification: ") for label in labels)  # shown by default
    # The library sidebar tells what is there.
    assert any(label.startswith("Library: 3 papers") for label in labels)


def test_off_topic_question_is_refused(library_home, monkeypatch):
    at = ask(start(library_home, monkeypatch), "What is a good recipe for banana bread?")
    answer = chat_messages(library_home, at)[1].answer
    assert answer["refused"] and answer["answer"].startswith(REFUSAL)
    assert at.status[0].label.startswith("Refused")
    assert any(REFUSAL.rstrip(".") in m.value for m in at.chat_message[1].markdown)


def test_settings_pipeline_sources_and_verification(library_home, monkeypatch):
    at = start(library_home, monkeypatch)
    at.radio(key="pipeline").set_value("baseline")
    at.slider(key="k").set_value(3)
    at.toggle(key="show_verification").set_value(False)
    at.run()
    ask(at, "What rank r does LoRA use for its adaptation matrices?")
    answer = chat_messages(library_home, at)[1].answer
    assert answer["pipeline"] == "baseline"
    assert len(answer["retrieved"]) == 3
    assert answer["verification"] == [] and answer["prompt_versions"] == {"answer": 1} or answer["refused"]
    assert not any(e.label.startswith("Verification") for e in at.expander)
    # The settings hold for the session's next question too.
    assert at.radio(key="pipeline").value == "baseline" and at.slider(key="k").value == 3


def test_follow_up_then_reopen_after_restart_and_export(library_home, monkeypatch):
    at = ask(start(library_home, monkeypatch), HEADS)
    ask(at, "and its decoder?")
    chat_id = at.session_state.chat_id
    messages = chat_messages(library_home, at)
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    follow_up = messages[3].answer
    assert "decoder" in follow_up["query"] and "attention heads" in follow_up["query"]

    # A restart: the shared service is dropped, a new session opens with no chat selected.
    import streamlit as st

    st.cache_resource.clear()
    again = start(library_home, monkeypatch)
    assert not again.chat_message  # a fresh session starts with a new chat
    again.button(key=f"chat-{chat_id}").click().run()
    assert again.session_state.chat_id == chat_id
    assert len(again.chat_message) == 4
    assert HEADS in again.chat_message[0].markdown[0].value.replace("\\", "")
    exported = export_markdown(ConversationStore(library_home / "chats.sqlite"), chat_id)
    assert exported.startswith(f"# {HEADS}") and "**Question:** and its decoder?" in exported
    cited = messages[1].answer["citations"][0]
    assert f"p. {cited['page']}" in exported and cited["quote"] in exported
    assert again.get("download_button")  # the export button is offered for the open chat


def test_model_failure_is_a_message_and_the_chat_goes_on(library_home, monkeypatch, tmp_path):
    at = start(library_home, monkeypatch)
    at.selectbox(key="model_choice").set_value("gguf").run()
    at.text_input(key="gguf_path").set_value(str(tmp_path / "missing.gguf")).run()
    ask(at, HEADS)
    assert at.error and "model could not answer" in at.error[0].value
    assert "missing.gguf" in at.error[0].value
    at.selectbox(key="model_choice").set_value("bundled").run()
    ask(at, HEADS)
    roles = [m.role for m in chat_messages(library_home, at)]
    assert roles == ["user", "error", "user", "assistant"]  # the question and the failure are kept
    assert len(at.chat_message) == 4


def test_upload_adds_a_pdf_and_rejects_a_fake_one(cove_home, monkeypatch):
    at = start(cove_home, monkeypatch)
    at.file_uploader[0].set_value(
        [
            ("notes.pdf", b"this is not a PDF at all", "application/pdf"),
            (
                "attention-notes.pdf",
                make_text_pdf("Multi-head attention uses eight heads in the base model. " * 6),
                "application/pdf",
            ),
        ]
    )
    at.button(key="add_papers").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("notes.pdf: not a PDF" in e for e in errors), errors
    assert any("Added 1" in s.value for s in at.success)
    assert any(e.label.startswith("Library: 1 paper,") for e in at.expander)
    assert not at.chat_input(key="question").proto.disabled  # the library is ready for questions
