"""Cove over real servers on 127.0.0.1: a `chroma run` server holding the library (shared by two Cove
homes, stopped mid-ingest and restarted), and a `llama_cpp.server` answering over the OpenAI API
(stopped mid-answer and restarted). Nothing is mocked: real PDFs, real embeddings, the real model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, corpus_pdf
from servers import ChromaServer, LlamaServer
from test_answer import HEADS, assert_cited_and_checked

from cove import events as ev
from cove.catalog import STATUS_OK, STATUS_PENDING, Catalog
from cove.llm import resolve_model_path
from cove.settings import BUNDLED_CHAT_MODEL, load_settings, with_overrides
from cove.store import ChunkStore, StoreUnavailable
from cove.sync import library_documents
from ingest.pipeline import ingest
from ingest.sources import expand_local

pytestmark = pytest.mark.slow

PAPERS = ["1706.03762.pdf", "gpt1_language_understanding_paper.pdf", "2012.14913.pdf"]


def sources(*names: str):
    return [source for name in names for source in expand_local(corpus_pdf(name))[0]]


def on_server(home, url: str, **sections):
    """Settings of a Cove home whose chunks live on the Chroma server at `url` (fail fast when down)."""
    store = {"chroma_url": url, "retries": 1, "retry_backoff_s": 0.2, "timeout_s": 20}
    return load_settings({"home": str(home), "store": store, "parse": {"workers": 1}, **sections})


def assert_consistent(settings) -> None:
    """Chroma holds exactly the chunks the catalog counts: nothing lost, nothing doubled, no orphans."""
    store = ChunkStore(settings)
    catalog = Catalog(settings.catalog_path)
    try:
        indexed = {r.doc_id: r.chunks for r in catalog.all() if r.status == STATUS_OK}
    finally:
        catalog.close()
    assert store.ids_by_document() == indexed
    assert store.count() == sum(indexed.values())
    assert {r["doc_id"] for r in store.document_records()} == set(indexed)


@pytest.fixture
def chroma(tmp_path):
    server = ChromaServer(tmp_path / "chroma-data", log=tmp_path / "chroma.log").start()
    yield server
    server.stop()


def cli(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


# --- Chroma as a server -------------------------------------------------------------------------------


def test_library_on_a_chroma_server_is_shared_by_two_homes(chroma, tmp_path):
    first = on_server(tmp_path / "first", chroma.url)
    report = ingest(sources(*PAPERS[:2]), first)
    assert len(report.ingested) == 2 and not report.failed
    assert not first.chroma_dir.exists(), "nothing is written to an embedded Chroma"
    assert_consistent(first)

    # `cove library` and `cove ask` work unchanged from a second, empty home pointed at the server.
    second_home = tmp_path / "second"
    env = {"COVE_HOME": str(second_home), "COVE_STORE__CHROMA_URL": chroma.url}
    listed = cli("library", "--json", env_extra=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert {d["doc_id"]: d["status"] for d in json.loads(listed.stdout)} == {r.doc_id: "ok" for r in report.ingested}
    asked = cli("ask", HEADS, "--json", "--pipeline", "baseline", env_extra=env)
    assert asked.returncode == 0, asked.stderr[-2000:]
    answer = json.loads(asked.stdout)
    assert not answer["refused"] and answer["citations"][0]["doc_id"] == "arxiv-1706.03762"

    # The second home keeps its own BM25 copy; a third paper ingested by the first home reaches it.
    from cove.retrieve import Retriever

    second = on_server(second_home, chroma.url)
    retriever = Retriever(second)
    try:
        generation = retriever.lexical.generation
        assert len(retriever.lexical) == ChunkStore(second).count()
        assert ingest(sources(PAPERS[2]), first).ingested
        hits = retriever.search("feed-forward layers emulate key-value memories", mode="lexical").hits
        assert hits and hits[0].doc_id == "arxiv-2012.14913", [h.doc_id for h in hits]
        assert retriever.lexical.generation != generation and len(retriever.lexical) == ChunkStore(second).count()
        shared = {d.doc_id for d in library_documents(second) if d.status == STATUS_OK}
        assert shared == {r.doc_id for r in report.ingested} | {"arxiv-2012.14913"}
    finally:
        retriever.close()

    # What another home indexed is not redone by this one.
    again = ingest(sources(*PAPERS), second)
    assert len(again.skipped) == 3 and not again.ingested
    assert_consistent(second)


def test_answer_from_the_server_library_is_cited_and_checked(chroma, tmp_path):
    from cove.engine import AnswerEngine

    settings = on_server(tmp_path / "home", chroma.url)
    ingest(sources(PAPERS[0]), settings)
    answer = AnswerEngine(settings).ask(HEADS, pipeline="cove")
    assert_cited_and_checked(answer, settings)
    assert all(r["chunk_id"] for r in answer.to_json()["retrieved"])


def test_chat_app_over_a_chroma_server(chroma, tmp_path, monkeypatch):
    from test_app import ask, chat_messages, start

    ingest(sources(PAPERS[0]), on_server(tmp_path / "ingest-home", chroma.url))
    monkeypatch.setenv("COVE_STORE__CHROMA_URL", chroma.url)
    app_home = tmp_path / "app-home"  # a fresh app instance: everything it knows comes from the server
    at = ask(start(app_home, monkeypatch), HEADS)
    assert any(e.label.startswith("Library: 1 paper") for e in at.expander)
    answer = chat_messages(app_home, at)[1].answer
    assert not answer["refused"] and answer["citations"][0]["doc_id"] == "arxiv-1706.03762"

    chroma.kill()  # the app keeps drawing (last known library) and says why it cannot answer
    ask(at, "What is the dimension of the model?")
    assert at.error and "Chroma server" in at.error[0].value and "not reachable" in at.error[0].value
    assert [m.role for m in chat_messages(app_home, at)] == ["user", "assistant", "user", "error"]


def test_chroma_server_stopped_mid_ingest_then_restarted_loses_and_doubles_nothing(chroma, tmp_path):
    settings = on_server(tmp_path / "home", chroma.url)
    embedded: list[str] = []

    def kill_during_third_document(event) -> None:
        # A document's chunks are written while the next one is embedded, and it is recorded as
        # indexed once that write is done: when the third starts embedding, the first is surely
        # recorded and the second is not (its write is in flight or waits to be recorded).
        if event.stage == "embed" and event.source and event.source not in embedded:
            embedded.append(event.source)
            if len(embedded) == 3:
                chroma.kill()  # as a crash would: no goodbye

    report = ingest(sources(*PAPERS), settings, progress=kill_during_third_document)
    assert len(report.ingested) == 1, [(r.source, r.status, r.reason) for r in report.results]
    assert len(report.failed) == 2
    for failed in report.failed:
        assert "Chroma server" in failed.reason and "not reachable" in failed.reason, failed.reason
    catalog = Catalog(settings.catalog_path)
    try:
        cut = catalog.get(report.failed[0].doc_id)
        assert cut.status == STATUS_PENDING and "not reachable" in cut.error  # shown by `cove library`
    finally:
        catalog.close()

    # Every command says what is wrong, without a traceback.
    down = cli("library", env_extra={"COVE_HOME": str(settings.home_dir), "COVE_STORE__CHROMA_URL": chroma.url})
    assert down.returncode == 1 and "not reachable" in down.stderr and "Traceback" not in down.stderr
    with pytest.raises(StoreUnavailable, match="chroma run"):
        ChunkStore(settings)

    chroma.start()  # same port, same data
    rerun = ingest(sources(*PAPERS), settings)
    assert len(rerun.skipped) == 1 and len(rerun.ingested) == 2 and not rerun.failed
    assert_consistent(settings)
    ids = ChunkStore(settings).collection.get(include=[])["ids"]
    assert len(ids) == len(set(ids))


def test_chroma_url_flag_reaches_every_command(tmp_path):
    from servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"COVE_HOME": str(tmp_path / "home"), "COVE_STORE__RETRIES": "0"}
    for args in (("library",), ("ingest", "--from", str(corpus_pdf(PAPERS[0]))), ("ask", HEADS)):
        run = cli("--chroma-url", dead, *args, env_extra=env)
        assert run.returncode == 1, (args, run.stdout, run.stderr[-1500:])
        assert f"Chroma server at {dead} is not reachable" in run.stderr and "Traceback" not in run.stderr, args


# --- the chat model as a server -----------------------------------------------------------------------


@pytest.fixture
def llama_server(tmp_path):
    server = LlamaServer(resolve_model_path(BUNDLED_CHAT_MODEL), log=tmp_path / "llama.log").start()
    yield server
    server.stop()


def test_model_server_stopped_mid_answer_keeps_the_conversation_and_comes_back(small_library, llama_server, tmp_path):
    from service.chat import ChatService

    settings = with_overrides(
        small_library,
        {
            "home": str(tmp_path / "home"),
            "model": {"backend": "openai", "openai_url": llama_server.openai_url, "timeout_s": 60},
        },
    )
    shutil.copytree(small_library.home_dir, settings.home_dir)
    service = ChatService(settings)
    chat = service.conversations.create()

    streamed: list[str] = []
    first = service.ask(chat.id, HEADS, on_event=lambda e: isinstance(e, ev.DraftToken) and streamed.append(e.text))
    assert first.role == "assistant" and streamed, first
    assert_cited_and_checked(service_answer(first), settings)

    def kill_at_first_token(event) -> None:
        if isinstance(event, ev.DraftToken):
            llama_server.kill()

    cut = service.ask(chat.id, "What rank r does LoRA use?", on_event=kill_at_first_token)
    assert cut.role == "error"
    assert "model could not answer" in cut.content and llama_server.openai_url in cut.content, cut.content

    llama_server.start()  # same port
    back = service.ask(chat.id, "What rank r does LoRA use?", {"answer": {"pipeline": "baseline"}})
    assert back.role == "assistant", back.content
    roles = [m.role for m in service.conversations.messages(chat.id)]
    assert roles == ["user", "assistant", "user", "error", "user", "assistant"]


def test_concurrent_answers_on_a_model_server_are_whole_or_an_error(llama_server, tmp_path):
    """llama_cpp.server, by default, cuts a streaming answer short when another request arrives.
    Cove reports the cut answer as an error instead of passing it off as whole; started with
    --interrupt_requests False (as the README says), both answers finish."""
    import threading

    from cove.llm import ModelError, OpenAIChatModel
    from cove.settings import ModelSettings

    def two_at_once(url: str) -> list[object]:
        model = OpenAIChatModel(ModelSettings(backend="openai", openai_url=url, timeout_s=60))
        prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
        started = threading.Event()
        outcomes: list[object] = []

        def first() -> None:
            try:
                outcomes.append(model.chat(prompt, max_tokens=120, on_token=lambda _: started.set()))
            except ModelError as err:
                outcomes.append(err)

        thread = threading.Thread(target=first)
        thread.start()
        assert started.wait(60)
        outcomes.append(model.chat(prompt, max_tokens=20))  # arrives while the first still streams
        thread.join(60)
        return outcomes

    cut, second = two_at_once(llama_server.openai_url)
    assert isinstance(cut, ModelError) and "interrupt_requests" in str(cut), cut
    assert second.finish_reason and second.text

    with LlamaServer(llama_server.model_path, extra_args=("--interrupt_requests", "False")) as patient:
        outcomes = two_at_once(patient.openai_url)
    assert all(not isinstance(o, ModelError) and o.finish_reason for o in outcomes), outcomes


def service_answer(message):
    """The kept answer as an object with the fields `assert_cited_and_checked` reads."""
    from types import SimpleNamespace

    data = message.answer
    citations = [SimpleNamespace(**c) for c in data["citations"]]
    return SimpleNamespace(refused=data["refused"], answer=data["answer"], citations=citations, to_json=lambda: data)
