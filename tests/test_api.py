"""`cove serve` driven by the official `openai` client and plain HTTP: a real server process on
loopback over a small real library, with the bundled model."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from conftest import ROOT, answer_claims, make_text_pdf
from servers import CoveApiServer

from cove import text as tx
from cove.engine import Answer, Citation

openai = pytest.importorskip("openai", reason="the API tests drive `cove serve` with the official openai client")
pytestmark = pytest.mark.slow

HEADS = "How many parallel attention heads does the base Transformer use?"
TOKEN = "s3cret-test-token"


@pytest.fixture(scope="module")
def server(small_library, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with CoveApiServer(small_library.home_dir, log=log) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed-on-loopback", max_retries=0, timeout=600)


def chunk_text(settings, chunk_id: str) -> str:
    from cove.store import ChunkStore

    return " ".join(ChunkStore(settings).get([chunk_id])[0].text.split())


def assert_cited(content: str, citations: list[dict], settings) -> None:
    """Every sentence of the answer cites a listed source, and every quote is verbatim in its chunk."""
    answer_text, _, sources = content.partition("\n\nSources:\n")
    numbers = {c["n"] for c in citations}
    assert citations and sources, content
    for sentence in answer_claims(answer_text):
        assert set(tx.citations(sentence)) <= numbers and tx.citations(sentence), sentence
    for c in citations:
        assert set(c) == set(Citation.__dataclass_fields__)  # the `cove ask --json` citation objects
        assert " ".join(c["quote"].rstrip("\u2026").split()) in chunk_text(settings, c["chunk_id"])
        assert f"{c['n']}. {c['title']}" in sources and f"p. {c['page']}" in sources


def test_models_are_the_two_pipelines(client):
    assert sorted(m.id for m in client.models.list().data) == ["cove", "cove-baseline"]


def test_non_streamed_answer_has_markers_sources_and_structured_citations(client, small_library, server):
    response = client.chat.completions.create(model="cove", messages=[{"role": "user", "content": HEADS}])
    message = response.choices[0].message
    citations = message.model_extra["citations"]
    assert_cited(message.content, citations, small_library)
    assert "8" in tx.numbers(message.content.partition("\n\nSources:")[0])
    answer = response.model_extra["cove"]
    assert set(answer) == set(Answer.__dataclass_fields__) and answer["pipeline"] == "cove"
    assert answer["citations"] == citations and response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    # The Sources list links the served copy of the local PDF; it opens through the API.
    link = f"{server.url}/api/documents/{citations[0]['doc_id']}#page={citations[0]['page']}"
    assert link in message.content
    pdf = httpx.get(link.split("#")[0], timeout=30)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"


def test_streamed_answer_sends_progress_then_the_checked_answer(client, small_library):
    stream = client.chat.completions.create(
        model="cove-baseline",
        messages=[{"role": "user", "content": HEADS}],
        stream=True,
        stream_options={"include_usage": True},
    )
    stages, content, last, usage = [], "", None, None
    for chunk in stream:
        event = (chunk.model_extra or {}).get("cove_event")
        if event:
            assert not content, "progress comes before the answer"
            stages.append(event["stage"])
        if chunk.choices and chunk.choices[0].delta.content:
            content += chunk.choices[0].delta.content
        if chunk.choices and chunk.choices[0].finish_reason:
            last = chunk
        usage = chunk.usage or usage
    assert {"retrieve", "coverage", "draft", "compose"} <= set(stages) and "token" not in stages
    assert last is not None and last.choices[0].finish_reason == "stop"
    answer, citations = last.model_extra["cove"], last.choices[0].delta.model_extra["citations"]
    assert answer["pipeline"] == "baseline" and answer["citations"] == citations
    assert_cited(content, citations, small_library)
    # Only the checked answer is sent as content, never the model's unchecked draft tokens.
    assert " ".join(content.partition("\n\nSources:")[0].split()) == " ".join(answer["answer"].split())
    assert usage is not None and usage.completion_tokens > 0


def test_follow_up_uses_the_conversation_in_the_messages(client):
    first = client.chat.completions.create(
        model="cove-baseline", messages=[{"role": "user", "content": "What is LoRA?"}]
    ).choices[0]
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},  # ignored: Cove's prompts are its own
        {"role": "user", "content": "What is LoRA?"},
        {"role": "assistant", "content": first.message.content},
        {"role": "user", "content": "How are its matrices A and B initialized?"},
    ]
    answer = client.chat.completions.create(model="cove-baseline", messages=messages).model_extra["cove"]
    assert answer["query"].startswith("What is LoRA?")
    assert answer["retrieved"][0]["doc_id"] == "arxiv-2106.09685"
    assert not answer["refused"] and answer["citations"]


def test_question_outside_the_library_is_refused(client):
    response = client.chat.completions.create(
        model="cove-baseline", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    message = response.choices[0].message
    assert response.model_extra["cove"]["refused"] and message.model_extra["citations"] == []
    assert "does not cover" in message.content and message.refusal and "Sources:" not in message.content


def test_bad_requests_get_clear_json_errors(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": HEADS}])
    assert err.value.body["code"] == "model_not_found" and "cove-baseline" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="cove", messages=[])
    assert err.value.body["type"] == "invalid_request_error" and "messages" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="cove", messages=[{"role": "user", "content": "why? " * 2000}])
    assert err.value.body["code"] == "question_too_long"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="cove", messages=[{"role": "assistant", "content": "hello"}])
    assert err.value.body["code"] == "no_question"

    raw = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                     headers={"content-type": "application/json"})  # fmt: skip
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(server.url + "/api/search", json={"query": "x" * 600_000}, timeout=30)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    missing = httpx.get(server.url + "/api/documents/no-such-doc", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "document_not_found"
    # A page elsewhere that rebinds its DNS name to 127.0.0.1 names its own Host: refused.
    rebound = httpx.get(server.url + "/api/library", headers={"Host": "evil.example:80"}, timeout=30)
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "bad_host"
    cross_site = httpx.post(server.url + "/api/search", json={"query": "LoRA"}, timeout=30,
                            headers={"Origin": "https://evil.example"})  # fmt: skip
    assert cross_site.status_code == 403


def test_rest_api_ask_search_and_library(server, small_library):
    answer = httpx.post(server.url + "/api/ask", json={"question": HEADS, "pipeline": "baseline"}, timeout=600)
    assert answer.status_code == 200
    data = answer.json()
    assert set(data) == set(Answer.__dataclass_fields__) and data["citations"] and not data["refused"]

    found = httpx.post(server.url + "/api/search", json={"query": "low-rank adaptation matrices", "k": 3}, timeout=60)
    hits = found.json()["hits"]
    assert len(hits) == 3 and hits[0]["doc_id"] == "arxiv-2106.09685" and hits[0]["page"] >= 1
    assert {"title", "source", "section", "url", "chunk_id", "text", "citekey"} <= set(hits[0])

    library = httpx.get(server.url + "/api/library", timeout=60).json()["documents"]
    assert {d["doc_id"] for d in library} >= {"arxiv-1706.03762", "arxiv-2106.09685"}
    assert all("citekey" in d for d in library)


def test_adding_papers_through_the_api(tmp_path, http_server, corpus):
    """An empty library: questions get a clear 409; an upload and a URL are ingested and served back."""
    env = {"COVE_FETCH__ALLOW_PRIVATE_HOSTS": "true"}  # the fixture server is on loopback
    with CoveApiServer(tmp_path / "home", env=env, log=tmp_path / "serve.log") as api:
        empty = httpx.post(api.url + "/api/ask", json={"question": HEADS}, timeout=60)
        assert empty.status_code == 409 and empty.json()["error"]["code"] == "library_empty"

        text = "Cove upload test. " + "Rotary position embeddings rotate query and key vectors. " * 6
        files = {"file": ("notes-on-rope.pdf", make_text_pdf(text), "application/pdf")}
        added = httpx.post(api.url + "/api/documents", files=files, timeout=600).json()
        assert added["ingested"] == 1 and added["failed"] == 0, added
        doc_id = added["results"][0]["doc_id"]
        served = httpx.get(f"{api.url}/api/documents/{doc_id}", timeout=30)
        assert served.status_code == 200 and served.content.startswith(b"%PDF")

        not_pdf = {"file": ("evil.pdf", b"<html>hi</html>", "application/pdf")}
        refused = httpx.post(api.url + "/api/documents", files=not_pdf, timeout=60).json()
        assert refused["failed"] == 1 and "not a PDF" in refused["results"][0]["reason"]

        by_url = httpx.post(api.url + "/api/documents", json={"url": http_server.base + "/article.html"}, timeout=600)
        assert by_url.json()["ingested"] == 1, by_url.json()
        nothing = httpx.post(api.url + "/api/documents", json={}, timeout=60)
        assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "nothing_to_add"
        titles = [d["source"] for d in httpx.get(api.url + "/api/library", timeout=60).json()["documents"]]
        assert "notes-on-rope.pdf" in titles and http_server.base + "/article.html" in titles


def test_beyond_loopback_needs_a_token(small_library, tmp_path):
    # Without a token, `cove serve` refuses to listen anywhere but 127.0.0.1 / ::1 / localhost.
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.2", "--port", "9"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COVE_HOME": str(small_library.home_dir), "COVE_API__TOKEN": ""},
    )  # fmt: skip
    assert refused.returncode == 2 and "without a token" in refused.stderr

    env = {"COVE_API__TOKEN": TOKEN}
    with CoveApiServer(small_library.home_dir, host="127.0.0.2", env=env, log=tmp_path / "serve.log") as api:
        anonymous = openai.OpenAI(base_url=api.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            anonymous.chat.completions.create(model="cove", messages=[{"role": "user", "content": HEADS}])
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
        no_header = httpx.get(api.url + "/api/library", timeout=30)
        assert no_header.status_code == 401 and no_header.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(api.url + "/api/documents/arxiv-1706.03762", timeout=30).status_code == 401

        authorized = openai.OpenAI(base_url=api.url + "/v1", api_key=TOKEN, max_retries=0)
        assert {m.id for m in authorized.models.list().data} == {"cove", "cove-baseline"}


def test_only_json_bodies_start_work(server):
    """A text/plain or form POST needs no CORS preflight, so any local page could send one: refused."""
    body = b'{"url": "https://arxiv.org/abs/2106.09685"}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", ""):
        sent = httpx.post(server.url + "/api/documents", content=body, headers={"content-type": kind}, timeout=30)
        assert sent.status_code == 415 and sent.json()["error"]["code"] == "unsupported_media_type", kind
    plain_ask = httpx.post(server.url + "/api/ask", content=b'{"question": "Why?"}',
                           headers={"content-type": "text/plain;charset=UTF-8"}, timeout=30)  # fmt: skip
    assert plain_ask.status_code == 415


def test_a_busy_library_is_503_with_retry_after(library_copy_api, tmp_path):
    from cove.lock import writer_lock

    with CoveApiServer(library_copy_api, log=tmp_path / "serve.log") as api, writer_lock(library_copy_api, "test"):
        busy = httpx.post(api.url + "/api/documents", json={"arxiv": "2106.09685"}, timeout=120)
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "library_busy" and busy.headers["retry-after"] == "30"
        assert "test" in busy.json()["error"]["message"]  # who holds it
        assert "Traceback" not in busy.text


def test_history_is_bounded_like_the_question(server):
    """A 470 KB history must not reach retrieval whole (it made retrieval 50x slower)."""
    huge = "Tell me about attention heads in the Transformer base model please " * 1700  # 4 turns: 460 KB
    history = [{"role": "user", "content": huge}, {"role": "assistant", "content": huge}] * 2
    answer = httpx.post(server.url + "/api/ask", timeout=600, json={
        "question": "and its decoder?", "history": history, "pipeline": "baseline"}).json()  # fmt: skip
    assert answer.get("query", "").endswith("and its decoder?"), answer  # a follow-up: joined to the previous...
    assert len(answer["query"]) <= 2000 + len(" and its decoder?")  # ...cut to answer.max_history_chars


@pytest.fixture
def library_copy_api(small_library, tmp_path):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(small_library.home_dir, home)
    return home


HOSTILE_NOTE = """Zorblax notes

Zorblax is a method these reading notes describe. Its authors compare it with older positional
schemes and report that it trains stably. The notes below keep what the page says about its size.

The Zorblax method uses 12 rotary heads ![pixel](http://evil.example/pixel.png?from=cove) as the [official Zorblax page](http://evil.example/login) documents.
"""  # noqa: E501


def test_answers_reach_markdown_clients_as_text(library_copy_api, tmp_path):
    """A quoted sentence carrying Markdown renders as text in a real renderer: no <img>, no <a>."""
    from markdown_it import MarkdownIt

    from cove.settings import load_settings
    from ingest.pipeline import ingest
    from ingest.sources import from_path

    note = tmp_path / "zorblax-notes.txt"
    note.write_text(HOSTILE_NOTE)
    assert not ingest([from_path(note)], load_settings({"home": str(library_copy_api)})).failed
    question = "How many rotary heads does the Zorblax method use?"
    with CoveApiServer(library_copy_api, log=tmp_path / "serve.log") as api:
        client = openai.OpenAI(base_url=api.url + "/v1", api_key="x", max_retries=0, timeout=600)
        whole = client.chat.completions.create(model="cove-baseline", messages=[{"role": "user", "content": question}])
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="cove-baseline", messages=[{"role": "user", "content": question}], stream=True
            )
            if chunk.choices
        )
    for content in (whole.choices[0].message.content, streamed):
        answer = content.partition("\n\nSources:")[0]
        assert "evil.example" in answer and "12" in answer, content  # the hostile sentence was quoted...
        html = MarkdownIt().render(content)
        assert "<img" not in html and 'href="http://evil.example' not in html, html  # ...as text
        assert "[1]" in answer  # Cove's own markers stay readable


def wait_for_line(log, text: str, timeout: float = 120.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def open_stream_until_the_model_runs(url: str, model: str = "cove"):
    """A streamed chat completion read until the pipeline reports its draft stage; returns the open
    response (and its client), so a test can hang up on an answer that is running."""
    client = httpx.Client(timeout=600)
    request = client.build_request("POST", url + "/v1/chat/completions", json={
        "model": model, "stream": True, "messages": [{"role": "user", "content": HEADS}]})  # fmt: skip
    response = client.send(request, stream=True)
    assert response.status_code == 200, response.read()
    # The line iterator is kept on the response: dropped, it would be finalised, and closing an
    # unfinished httpx stream closes its connection: the server would see a hang-up and stop the
    # answer, racing it to the model (that made the queued-answers test fail now and then).
    response.lines = response.iter_lines()
    for line in response.lines:
        if '"stage": "draft"' in line:
            return client, response
    raise AssertionError("the stream ended before the draft stage")


def test_an_answer_stops_when_its_client_hangs_up(library_copy_api, tmp_path):
    """Three dropped streams kept a core busy for about 40 s: now a hang-up stops the answer (streamed
    or not), the server says so, and the model is free for the next question at once."""
    log = tmp_path / "serve.log"
    with CoveApiServer(library_copy_api, log=log) as api:
        client, response = open_stream_until_the_model_runs(api.url)
        response.close()
        client.close()
        assert wait_for_line(log, "a streamed answer was stopped: its client hung up"), log.read_text()[-2000:]
        # A client that gives up after 0.3 s, while its answer (two parts, CoVe: several model calls,
        # a second or more even warm on a fast machine) is still running.
        two_parts = HEADS[:-1] + ", and what dimension does each head's keys have?"
        with pytest.raises(httpx.TimeoutException):
            httpx.post(api.url + "/api/ask", json={"question": two_parts, "pipeline": "cove"}, timeout=0.3)
        assert wait_for_line(log, "an answer was stopped: its client hung up"), api.stacks()
        after = httpx.post(api.url + "/api/ask", json={"question": HEADS, "pipeline": "baseline"}, timeout=600)
        assert after.status_code == 200 and "8" in tx.numbers(after.json()["answer"]), after.text
        assert "Traceback" not in log.read_text()


class HeldModel:
    """An OpenAI-compatible model server on loopback that answers nothing until `release()`: the
    answer at the model is then surely still running when the next question arrives (the bundled
    model can finish a short answer, and free its place, before the test asks again)."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.released = threading.Event()
        self.asked = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                held.asked.set()
                held.released.wait(120)
                message = {"role": "assistant", "content": "Not stated."}
                if request.get("stream"):
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "held",
                             "choices": [{"index": 0, "delta": message, "finish_reason": "stop"}]}  # fmt: skip
                    body, kind = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode(), "text/event-stream"
                else:
                    reply = {"id": "c", "object": "chat.completion", "created": 0, "model": "held",
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
                    body, kind = json.dumps(reply).encode(), "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_queued_answers_are_capped_with_retry_after(library_copy_api, tmp_path):
    """Waiting requests were uncapped, each holding a worker thread: beyond `answer.max_queued`, a
    question is turned away at once with 503 and Retry-After, streamed or not, while an answer is at
    the model (held there by a loopback model server until the test is done)."""
    model = HeldModel()
    env = {"COVE_ANSWER__MAX_QUEUED": "0",  # one answer at the model, none waiting
           "COVE_MODEL__BACKEND": "openai", "COVE_MODEL__OPENAI_URL": model.url}  # fmt: skip
    try:
        with CoveApiServer(library_copy_api, log=tmp_path / "serve.log", env=env) as api:
            client, response = open_stream_until_the_model_runs(api.url)
            try:
                if not model.asked.wait(120):
                    stacks = api.stacks()  # before reading on: the stream may be stuck too
                    response.close()
                    raise AssertionError(f"the held answer never reached the model; the server:\n{stacks}")
                messages = [{"role": "user", "content": HEADS}]
                for stream in (False, True):
                    body = {"model": "cove", "stream": stream, "messages": messages}
                    full = httpx.post(api.url + "/v1/chat/completions", json=body, timeout=60)
                    assert full.status_code == 503, full.text
                    assert full.json()["error"]["code"] == "too_many_answers" and full.headers["retry-after"] == "10"
                asked = httpx.post(api.url + "/api/ask", json={"question": HEADS}, timeout=60)
                assert asked.status_code == 503 and asked.headers["retry-after"] == "10"
            finally:
                model.released.set()
                response.close()
                client.close()
    finally:
        model.release()


def test_only_coves_own_origin_may_post(server):
    """Another page on this machine (another port) is a foreign origin: refused before any work."""
    other = server.url.rsplit(":", 1)[0] + ":1"
    for origin in (other, "null", "http://localhost:1"):
        sent = httpx.post(server.url + "/api/search", json={"query": "attention"}, headers={"Origin": origin},
                          timeout=60)  # fmt: skip
        assert sent.status_code == 403 and sent.json()["error"]["code"] == "bad_origin", (origin, sent.text)
    own = httpx.post(server.url + "/api/search", json={"query": "attention"}, headers={"Origin": server.url},
                     timeout=120)  # fmt: skip
    assert own.status_code == 200, own.text
