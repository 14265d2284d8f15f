"""Cove's web chat: ask the papers, watch the verification, open the cited page.

A thin Streamlit layer over `service.chat.ChatService` (answering, conversations, the library) and
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
from pathlib import Path
from typing import Any

import streamlit as st

from app.markdown import answer_markdown, cited_page, is_pdf_citation, md, source_lines, verification_line
from cove import events as ev
from cove.catalog import parse_summary
from cove.settings import BUNDLED_CHAT_MODEL, CoveSettings, load_settings
from service.chat import ChatService, LibraryStatus, friendly_error
from service.conversations import Message, answer_note, correction_text, export_markdown
from service.library import add_papers as add_to_library

STAGE_LABELS = {
    ev.Stage.RETRIEVE: "Searching the library…",
    ev.Stage.COVERAGE: "Checking the library covers the question…",
    ev.Stage.DRAFT: "The model drafts an answer; every sentence is checked…",
    ev.Stage.VERIFY: "Verifying each part and claim against its own sources…",
    ev.Stage.COMPOSE: "Writing the answer from checked sentences…",
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
        "upload_key": 0,
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)
    if "chat_id" not in st.session_state:
        st.session_state.chat_id = st.query_params.get("chat", "")


def model_in_use(settings: CoveSettings) -> str:
    """Which model answers, in words. The model comes from the settings file and environment only: a
    browser session cannot point the app at another server or file (that would be a door into this
    machine and its network), so the panel only names it."""
    model = settings.model
    if model.backend == "openai":
        return f"{model.openai_model or 'the default model'} on an OpenAI-compatible server"
    if model.model == BUNDLED_CHAT_MODEL:
        return "bundled SmolLM2-135M-Instruct (offline)"
    return Path(model.model).name


def overrides() -> dict[str, Any]:
    """This session's choices, in the nested shape of `CoveSettings` (never the model: see above)."""
    s = st.session_state
    return {"retrieve": {"k": int(s.k)}, "answer": {"pipeline": s.pipeline}}


def open_chat(chat_id: str) -> None:
    st.session_state.chat_id = chat_id
    if chat_id:
        st.query_params["chat"] = chat_id
    else:
        st.query_params.pop("chat", None)


# --- rendering an answer -------------------------------------------------------------------------------
def render_sources(citations: list[dict[str, Any]], expanded: bool = True, key: str = "") -> None:
    """The sources panel: per citation its heading, quote, links and, for a PDF, a "Show on page"
    switch that shows the cited page with the quote highlighted (`key` tells answers apart)."""
    if not citations:
        return
    switches = [f"show-page-{key}-{c.get('n')}" if is_pdf_citation(c) else "" for c in citations]
    # A page being shown keeps its panel open: the rerun a switch causes draws the answer anew, collapsed.
    opened = expanded or any(st.session_state.get(switch) for switch in switches if switch)
    with st.expander(f"Sources ({len(citations)})", expanded=opened):
        for c, switch in zip(citations, switches, strict=True):
            heading, quote, links, source = source_lines(c)
            st.markdown(heading)
            st.markdown(quote)
            if links:
                st.markdown(links)
            st.caption(source)
            if switch and st.toggle("Show on page", key=switch):
                show_on_page(c)


def show_on_page(citation: dict[str, Any]) -> None:
    """The cited page as an image, the quote highlighted (`app.pages`; rendered once, then cached)."""
    from app.pages import PageUnavailable, RenderFailed, highlighted_page

    doc_id, quote = str(citation.get("doc_id", "")), str(citation.get("quote", ""))
    try:
        view = highlighted_page(service().settings, doc_id, cited_page(citation), quote)
    except (PageUnavailable, RenderFailed) as err:
        st.warning(md(str(err)))
        return
    if view.note:
        st.caption(view.note)
    marked = ": the quoted passage is highlighted" if view.boxes else ""
    # As PNG: Streamlit would re-encode an opaque image as JPEG, blurring the page and its highlight.
    st.image(view.png, caption=f"Page {view.page}{marked}", output_format="PNG")


def render_verification(answer: dict[str, Any]) -> None:
    """The CoVe steps of a finished answer, collapsed: the draft, each verification, what changed."""
    checks = answer.get("verification", [])
    if answer.get("pipeline") == "cove" and (answer.get("draft") or checks):
        supported = sum(1 for v in checks if v.get("supported"))
        with st.expander(f"Verification: {len(checks)} questions, {supported} confirmed"):
            st.markdown("**Draft** (the model's, checked before anything was shown)")
            st.text(answer.get("draft") or "(empty)")
            for v in checks:
                st.markdown(verification_line(v["question"], v.get("answer", ""), v.get("status", "")))
    corrections = [correction_text(c) for c in answer.get("corrections", [])]
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
            st.error(md(message.content))
            return
        render_answer(message.answer, show_verification, key=str(message.id))


def render_answer(
    answer: dict[str, Any], show_verification: bool, expanded_sources: bool = False, key: str = ""
) -> None:
    st.markdown(answer_markdown(answer.get("answer", ""), answer.get("citations", [])))
    note = answer_note(answer)
    if note:
        st.caption(note)
    render_sources(answer.get("citations", []), expanded=expanded_sources, key=key)
    if show_verification:
        render_verification(answer)


# --- answering live ----------------------------------------------------------------------------------
class LiveAnswer:
    """Draws the engine's events as they come: the best checked sentences first, the model's draft
    labelled as a draft being checked, each verification as it is confirmed, then the answer.
    Nothing is swapped silently: the final answer replaces the draft with a note of what changed."""

    def __init__(self, show_verification: bool) -> None:
        self.show = show_verification
        self.status = st.status("Searching the library…", expanded=False)
        self.early = st.empty()  # checked sentences from the first retrieval
        self.draft_box = st.empty()  # the model's draft, labelled
        self.draft = ""
        self.waited = False

    def __call__(self, event: ev.AnswerEvent) -> None:
        if isinstance(event, ev.DraftToken):
            self.draft += event.text
            self.draft_box.caption("Draft (being checked): " + md(self.draft) + " ▌")
            return
        if isinstance(event, ev.FirstQuotes):
            self.early.markdown("**Checked so far:** " + answer_markdown(event.text, event.citations))
            return
        if isinstance(event, ev.Waiting):
            self.waited = True
            self.status.update(label="Waiting for the model: another question is being answered…", state="running")
            self.status.write("⏳ Waited for the model: another question was being answered.")
            return
        if isinstance(event, ev.Finished):
            return
        self.status.update(label=STAGE_LABELS.get(event.stage, str(event.stage)), state="running")
        if self.show:
            self._detail(event)

    def _detail(self, event: ev.AnswerEvent) -> None:
        if isinstance(event, ev.Retrieved):
            found = ", ".join(f"{r['title'] or r['source']} p.{r['page']}" for r in event.sources)
            self.status.markdown("**Retrieved:** " + md(found))
        elif isinstance(event, ev.DraftReady):
            self.status.markdown(f"**Draft:** {event.supported} of {event.sentences} sentences supported")
        elif isinstance(event, ev.PlanReady):
            self.status.markdown(f"**{len(event.questions)} verification questions**")
        elif isinstance(event, ev.Verified):
            self.status.markdown(verification_line(event.question, event.answer, event.status))
        elif isinstance(event, ev.Composed) and event.corrections:
            self.status.markdown("**Checks:** " + md("; ".join(event.corrections)))

    def finish(self, message: Message) -> None:
        self.early.empty()
        self.draft_box.empty()
        if message.role == "error":
            self.status.update(label="Not answered", state="error", expanded=False)
            st.error(md(message.content))
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
        render_answer(answer, show_verification=False, expanded_sources=True, key=str(message.id))
        if self.show:
            render_verification(answer)


def ask(svc: ChatService, question: str) -> None:
    s = st.session_state
    if not s.chat_id:
        open_chat(svc.conversations.create().id)
    with st.chat_message("user"):
        st.markdown(md(question))
    with st.chat_message("assistant"):
        live = LiveAnswer(bool(s.show_verification))
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
        label = ("▸ " if current else "") + md(chat.title or "Untitled")
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
                    {
                        "Title": d.title or d.source,
                        "Pages": d.pages,
                        "Chunks": d.chunks,
                        "Status": d.status,
                        "Parse": parse_summary(d.report),
                        "Warnings": d.warnings,
                    }
                    for d in library.documents
                ],
                hide_index=True,
                width="stretch",
            )
        for d in library.failed:
            st.warning(md(f"{d.source}: {d.error}"))
        add_papers_form(svc)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def add_papers_form(svc: ChatService) -> None:
    """arXiv ids or URLs, a local folder or file, PDF uploads -> one ingest run with a progress bar.

    The path field is offered only when `app.local_roots` names folders the app may read: any browser
    session could otherwise index (and then open) any file this process can read."""
    s = st.session_state
    settings = svc.settings
    st.markdown("**Add papers**")
    items = st.text_area("arXiv ids or URLs, one per line", key="add_items", placeholder="2205.14135")
    folder = ""
    if settings.app.local_roots:
        roots = ", ".join(str(r) for r in settings.app.local_roots)
        folder = st.text_input(f"Local file or folder (under {md(roots)})", key="add_folder", placeholder=roots)
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
    if not any(i.strip() for i in items) and not paths and not uploads:
        st.session_state.ingest_report = {"errors": ["Nothing to add: type an arXiv id or URL, or pick a PDF."]}
        return
    run_ingest(
        svc, items=[i for i in items if i.strip()], paths=paths,
        uploads=[(upload.name, upload) for upload in uploads],  # streamed to disk, never held whole
        roots=(svc.settings.app.local_roots, "app.local_roots"),  # local paths only inside these
    )  # fmt: skip


def run_ingest(svc: ChatService, **inputs: Any) -> None:
    """Add papers through the service (as the API and MCP do), with a progress bar and a report."""
    bar = st.progress(0.0, text="Starting…")

    def progress(event) -> None:
        if event.stage not in INGEST_STAGES:
            return
        start, end = INGEST_STAGES[event.stage]
        share = event.completed / event.total if event.total else 1.0
        bar.progress(min(1.0, start + (end - start) * share), text=md(f"{event.stage}: {event.source[-40:]}"))

    try:
        report = add_to_library(svc.settings, progress=progress, **inputs)
    except Exception as err:  # the library stays as it was; the next run resumes
        st.session_state.ingest_report = {"errors": [f"Adding papers failed: {friendly_error(err)}"]}
    else:
        errors = [f"{r.source}: {r.reason}" for r in report.failed]
        if not (report.ingested or report.skipped or errors):  # a folder holding nothing Cove reads
            errors = ["Nothing to add: no PDF, HTML, Markdown or text file there."]
        st.session_state.ingest_report = {
            "added": [r.title or r.source for r in report.ingested],
            "skipped": [r.title or r.source for r in report.skipped],
            "errors": errors,
        }
    st.session_state.upload_key += 1  # a fresh uploader: the same files are not sent twice
    st.rerun()


def show_ingest_report() -> None:
    report = st.session_state.get("ingest_report")
    if not report:
        return
    if report.get("added"):
        st.success(md(f"Added {len(report['added'])}: " + "; ".join(report["added"])))
    if report.get("skipped"):
        st.info(f"Already in the library: {len(report['skipped'])}")
    for error in report.get("errors", []):
        st.error(md(error))


def sidebar_settings(settings: CoveSettings) -> None:
    with st.sidebar.expander("Settings"):
        st.caption(md(f"Model: {model_in_use(settings)}") + " (set by `cove chat --model` or `COVE_MODEL__*`)")
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
        "- **A folder of PDFs** on this machine: run `cove ingest --from ~/papers` (or type its path under "
        "*Library → Add papers* when the app may read that folder: `COVE_APP__LOCAL_ROOTS`).\n"
        "- **Upload PDFs** under *Library → Add papers* in the sidebar.\n"
        "- **arXiv ids or URLs** (`2106.09685`, `https://…/paper.pdf`) in the same place."
    )
    if st.button("Add the curated reading list", key="add_reading_list"):
        run_ingest(svc, reading_list=True)


# --- the page ------------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="Cove", page_icon=":material/menu_book:", layout="wide")
    svc = service()
    init_session(svc.settings)
    library = svc.library()

    st.sidebar.title("Cove")
    sidebar_chats(svc)
    sidebar_library(svc, library)
    sidebar_settings(svc.settings)

    st.title("Ask the papers")
    st.caption(
        "Answers come only from your library, checked sentence by sentence against the pages they cite. "
        "Everything runs on this machine. Library: " + md(str(svc.settings.home_dir))
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
    question = st.chat_input(
        placeholder, disabled=library.empty, key="question", max_chars=svc.settings.app.max_question_chars
    )
    if question and question.strip():
        started = time.perf_counter()
        ask(svc, question.strip())
        st.session_state.last_answer_s = time.perf_counter() - started


# `streamlit run` executes this file as __main__; a spawned ingest worker that re-imports it (as
# __mp_main__) must not start a second copy of the app.
if __name__ == "__main__":
    main()
