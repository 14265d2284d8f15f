"""`cove serve`: Cove over HTTP, for OpenAI clients (Open WebUI, LibreChat, editors) and scripts.

    POST /v1/chat/completions   the library as a chat model ("cove" = chain-of-verification,
                                "cove-baseline" = single-shot); streaming (SSE) or not
    GET  /v1/models             those two models
    GET  /api/library           the documents (`cove library --json`)
    POST /api/search            {"query", "k"?, "mode"?}: Cove's hybrid search, passages with pages
    POST /api/ask               {"question", "history"?, "pipeline"?}: exactly `cove ask --json`
    POST /api/documents         add papers: JSON {"url"?, "arxiv"?, "items"?} or a multipart upload
    GET  /api/documents/{id}    the indexed copy of a document (what citations open)

A chat completion's assistant message is Cove's checked answer with its [n] markers, followed by a
Markdown "Sources" list (title, citekey, page, quote, link). The structured citations (the objects
of `cove ask --json`) ride along in `choices[0].message.citations`, the whole answer in `cove`.
The conversation is the request's messages: earlier user/assistant turns become Cove's history
(the Sources list Cove appended to its own answers is dropped again); system prompts are ignored,
since Cove's prompts are its own.

Streaming sends what is true at each moment: `cove_event` chunks with an empty delta while the
pipeline runs (retrieve, draft, plan, verify, revise, check: the step and its message; drafts are
unchecked and never sent as content), then the checked answer as content deltas, one per sentence,
then the Sources list, then a last chunk with `finish_reason: "stop"`, the citations and the
answer JSON. SSE comments keep the connection alive while a question waits in the model queue.

Safety: loopback only unless `api.token` is set (the CLI refuses to bind elsewhere without one);
with a token every request needs `Authorization: Bearer <token>`; without one, requests must name
a loopback Host (no DNS rebinding); a browser request must come from Cove's own origin (no page, even one
on this machine at another port, can drive it; bodies are JSON, so no form or text post skips CORS).
Request bodies must declare their length and stay under `api.max_request_kb` (uploads:
`api.max_upload_mb`); questions under `api.max_question_chars`. Every error is JSON in OpenAI's
shape: {"error": {"message", "type", "code"}}.

One `service.library.LibraryService` per process: every request shares its retriever and chat model,
and questions queue on the model's lock.
"""

from __future__ import annotations

import asyncio
import faulthandler
import hmac
import json
import logging
import re
import signal
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.documents import document_response
from cove import events as ev
from cove.engine import AnswerCancelled
from cove.llm import ModelError
from cove.lock import LibraryBusy
from cove.settings import CoveSettings
from cove.store import StoreUnavailable
from cove.untrusted import answer_text
from service.chat import LibraryEmpty
from service.conversations import citation_lines
from service.library import LibraryService, TooManyAnswers, library_json, shared_service

log = logging.getLogger("cove.api")
DISCONNECT_POLL_S = 0.25  # a client_gone that is handed request data waits this long before asking again

MODELS = {"cove": "cove", "cove-baseline": "baseline"}  # model name -> pipeline
PRIVATE_HOSTS = {"127.0.0.1", "localhost", "::1"}
KEEPALIVE_S = 15.0
SOURCES_HEADING = "\n\nSources:\n"


# --- errors ------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error the client gets as {"error": {"message", "type", "code"}} with an HTTP status."""

    def __init__(
        self, status: int, message: str, code: str, type_: str = "invalid_request_error", retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_
        self.retry_after = retry_after  # seconds; sent as Retry-After when set

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": None}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def api_error(err: BaseException) -> ApiError:
    """What a failure of the core means for a client."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, LibraryEmpty):
        return ApiError(409, str(err), "library_empty")
    if isinstance(err, ModelError):
        return ApiError(503, f"The model could not answer: {err}", "model_unavailable", "server_error")
    if isinstance(err, StoreUnavailable):
        return ApiError(503, f"The library cannot be searched: {err}", "store_unavailable", "server_error")
    if isinstance(err, LibraryBusy):  # another writer holds the library: try again shortly
        return ApiError(503, f"The library is busy: {err}", "library_busy", "server_error", retry_after=30)
    if isinstance(err, TooManyAnswers):
        return ApiError(503, str(err), "too_many_answers", "server_error", retry_after=TooManyAnswers.retry_after_s)
    if isinstance(err, AnswerCancelled):  # nobody reads this: the client hung up
        return ApiError(499, "The client closed the request; the answer was stopped.", "cancelled")
    log.exception("request failed", exc_info=err)
    message = f"Internal error ({type(err).__name__}); see the server log."
    return ApiError(500, message, "internal_error", "server_error")


def is_private_host(host: str) -> bool:
    """Is `cove serve` bound to this machine only? (Any other address, even 127.0.0.2, needs a token.)"""
    return host.strip("[]").lower() in PRIVATE_HOSTS


def check_bind(settings: CoveSettings) -> None:
    """Refuse to serve beyond loopback without a token."""
    if not is_private_host(settings.api.host) and not settings.api.token:
        raise ValueError(
            f"refusing to listen on {settings.api.host} without a token: anyone who can reach it could read "
            "and add to your library. Set COVE_API__TOKEN (clients send it as a Bearer token), or use 127.0.0.1."
        )


class Guard:
    """ASGI middleware run before any route: Host/Origin checks, the bearer token, body size."""

    def __init__(self, app, settings: CoveSettings) -> None:
        self.app = app
        self.token = settings.api.token
        self.private = is_private_host(settings.api.host)
        self.json_limit = settings.api.max_request_kb * 1024
        self.upload_limit = settings.api.max_upload_mb * 1024 * 1024

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            problem = self.problem(scope, headers)
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, scope, headers: dict[str, str]) -> ApiError | None:
        if self.private:
            host = urlsplit("//" + headers.get("host", "")).hostname or ""
            if host not in PRIVATE_HOSTS:
                return ApiError(403, f"Host {host!r} is not this machine: Cove serves loopback only.", "bad_host")
        origin = headers.get("origin")
        if origin and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            # A browser names the page that sent the request. Only Cove's own origin may: another
            # page, even one on this machine at another port, cannot drive the API.
            return ApiError(403, f"Requests from web pages at {origin} are not allowed.", "bad_origin")
        if self.token:
            sent = headers.get("authorization", "")
            scheme, _, value = sent.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                return ApiError(401, "Missing or wrong API token (Authorization: Bearer <token>).", "invalid_api_key")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            return self._type_problem(scope["path"], headers) or self._size_problem(scope["path"], headers)
        return None

    @staticmethod
    def _type_problem(path: str, headers: dict[str, str]) -> ApiError | None:
        """Bodies are JSON (or a multipart upload to /api/documents). A text/plain or form POST is what
        another page can send without a CORS preflight: refused, so no page can start work here."""
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json" or (path == "/api/documents" and kind == "multipart/form-data"):
            return None
        return ApiError(415, "Send the request body as application/json.", "unsupported_media_type")

    def _size_problem(self, path: str, headers: dict[str, str]) -> ApiError | None:
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            return ApiError(411, "Send the request body with a Content-Length.", "length_required")
        upload = path == "/api/documents" and headers.get("content-type", "").startswith("multipart/")
        limit = self.upload_limit if upload else self.json_limit
        if int(length) > limit:
            return ApiError(413, f"The request body is over the {limit // 1024} KB limit.", "request_too_large")
        return None


# --- request bodies ------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens, ...: Cove's settings decide
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class AskRequest(BaseModel):
    question: str
    history: list[Turn] = Field(default_factory=list)
    pipeline: Literal["cove", "baseline"] | None = None


class SearchRequest(BaseModel):
    query: str = Field(min_length=1)
    k: int | None = Field(None, ge=1)
    mode: Literal["hybrid", "dense", "lexical"] | None = None


class AddRequest(BaseModel):
    url: str | None = None
    arxiv: str | None = None
    items: list[str] = Field(default_factory=list)


# --- chat completions ------------------------------------------------------------------------------------
def message_text(message: ChatMessage) -> str:
    if isinstance(message.content, str) or message.content is None:
        return message.content or ""
    if any(part.type != "text" for part in message.content):
        raise ApiError(400, "Only text content is supported (no images or files in messages).", "unsupported_content")
    return "\n".join(part.text or "" for part in message.content)


def conversation(request: ChatRequest, max_chars: int, max_messages: int) -> tuple[str, list[dict[str, str]]]:
    """(question, history) from OpenAI messages: the last user message is the question."""
    if len(request.messages) > max_messages:
        raise ApiError(400, f"At most {max_messages} messages per request.", "too_many_messages")
    last = request.messages[-1]
    if last.role != "user":
        raise ApiError(400, "The last message must be the user's question.", "no_question")
    question = check_question(message_text(last), max_chars)
    history = []
    for message in request.messages[:-1]:
        if message.role in ("user", "assistant"):
            text = message_text(message)
            if message.role == "assistant":
                text = text.split(SOURCES_HEADING, 1)[0]  # the Sources list Cove appended
            if text.strip():
                history.append({"role": message.role, "content": text})
    return question, history


def check_question(text: str, max_chars: int) -> str:
    text = text.strip()
    if not text:
        raise ApiError(400, "The question is empty.", "empty_question")
    if len(text) > max_chars:
        raise ApiError(400, f"The question is {len(text)} characters; the limit is {max_chars}.", "question_too_long")
    return text


def served_link(citation: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A citation whose link a client can open: a local file's link goes through this server."""
    if citation.get("url", "").startswith("file:"):
        return {**citation, "url": f"{base_url}/api/documents/{citation['doc_id']}#page={citation['page']}"}
    return citation


def sources_markdown(answer: dict[str, Any], base_url: str) -> str:
    lines = citation_lines([served_link(c, base_url) for c in answer.get("citations", [])])
    return SOURCES_HEADING + "\n".join(lines[2:]).rstrip() if lines else ""


def completion_json(answer: dict[str, Any], model: str, base_url: str) -> dict[str, Any]:
    # Literal text: the quoted sentences are the documents' own, and clients render Markdown.
    text = answer_text(answer["answer"], answer.get("citations", [])) + sources_markdown(answer, base_url)
    message = {"role": "assistant", "content": text, "citations": answer.get("citations", [])}
    message["refusal"] = answer["answer"] if answer.get("refused") else None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": usage(answer),
        "cove": answer,
    }


def usage(answer: dict[str, Any]) -> dict[str, int]:
    tokens = answer.get("tokens", {})
    prompt, completion = int(tokens.get("prompt", 0)), int(tokens.get("decode", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def event_json(event: ev.AnswerEvent) -> dict[str, Any] | None:
    """One pipeline event as a client sees it: its type, stage, message and typed fields. The model's
    draft tokens are not sent (unchecked text is not the answer), nor the final answer object."""
    if isinstance(event, (ev.DraftToken, ev.Finished)):
        return None
    data = {k: v for k, v in asdict(event).items() if k not in ("stage", "message")}
    return {"event": type(event).__name__, "stage": event.stage.value, "message": event.message, **data}


def _release_all(*releases: Callable[[], None]) -> None:
    for release in releases:
        release()


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """`action`, run on the first call only (thread-safe)."""
    done = threading.Lock()

    def run() -> None:
        if done.acquire(blocking=False):
            action()

    return run


class CompletionStream:
    """The SSE body of a streamed chat completion: the answer runs in a thread, events flow out.
    When the client hangs up, the body is closed and the answer cancelled: the model stops at its
    next token, or the question leaves the model's queue."""

    def __init__(self, service: LibraryService, question: str, history, model: str, base_url: str, usage_chunk: bool):
        self.service, self.question, self.history = service, question, history
        self.model, self.base_url, self.usage_chunk = model, base_url, usage_chunk
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.cancel = threading.Event()
        # Held by the answer and by this response: TooManyAnswers here is a 503 before the stream starts.
        # Each hold ends once: the answer's when its thread ends, the response's when the body ends.
        # A body never started (a client gone at once) drops this object unread: then both end here,
        # since the thread, which holds this object while it runs, never started.
        self.slot = service.reserve_answer(holders=2)
        self.release_answer_hold = _once(self.slot.release)
        self.release_response_hold = _once(self.slot.release)
        weakref.finalize(self, _release_all, self.release_answer_hold, self.release_response_hold)

    def _run(self, put) -> None:
        def on_event(event: ev.AnswerEvent) -> None:
            payload = event_json(event)
            if payload is not None:
                put(("event", payload))

        try:
            answer = self.service.ask(self.question, self.history, MODELS[self.model], on_event, self.cancel, self.slot)
            log.info("a streamed answer was given %s", answer_summary(answer))
            put(("answer", answer.to_json()))
        except AnswerCancelled:
            log.info("a streamed answer was stopped: its client hung up")
        except Exception as err:  # reported to the client inside the stream
            log.info("a streamed answer failed: %s", type(err).__name__)
            put(("error", err))
        finally:
            self.release_answer_hold()

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        threading.Thread(target=self._run, args=(put,), name="cove-api-answer", daemon=True).start()
        try:  # closed (GeneratorExit or cancellation) when the client hangs up: then `finally` cancels
            yield self.chunk({"role": "assistant", "content": ""})
            while True:
                try:
                    kind, payload = await asyncio.wait_for(events.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": waiting for the model\n\n"
                    continue
                if kind == "event":
                    yield self.chunk({}, cove_event=payload)
                elif kind == "error":
                    yield f"data: {json.dumps(api_error(payload).body())}\n\n"
                    break
                else:
                    for piece in self._answer(payload):
                        yield piece
                    break
            yield "data: [DONE]\n\n"
        finally:
            self.cancel.set()  # a no-op once the answer is done
            self.release_response_hold()

    def _answer(self, answer: dict[str, Any]) -> Iterator[str]:
        for sentence in re.split(r"(?<=[.!?])\s+", answer_text(answer["answer"], answer.get("citations", []))):
            if sentence:
                yield self.chunk({"content": sentence + " "})
        sources = sources_markdown(answer, self.base_url)
        if sources:
            yield self.chunk({"content": sources})
        yield self.chunk({"citations": answer.get("citations", [])}, "stop", cove=answer)
        if self.usage_chunk:
            body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage(answer)}  # fmt: skip
            yield f"data: {json.dumps(body)}\n\n"


def answer_summary(answer) -> str:
    """For the server's log: how long an answer took and where (no question or answer text: the log
    may be read by others than the asker)."""
    timings = getattr(answer, "timings", None) or {}
    steps = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in timings.items() if k != "total_s")
    return f"in {timings.get('total_s', 0.0):.1f} s ({steps})"


async def answer_while_connected(request: Request, ask, question: str, history, pipeline: str | None):
    """`ask(...)` in a worker thread, cancelled if the client hangs up before it ends (uvicorn tells
    the app through `http.disconnect`; nothing else stops a thread that answers for nobody)."""
    cancel = threading.Event()
    work = asyncio.ensure_future(run_in_threadpool(ask, question, history, pipeline, None, cancel))
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            cancel.set()
            log.info("an answer was stopped: its client hung up")
            await asyncio.wait({work})  # the answer ends at its next step or token
        answer = work.result()
        log.info("an answer was given %s", answer_summary(answer))
        return answer
    except ApiError:
        raise
    except Exception as err:
        log.info("an answer failed: %s", type(err).__name__)
        raise api_error(err) from err
    finally:
        cancel.set()
        gone.cancel()


async def client_gone(request: Request) -> None:
    """Returns once the client has hung up. It waits on the request's own message channel, as
    Starlette's streaming responses do (uvicorn sends `http.disconnect` when the connection drops),
    instead of polling `is_disconnected()`, which can miss the message while the loop is busy."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(DISCONNECT_POLL_S)  # body already read: never spin on the loop


# --- the app ---------------------------------------------------------------------------------------------
def create_app(settings: CoveSettings, service: LibraryService | None = None) -> FastAPI:
    """The API over the library in `settings.home` (one shared service per process)."""
    check_bind(settings)
    service = service or shared_service(settings)
    limits = settings.api
    app = FastAPI(title="Cove", version="1", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.add_middleware(Guard, settings=settings)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors())
        return ApiError(400, f"Invalid request: {problems}", "invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return ApiError(err.status_code, str(err.detail), code).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception):
        return api_error(err).response()

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "cove"}
                                           for name in MODELS]}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        if body.model not in MODELS:
            raise ApiError(404, f"The model {body.model!r} does not exist: use one of {', '.join(MODELS)}.",
                           "model_not_found")  # fmt: skip
        question, history = conversation(body, limits.max_question_chars, limits.max_messages)
        if body.stream:
            try:  # fail before the stream starts, with a status code (off the event loop: it may load models)
                await run_in_threadpool(service.ensure_ready)
            except Exception as err:
                raise api_error(err) from err
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            try:
                stream = CompletionStream(service, question, history, body.model, base_url(request), include_usage)
            except Exception as err:
                raise api_error(err) from err
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream.__aiter__(), media_type="text/event-stream", headers=headers)
        answer = await answer_while_connected(request, service.ask, question, history, MODELS[body.model])
        return completion_json(answer.to_json(), body.model, base_url(request))

    @app.post("/api/ask")
    async def ask(body: AskRequest, request: Request) -> dict[str, Any]:
        question = check_question(body.question, limits.max_question_chars)
        if len(body.history) > limits.max_messages:
            raise ApiError(400, f"At most {limits.max_messages} history turns.", "too_many_messages")
        history = [t.model_dump() for t in body.history]
        return (await answer_while_connected(request, service.ask, question, history, body.pipeline)).to_json()

    @app.post("/api/search")
    def search(body: SearchRequest) -> dict[str, Any]:
        query = check_question(body.query, limits.max_question_chars)
        if body.k is not None and body.k > limits.max_search_k:
            raise ApiError(400, f"k is at most {limits.max_search_k}.", "k_too_large")
        try:
            return service.search(query, body.k, body.mode)
        except Exception as err:
            raise api_error(err) from err

    @app.get("/api/library")
    def library() -> dict[str, Any]:
        return {"documents": library_json(service.documents())}

    @app.post("/api/documents")
    async def add_documents(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await _add_upload(request)
        try:
            body = AddRequest.model_validate_json(await request.body())
        except ValueError as err:
            raise ApiError(400, f"Invalid request: {err}", "invalid_request") from err
        items = [i for i in (body.url, body.arxiv, *body.items) if i and i.strip()]
        if not items:
            raise ApiError(400, "Name something to add: url, arxiv, items, or upload a file.", "nothing_to_add")
        return await run_in_threadpool(service.add, items)

    async def _add_upload(request: Request) -> dict[str, Any]:
        form = await request.form(max_files=1, max_fields=10)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "Upload the PDF as the multipart field 'file'.", "nothing_to_add")
            data = await upload.read()
            name = Path(upload.filename or "upload.pdf").name
        finally:
            await form.close()
        return await run_in_threadpool(service.add_upload, name, data, limits.max_upload_mb * 1024 * 1024)

    @app.get("/api/documents/{doc_id}")
    def document(doc_id: str):
        found = document_response(service.settings, doc_id)
        if found is None:
            raise ApiError(404, f"No local copy of {doc_id!r} in the library.", "document_not_found")
        return found

    return app


def warm_up(service: LibraryService) -> None:
    """Load the embedding and chat models in the background, so the first question does not wait."""

    def load() -> None:
        from cove.llm import load_chat_model

        try:
            service.chat.retriever()
            model = load_chat_model(service.settings.model, service.settings.models_dir)
            getattr(model, "check", lambda: None)()  # the self-check runs now, not in the first answer
        except Exception:  # the first request reports it properly
            log.warning("warming up failed", exc_info=True)

    threading.Thread(target=load, name="cove-warm-up", daemon=True).start()


def serve(settings: CoveSettings) -> None:
    """Run the API with uvicorn until interrupted (what `cove serve` does)."""
    import uvicorn

    check_bind(settings)
    # `kill -USR1 <pid>` writes every thread's stack to the server's stderr: what a stuck answer
    # is doing, without stopping the server (the tests use it when an answer does not progress).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    cove_log = logging.getLogger("cove")
    if not cove_log.handlers:  # Cove's own events (answers stopped, failures) beside uvicorn's lines
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        cove_log.addHandler(handler)
        cove_log.setLevel(logging.INFO)
    service = shared_service(settings)
    app = create_app(settings, service)
    warm_up(service)
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_level="info", timeout_graceful_shutdown=5)
