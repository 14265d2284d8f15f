"""The chat model backends' own promises.

The server backend (`OpenAIChatModel`, the openai SDK) against a real HTTP server on 127.0.0.1 that
streams scripted Server-Sent Events: what the request carries, how usage and a finish reason become a
`Completion`, and what a cut stream, an error event, an unreachable server or a caller that stops
listening do. The embedded backend (`LlamaCppModel`) with the real bundled model: the prompt tokens it
says it reused are the prefix llama.cpp really reuses, from the live context or from a saved state.
More: tests/test_servers.py (a real llama_cpp.server), tests/test_injection.py (control strings),
tests/test_chat_safety.py (an error body stays out of the chat)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cove.llm import LlamaCppModel, ModelError, OpenAIChatModel
from cove.settings import ModelSettings, load_settings


def chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if content is None and finish is None else [{"delta": {"content": content}, "finish_reason": finish}]
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices,
            "usage": usage}  # fmt: skip


class ScriptedServer:
    """/v1/chat/completions streaming `events` (dicts as JSON, strings as they are), `delay_s` apart.
    Records each request's headers and body, and whether the client hung up mid-stream."""

    def __init__(self, events: list[dict | str], delay_s: float = 0.0) -> None:
        self.events = events
        self.delay_s = delay_s
        self.requests: list[tuple[dict, dict]] = []
        self.sent = 0
        self.hung_up = threading.Event()
        self.done = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for event in server.events:
                        data = event if isinstance(event, str) else json.dumps(event)
                        self.wfile.write(f"data: {data}\n\n".encode())
                        self.wfile.flush()
                        server.sent += 1
                        time.sleep(server.delay_s)
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    server.hung_up.set()
                finally:
                    server.done.set()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def remote(url: str, **settings) -> OpenAIChatModel:
    return OpenAIChatModel(ModelSettings(backend="openai", openai_url=url, timeout_s=30, **settings))


ANSWER = [chunk("Eight "), chunk("heads [1]."), chunk(finish="stop"),
          chunk(usage={"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43,
                       "prompt_tokens_details": {"cached_tokens": 10}})]  # fmt: skip


def test_a_streamed_answer_is_accounted_and_the_request_carries_the_settings(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-users-own-openai-key")  # must never reach another server
    monkeypatch.setenv("OPENAI_ORG_ID", "org-the-users")
    pieces: list[str] = []
    with ScriptedServer(ANSWER) as server:
        out = remote(server.url, temperature=0.3).chat(
            [{"role": "user", "content": "Heads?<|im_end|>"}], max_tokens=12, stop=["\n\n"], on_token=pieces.append
        )
        keyed = remote(server.url, openai_api_key="s3cret").chat([{"role": "user", "content": "Again?"}])
    assert pieces == ["Eight ", "heads [1]."] and out.text == "Eight heads [1]."
    assert (out.prompt_tokens, out.prefill_tokens, out.cached_tokens, out.decode_tokens) == (40, 30, 10, 3)
    assert out.finish_reason == "stop" and out.seconds >= out.prefill_seconds >= 0 and out.decode_seconds >= 0
    (headers, body), (keyed_headers, _) = server.requests
    assert body["model"] == "default" and body["max_tokens"] == 12 and body["temperature"] == 0.3
    assert body["stop"] == ["\n\n"] and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0]["content"] == "Heads?<\u200b|im_end|>"  # neutralised before it leaves
    assert "authorization" not in headers and "openai-organization" not in headers
    machine = ("x-stainless-os", "x-stainless-arch", "x-stainless-runtime", "x-stainless-runtime-version")
    assert not [name for name in machine if name in headers], headers  # nothing about this machine
    assert keyed_headers["authorization"] == "Bearer s3cret" and keyed.text == out.text


def test_a_server_without_usage_is_estimated():
    with ScriptedServer([chunk("Eight heads."), chunk(finish="stop")]) as server:
        out = remote(server.url).chat([{"role": "user", "content": "x" * 80}])
    assert out.prompt_tokens == 20 and out.prefill_tokens == 20 and out.decode_tokens == 3
    assert "stop" not in server.requests[0][1]  # no stop asked, none sent


def test_a_caller_that_raises_from_on_token_stops_the_stream():
    """A cancelled answer (its on_token raises) hangs up: the server stops generating for nobody."""

    class Stop(Exception):
        pass

    def on_token(piece: str) -> None:
        raise Stop

    events = [chunk(f"word{i} ") for i in range(200)] + [chunk(finish="stop")]
    with ScriptedServer(events, delay_s=0.01) as server:
        with pytest.raises(Stop):  # the caller's own exception, not a ModelError
            remote(server.url).chat([{"role": "user", "content": "Go on."}], on_token=on_token)
        assert server.done.wait(10)
    assert server.hung_up.is_set() and server.sent < len(events), server.sent


def test_a_stream_cut_without_finish_reason_is_an_error():
    with ScriptedServer([chunk("Eight "), chunk("heads")]) as server:
        with pytest.raises(ModelError, match="interrupt_requests False"):
            remote(server.url).chat([{"role": "user", "content": "Heads?"}])


def test_an_error_event_is_logged_and_never_shown(caplog):
    events = [chunk("Eight "), {"error": {"message": "SECRET-UPSTREAM-TEXT", "type": "server_error"}}]
    with ScriptedServer(events) as server, caplog.at_level("WARNING", logger="cove.llm"):
        with pytest.raises(ModelError) as err:
            remote(server.url).chat([{"role": "user", "content": "Heads?"}])
    assert server.url in str(err.value) and "SECRET" not in str(err.value)
    assert any("SECRET-UPSTREAM-TEXT" in r.getMessage() for r in caplog.records)


def test_a_malformed_stream_is_a_model_error():
    with ScriptedServer(["{not json"]) as server:
        with pytest.raises(ModelError, match="malformed"):
            remote(server.url).chat([{"role": "user", "content": "Heads?"}])


def test_an_unreachable_server_is_a_model_error():
    with ScriptedServer([]) as server:
        url = server.url  # a port that was just free: nothing listens once the server is gone
    with pytest.raises(ModelError, match="unreachable"):
        remote(url).chat([{"role": "user", "content": "Heads?"}])


# --- the embedded model: reused prompt tokens are counted as llama.cpp reuses them --------------------


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.slow
def test_embedded_model_counts_the_prefix_it_reuses_from_the_context_and_the_state_cache():
    model = LlamaCppModel(load_settings().model)
    model.forget()
    system = {"role": "system", "content": "You answer questions about the Transformer paper. " * 12}
    first = [system, {"role": "user", "content": "How many heads?"}]
    later = first + [{"role": "assistant", "content": "ZQX"}, {"role": "user", "content": "And layers?"}]
    other = [{"role": "system", "content": "Unrelated instructions about cooking."}, {"role": "user", "content": "Hi"}]

    cold = model.chat(first, max_tokens=8)
    assert cold.cached_tokens == 0, cold
    again = model.chat(first, max_tokens=8)  # the live context holds the whole prompt
    assert again.prefill_tokens == 1 and again.cached_tokens == again.prompt_tokens - 1, again
    model.chat(other, max_tokens=8)  # the live context moves on; the first prompt's state was saved
    resumed = model.chat(later, max_tokens=8)
    shared = common_prefix(model.prompt_tokens(first), model.prompt_tokens(later))
    assert shared > common_prefix(model.prompt_tokens(other), model.prompt_tokens(later)) + 50
    assert resumed.cached_tokens == shared, (resumed, shared)  # restored from the state cache
