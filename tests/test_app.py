"""The Streamlit chat app through Streamlit's AppTest: the real script, the real answer engine and
bundled model over a real small library (Transformer, LoRA, a note), real conversation storage."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import ROOT, make_text_pdf
from streamlit.testing.v1 import AppTest

from app.markdown import answer_markdown, citation_link, md
from cove.catalog import Catalog, DocumentRecord
from cove.engine import REFUSAL
from cove.untrusted import plain_text
from service.conversations import ConversationStore, export_markdown

APP = str(ROOT / "app" / "streamlit_app.py")
HEADS = "How many attention heads does the base Transformer use?"
LORA_RANK = "What rank r does LoRA use for its adaptation matrices?"
NOTE = "Multi-head attention uses eight heads in the base model. "
# The app's status label for each mode an answer can have (app/streamlit_app.py, `finish`).
ANSWERED_LABEL = {
    "extractive": "Answered with quotes from the sources",
    "quoted": "Answered with quotes and checked sentences",
    "generated": "Answered and checked",
}
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
    messages = chat_messages(library_home, at)
    assert [m.role for m in messages] == ["user", "assistant"]
    answer = messages[1].answer
    assert not answer["refused"] and answer["citations"] and answer["pipeline"] == "cove", answer["answer"]
    assert re.search(r"\b8\b", answer["answer"]), answer["answer"]  # the paper: h = 8 parallel attention layers
    # The status names the answer it finished with (the library answers this: never "Refused").
    assert at.status[0].label.startswith(ANSWERED_LABEL[answer["mode"]]), (at.status[0].label, answer["mode"])
    shown = " ".join(m.value for m in at.chat_message[1].markdown)
    first = answer["citations"][0]
    assert f"](/cove/doc/{first['doc_id']}#page={first['page']}" in shown  # marker opens the cited page
    assert f"page {first['page']}" in shown and first["title"] in shown  # sources panel
    labels = [e.label for e in at.expander]
    assert any(label.startswith("Sources (") for label in labels)
    checks = answer["verification"]
    decided = [v for v in checks if v["status"] in ("confirmed", "contradicted", "answered") and v["answer"]]
    assert decided, checks  # at least one verification question was answered from the library's text
    confirmed = sum(1 for v in checks if v["supported"])
    assert f"Verification: {len(checks)} questions, {confirmed} confirmed" in labels  # shown by default
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
    ask(at, LORA_RANK)
    answer = chat_messages(library_home, at)[1].answer
    assert not answer["refused"] and answer["citations"], answer["answer"]  # the LoRA paper answers it
    assert at.status[0].label.startswith(ANSWERED_LABEL[answer["mode"]]), at.status[0].label
    assert answer["pipeline"] == "baseline"
    assert len(answer["retrieved"]) == 3
    assert answer["verification"] == [] and answer["prompt_versions"] == {"answer": 2}
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
    assert f"p. {cited['page']}" in exported and md(plain_text(cited["quote"], 1000)) in exported
    assert again.get("download_button")  # the export button is offered for the open chat


def test_model_failure_is_a_message_and_the_chat_goes_on(library_home, monkeypatch, tmp_path):
    import streamlit as st

    st.cache_resource.clear()  # the service is built from these settings
    monkeypatch.setenv("COVE_MODEL__MODEL", str(tmp_path / "missing.gguf"))
    at = ask(start(library_home, monkeypatch), HEADS)
    assert at.error and "model could not answer" in at.error[0].value
    assert "missing.gguf" in at.error[0].value
    chat_id = at.session_state.chat_id

    monkeypatch.delenv("COVE_MODEL__MODEL")  # the settings are fixed; a restart picks up the change
    st.cache_resource.clear()
    again = start(library_home, monkeypatch)
    again.button(key=f"chat-{chat_id}").click().run()
    ask(again, HEADS)
    roles = [m.role for m in chat_messages(library_home, again)]
    assert roles == ["user", "error", "user", "assistant"]  # the question and the failure are kept
    assert len(again.chat_message) == 4


def test_settings_name_the_model_and_a_session_cannot_choose_another(library_home, monkeypatch):
    """The model, a server URL or a GGUF path are not per-session choices (an SSRF and file door):
    the panel has no such inputs, and session state set by hand changes nothing."""
    import streamlit as st

    st.cache_resource.clear()
    at = start(library_home, monkeypatch)
    keys = {w.key for w in at.text_input} | {w.key for w in at.selectbox}
    assert not keys & {"model_choice", "gguf_path", "openai_url", "openai_model", "add_folder"}, keys
    assert not [w for w in at.text_input if "URL" in w.label or "path" in w.label.lower()]
    assert any("Model: bundled SmolLM2-135M-Instruct" in c.value for c in at.caption)
    # A crafted session (the old widget keys set directly) still gets the configured model.
    at.session_state["model_choice"] = "openai"
    at.session_state["openai_url"] = "http://127.0.0.1:9/v1"
    at.session_state["gguf_path"] = "/etc/passwd"
    ask(at, HEADS)
    answer = chat_messages(library_home, at)[1].answer
    assert answer["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf (run as Q8_0)", answer.get("model")


def test_local_paths_are_added_only_from_configured_roots(cove_home, monkeypatch, tmp_path):
    at = start(cove_home, monkeypatch)
    assert "add_folder" not in {w.key for w in at.text_input}  # default: uploads only

    import streamlit as st

    root, elsewhere = tmp_path / "papers", tmp_path / "private"
    root.mkdir()
    elsewhere.mkdir()
    (root / "notes.md").write_text("# Notes\n\n" + NOTE * 8)
    (elsewhere / "diary.md").write_text("# Diary\n\n" + "Private thoughts of the user. " * 20)
    (root / "escape").symlink_to(elsewhere)  # inside the root, leading out of it
    monkeypatch.setenv("COVE_APP__LOCAL_ROOTS", json.dumps([str(root)]))
    st.cache_resource.clear()
    at = start(cove_home, monkeypatch)
    for path in (elsewhere / "diary.md", root / "escape" / "diary.md", root / ".." / "private"):
        at.text_input(key="add_folder").set_value(str(path))
        at.button(key="add_papers").click().run()
        assert any("not found inside the folders that may be read" in e.value for e in at.error), path
    at.text_input(key="add_folder").set_value(str(root / "notes.md"))
    at.button(key="add_papers").click().run()
    assert any("Added 1" in s.value for s in at.success)
    catalog = Catalog(cove_home / "library.sqlite")
    sources = [d.source for d in catalog.all()]
    catalog.close()
    assert sources == ["notes.md"], sources  # the diary was never indexed


def test_question_box_is_capped(library_home, monkeypatch):
    """The browser cuts typing at `app.max_question_chars`; the service refuses longer ones anyway
    (tests/test_chat_safety.py), since a crafted session can send anything."""
    import streamlit as st

    monkeypatch.setenv("COVE_APP__MAX_QUESTION_CHARS", "60")
    st.cache_resource.clear()
    at = start(library_home, monkeypatch)
    assert at.chat_input(key="question").proto.max_chars == 60
    st.cache_resource.clear()


XSS = "<img src=x onerror=parent.__pwned=1>"
ANCHOR = "x)<iframe srcdoc=\"<img src=x onerror=parent.__pwned=1>\"></iframe>"


def test_hostile_strings_are_shown_as_text_never_as_html(library_home, monkeypatch):
    """A kept answer whose citations carry the issue's payloads (title, file name, anchor, quote,
    a javascript: URL) and a failed document with a hostile name: no element may render HTML, every
    "<" reaches Markdown escaped, and every link goes to http(s) or the app's own page route."""
    import streamlit as st

    store = ConversationStore(library_home / "chats.sqlite")
    chat = store.create()
    store.add_user(chat.id, f"What about {XSS}?")
    citations = [
        {"n": 1, "title": f"[click](javascript:parent.__pwned=1) {XSS}", "source": f"{XSS}.pdf",
         "doc_id": "file-x-1", "page": 2, "quote": f"Quoted <b>{XSS}</b> $x$", "url": "file:///tmp/x.pdf#page=2"},
        {"n": 2, "title": "Article", "source": "https://example.org/post", "doc_id": "web-x-2", "page": 1,
         "quote": "q", "url": f"https://example.org/post#{ANCHOR}"},
        {"n": 3, "title": "JS", "source": "js", "doc_id": "../../etc", "page": 1, "quote": "q",
         "url": "javascript:parent.__pwned=1"},
    ]  # fmt: skip
    store.add_answer(chat.id, {"answer": f"It says {XSS} [1]. And [2]. And [3].", "citations": citations,
                               "pipeline": "baseline", "mode": "quoted"})  # fmt: skip
    store.add_error(chat.id, f"Adding papers failed: {XSS}")
    store.close()
    catalog = Catalog(library_home / "library.sqlite")
    catalog.upsert(DocumentRecord(f"file-{chat.id}", f"{XSS}.pdf", "/x", "failed", error=f"bad {XSS}"))
    catalog.close()

    st.cache_resource.clear()
    monkeypatch.setenv("COVE_HOME", str(library_home))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["chat"] = chat.id
    at.run()
    assert not at.exception, at.exception
    assert len(at.chat_message) == 3
    texts = [m.proto for m in at.markdown] + [c.proto for c in at.caption]
    assert texts and not [p.body for p in texts if p.allow_html]
    shown = [p.body for p in texts] + [e.value for e in (*at.error, *at.warning)]
    for body in shown:
        assert not re.search(r"(?<!\\)<", body), body  # every "<" escaped: no tag can open
        for target in re.findall(r"(?<!\\)\]\(([^)\s]*)", body):  # Markdown link targets ("\]" is text)
            assert target.startswith(("https://", "http://", "/cove/doc/")), (target, body)
            assert "<" not in target and '"' not in target
    joined = "\n".join(shown)
    assert "/cove/doc/file-x-1#page=2" in joined  # the PDF citation still opens its page
    assert "https://example.org/post#x%29%3Ciframe" in joined  # the anchor percent-encoded
    assert "\\[3\\]" in joined and "/cove/doc/../" not in joined  # no safe link for source 3: plain marker


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
