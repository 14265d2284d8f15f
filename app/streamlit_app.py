"""Cove's web chat: ask the papers, watch the verification, open the cited page.

A thin Streamlit layer over `cove.chat.ChatService` (answering, conversations, the library) and
`ingest` (adding papers). Start it with `cove chat`; tests drive it with Streamlit's AppTest and a
real headless Chromium. Layout:

- main area: the conversation (`st.chat_message`), each answer with numbered citation markers that
  open the PDF at the cited page, a sources panel, and the chain-of-verification steps in a
  collapsed status panel (live while answering) plus what the checks changed;
- sidebar: chats (new, reopen, export as Markdown, delete), the library (status, pages, chunks,
  failures), adding papers (arXiv ids, URLs, a local folder, PDF upload) and settings.

One `ChatService` per data directory is shared by every browser session of the process, so the
models load once; model calls queue, and a session that waits says so.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from app.markdown import answer_markdown, citation_link, md, verification_line
from cove.answer import AnswerEvent, Verification
from cove.chat import ChatService, LibraryStatus, friendly_error
from cove.conversations import Message, answer_note, export_markdown
from cove.settings import BUNDLED_CHAT_MODEL, CoveSettings, load_settings

MODEL_CHOICES = {
    "bundled": "Bundled SmolLM2-135M (offline)",
    "gguf": "A GGUF file",
    "openai": "An OpenAI-compatible server",
}
STAGE_LABELS = {
    "retrieve": "Searching the library…",
    "draft": "Drafting an answer…",
    "plan": "Planning verification questions…",
    "verify": "Answering the verification questions…",
    "revise": "Revising the draft…",
    "check": "Checking every sentence against its source…",
}
INGEST_STAGES = {"fetch": (0.0, 0.2), "parse": (0.2, 0.5), "embed": (0.5, 1.0)}


# --- shared state ------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _service(home: str) -> ChatService:
    return ChatService(load_settings({"home": home}))


def service() -> ChatService:
    """The ChatService of the data directory in COVE_HOME (read on every run: tests switch it)."""
    return _service(str(load_settings().home_dir))


def init_session(settings: CoveSettings) -> None:
    """Per-browser-session defaults, taken from the settings object (env COVE_*)."""
    defaults = {
        "pipeline": settings.answer.pipeline,
        "k": settings.retrieve.k,
        "show_verification": settings.app.show_verification,
        "model_choice": _model_choice(settings),
        "gguf_path": "" if settings.model.model == BUNDLED_CHAT_MODEL else settings.model.model,
        "openai_url": settings.model.openai_url,
        "openai_model": settings.model.openai_model,
        "upload_key": 0,
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)
    if "chat_id" not in st.session_state:
        st.session_state.chat_id = st.query_params.get("chat", "")


def _model_choice(settings: CoveSettings) -> str:
    if settings.model.backend == "openai":
        return "openai"
    return "bundled" if settings.model.model == BUNDLED_CHAT_MODEL else "gguf"


def overrides() -> dict[str, Any]:
    """This session's settings, in the nested shape of `CoveSettings`."""
    s = st.session_state
    model: dict[str, Any] = {"backend": "llama-cpp", "model": BUNDLED_CHAT_MODEL}
    if s.model_choice == "gguf":
        model["model"] = s.gguf_path.strip() or BUNDLED_CHAT_MODEL
    elif s.model_choice == "openai":
        model = {"backend": "openai", "openai_url": s.openai_url.strip(), "openai_model": s.openai_model.strip()}
    return {"model": model, "retrieve": {"k": int(s.k)}, "answer": {"pipeline": s.pipeline}}


def open_chat(chat_id: str) -> None:
    st.session_state.chat_id = chat_id
    if chat_id:
        st.query_params["chat"] = chat_id
    else:
        st.query_params.pop("chat", None)


# --- rendering an answer -------------------------------------------------------------------------------
def render_sources(citations: list[dict[str, Any]], expanded: bool = True) -> None:
    if not citations:
        return
    with st.expander(f"Sources ({len(citations)})", expanded=expanded):
        for c in citations:
            title = md(c.get("title") or c.get("source", ""))
            st.markdown(f"**[{c['n']}] {title}**, page {c['page']}")
            st.markdown("> " + md(c["quote"]))
            links = [f"[Open page {c['page']} ↗]({citation_link(c)})"]
            if c.get("url", "").startswith("http") and "#page=" in c["url"]:
                links.append(f"[online copy ↗]({c['url']})")
            st.markdown(" · ".join(links) + f"  \n<small>{c.get('source', '')}</small>", unsafe_allow_html=True)


def render_verification(answer: dict[str, Any]) -> None:
    """The CoVe steps of a finished answer, collapsed: draft, questions with their answers, changes."""
    checks = answer.get("verification", [])
    if answer.get("pipeline") == "cove" and (answer.get("draft") or checks):
        supported = sum(1 for v in checks if v["supported"])
        with st.expander(f"Verification: {len(checks)} questions, {supported} supported"):
            st.markdown("**Draft**")
            st.text(answer.get("draft") or "(empty)")
            for v in checks:
                st.markdown(verification_line(v["question"], v["answer"], v["supported"]))
    corrections = answer.get("corrections", [])
    if corrections:
        with st.expander(f"What the checks changed ({len(corrections)})"):
            for line in corrections:
                st.markdown("- " + md(line))


def render_message(message: Message, show_verification: bool) -> None:
    if message.role == "user":
        with st.chat_message("user"):
            st.markdown(md(message.content))
        return
    with st.chat_message("assistant"):
        if message.role == "error":
            st.error(message.content)
            return
        render_answer(message.answer, show_verification)


def render_answer(answer: dict[str, Any], show_verification: bool, expanded_sources: bool = False) -> None:
    st.markdown(answer_markdown(answer.get("answer", ""), answer.get("citations", [])))
    note = answer_note(answer)
    if note:
        st.caption(note)
    render_sources(answer.get("citations", []), expanded=expanded_sources)
    if show_verification:
        render_verification(answer)


# --- answering live ----------------------------------------------------------------------------------
class LiveAnswer:
    """Draws the engine's AnswerEvents: steps into a collapsed status panel, answer tokens streamed."""

    def __init__(self, show_verification: bool, pipeline: str) -> None:
        self.show = show_verification
        self.final_step = "revise" if pipeline == "cove" else "draft"
        self.status = st.status("Searching the library…", expanded=False)
        self.box = st.empty()
        self.streamed = ""
        self.waited = False

    def __call__(self, event: AnswerEvent) -> None:
        if event.stage == "token":
            if event.data == self.final_step:
                self.streamed += event.message
                self.box.markdown(md(self.streamed) + " ▌")
            return
        if event.stage == "done":
            return
        if event.message.startswith("waiting for the model"):
            self.waited = True
            self.status.update(label="Waiting for the model: another question is being answered…", state="running")
            self.status.write("⏳ Waited for the model: another question was being answered.")
            return
        self.status.update(label=STAGE_LABELS.get(event.stage, event.stage), state="running")
        if self.show:
            self._detail(event)

    def _detail(self, event: AnswerEvent) -> None:
        if event.stage == "verify" and isinstance(event.data, Verification):
            v = event.data
            self.status.markdown(verification_line(v.question, v.answer, v.supported))
        elif event.stage == "retrieve" and isinstance(event.data, list):
            found = ", ".join(f"{r['title'] or r['source']} p.{r['page']}" for r in event.data)
            self.status.markdown("**Retrieved:** " + md(found))
        elif event.stage == "draft" and isinstance(event.data, str):
            self.status.markdown("**Draft:** " + md(event.data or "(empty)"))
        elif event.stage == "plan" and isinstance(event.data, list):
            self.status.markdown(f"**{len(event.data)} verification questions**")
        elif event.stage == "revise" and isinstance(event.data, str):
            self.status.markdown("**Revised:** " + md(event.data or "(empty)"))
        elif event.stage == "check" and isinstance(event.data, list):
            self.status.markdown("**Checks:** " + md("; ".join(event.data) or "every sentence is supported"))

    def finish(self, message: Message) -> None:
        self.box.empty()
        if message.role == "error":
            self.status.update(label="Not answered", state="error", expanded=False)
            st.error(message.content)
            return
        answer = message.answer
        label = {
            "refused": "Refused: the library does not cover this",
            "extractive": "Answered with quotes from the sources",
            "quoted": "Answered with quotes and checked sentences",
        }.get(answer.get("mode", ""), "Answered and checked")
        seconds = answer.get("timings", {}).get("total_s", 0)
        waited = ", after waiting for the model" if self.waited else ""
        self.status.update(label=f"{label} ({seconds:.1f} s{waited})", state="complete", expanded=False)
        render_answer(answer, show_verification=False, expanded_sources=True)
        if self.show:
            render_verification(answer)


def ask(svc: ChatService, question: str) -> None:
    s = st.session_state
    if not s.chat_id:
        open_chat(svc.conversations.create().id)
    with st.chat_message("user"):
        st.markdown(md(question))
    with st.chat_message("assistant"):
        live = LiveAnswer(bool(s.show_verification), s.pipeline)
        message = svc.ask(s.chat_id, question, overrides(), on_event=live)
        live.finish(message)


# --- sidebar --------------------------------------------------------------------------------------------
def sidebar_chats(svc: ChatService) -> None:
    st.sidebar.button(
        "New chat", icon=":material/add:", on_click=open_chat, args=("",), width="stretch", key="new_chat"
    )
    chats = svc.conversations.list(limit=30)
    if not chats:
        return
    st.sidebar.caption("Chats")
    for chat in chats:
        current = chat.id == st.session_state.chat_id
        label = ("▸ " if current else "") + (chat.title or "Untitled")
        st.sidebar.button(label, key=f"chat-{chat.id}", on_click=open_chat, args=(chat.id,), width="stretch")
    if st.session_state.chat_id and svc.conversations.get(st.session_state.chat_id):
        chat_id = st.session_state.chat_id
        left, right = st.sidebar.columns(2)
        left.download_button(
            "Export .md",
            export_markdown(svc.conversations, chat_id),
            file_name=f"cove-chat-{chat_id}.md",
            mime="text/markdown",
            key="export",
        )
        if right.button("Delete chat", key="delete_chat"):
            svc.conversations.delete(chat_id)
            open_chat("")
            st.rerun()


def sidebar_library(svc: ChatService, library: LibraryStatus) -> None:
    with st.sidebar.expander(
        f"Library: {_count(len(library.ready), 'paper')}, {_count(library.pages, 'page')}, "
        f"{_count(library.chunks, 'chunk')}",
        expanded=library.empty,
    ):
        if library.documents:
            st.dataframe(
                [
                    {"Title": d.title or d.source, "Pages": d.pages, "Chunks": d.chunks, "Status": d.status}
                    for d in library.documents
                ],
                hide_index=True,
                width="stretch",
            )
        for d in library.failed:
            st.warning(f"{d.source}: {d.error}")
        add_papers_form(svc)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def add_papers_form(svc: ChatService) -> None:
    """arXiv ids or URLs, a local folder or file, PDF uploads -> one ingest run with a progress bar."""
    s = st.session_state
    st.markdown("**Add papers**")
    items = st.text_area("arXiv ids or URLs, one per line", key="add_items", placeholder="2205.14135")
    folder = st.text_input("Local file or folder", key="add_folder", placeholder="~/papers")
    settings = svc.settings
    uploads = st.file_uploader(
        "PDF files",
        type=["pdf"],
        accept_multiple_files=True,
        key=f"uploads-{s.upload_key}",
        max_upload_size=settings.app.max_upload_mb,
    )
    if st.button("Add to library", key="add_papers", type="primary"):
        add_papers(svc, items.splitlines(), [folder] if folder.strip() else [], uploads or [])
    show_ingest_report()


def add_papers(svc: ChatService, items: list[str], paths: list[str], uploads: list) -> None:
    from ingest.sources import SourceError, collect_sources, from_upload

    sources, bad = collect_sources(paths=paths, items=items)
    limit = svc.settings.app.max_upload_mb * 2**20
    for upload in uploads:
        try:
            sources.append(from_upload(upload.name, upload, svc.settings.uploads_dir, limit))  # streamed
        except SourceError as err:
            bad.append((upload.name, str(err)))
    if not sources and not bad:
        st.session_state.ingest_report = {"errors": ["Nothing to add: type an arXiv id or URL, or pick a PDF."]}
        return
    run_ingest(svc, sources, bad)


def run_ingest(svc: ChatService, sources: list, bad: list[tuple[str, str]]) -> None:
    bar = st.progress(0.0, text="Starting…")

    def progress(event) -> None:
        if event.stage not in INGEST_STAGES:
            return
        start, end = INGEST_STAGES[event.stage]
        share = event.completed / event.total if event.total else 1.0
        bar.progress(min(1.0, start + (end - start) * share), text=f"{event.stage}: {event.source[-40:]}")

    try:
        report = svc.add_papers(sources, bad, progress)
    except Exception as err:  # the library stays as it was; the next run resumes
        st.session_state.ingest_report = {"errors": [f"Adding papers failed: {friendly_error(err)}"]}
    else:
        st.session_state.ingest_report = {
            "added": [r.title or r.source for r in report.ingested],
            "skipped": [r.title or r.source for r in report.skipped],
            "errors": [f"{r.source}: {r.reason}" for r in report.failed],
        }
    st.session_state.upload_key += 1  # a fresh uploader: the same files are not sent twice
    st.rerun()


def show_ingest_report() -> None:
    report = st.session_state.get("ingest_report")
    if not report:
        return
    if report.get("added"):
        st.success(f"Added {len(report['added'])}: " + "; ".join(report["added"]))
    if report.get("skipped"):
        st.info(f"Already in the library: {len(report['skipped'])}")
    for error in report.get("errors", []):
        st.error(error)


def sidebar_settings() -> None:
    with st.sidebar.expander("Settings"):
        st.selectbox("Model", list(MODEL_CHOICES), format_func=MODEL_CHOICES.get, key="model_choice")
        if st.session_state.model_choice == "gguf":
            st.text_input("GGUF path (or hf-repo/name:file.gguf)", key="gguf_path")
        elif st.session_state.model_choice == "openai":
            st.text_input("Server URL", key="openai_url", placeholder="http://127.0.0.1:8080/v1")
            st.text_input("Model name", key="openai_model")
        st.radio(
            "Pipeline",
            ["cove", "baseline"],
            key="pipeline",
            format_func={"cove": "Chain-of-verification", "baseline": "Single answer (faster)"}.get,
        )
        st.slider("Sources per answer", 1, 10, key="k")
        st.toggle("Show verification", key="show_verification")


# --- first screen --------------------------------------------------------------------------------------
def welcome(svc: ChatService) -> None:
    st.info("Your library is empty. Add papers to start asking questions about them.")
    st.markdown(
        "- **The curated reading list** (Attention Is All You Need, GPT-1/2/3, LoRA, FlashAttention, LLaMA, "
        "CoVe, …), downloaded from arXiv: needs internet.\n"
        "- **A folder of PDFs** on this machine: type its path under *Library → Add papers* in the sidebar, "
        "or run `cove ingest --from ~/papers`.\n"
        "- **Upload PDFs** under *Library → Add papers* in the sidebar.\n"
        "- **arXiv ids or URLs** (`2106.09685`, `https://…/paper.pdf`) in the same place."
    )
    if st.button("Add the curated reading list", key="add_reading_list"):
        from ingest.sources import curated_reading_list

        run_ingest(svc, curated_reading_list(), [])


# --- the page ------------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="Cove", page_icon=":material/menu_book:", layout="wide")
    svc = service()
    init_session(svc.settings)
    library = svc.library()

    st.sidebar.title("Cove")
    sidebar_chats(svc)
    sidebar_library(svc, library)
    sidebar_settings()

    st.title("Ask the papers")
    st.caption(
        "Answers come only from your library, checked sentence by sentence against the pages they cite. "
        f"Everything runs on this machine. Library: {svc.settings.home_dir}"
    )
    chat_id = st.session_state.chat_id
    if chat_id and svc.conversations.get(chat_id) is None:
        open_chat("")  # a deleted or unknown chat in the URL: start fresh rather than fail
        chat_id = ""
    if library.empty and not chat_id:
        welcome(svc)
    for message in svc.conversations.messages(chat_id) if chat_id else []:
        render_message(message, bool(st.session_state.show_verification))

    placeholder = "Add papers to start asking" if library.empty else "Ask about the papers (follow-ups welcome)"
    question = st.chat_input(placeholder, disabled=library.empty, key="question")
    if question and question.strip():
        started = time.perf_counter()
        ask(svc, question.strip())
        st.session_state.last_answer_s = time.perf_counter() - started


# `streamlit run` executes this file as __main__; a spawned ingest worker that re-imports it (as
# __mp_main__) must not start a second copy of the app.
if __name__ == "__main__":
    main()
