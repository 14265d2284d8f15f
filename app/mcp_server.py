"""`cove mcp`: the library for MCP clients (desktop assistants, IDE agents), with the official `mcp` SDK.

Tools:
- `search_papers(query, k)`: Cove's hybrid search; passages with title, page, section, link, citekey;
- `ask_papers(question, history?, pipeline?)`: Cove's checked answer with [n] markers and its
  citations (title, source, page, quote, link, citekey); a question the library does not cover
  is refused, with the closest sources;
- `list_papers()`: the documents (as `cove library --json`);
- `add_paper(url_or_path)`: an arXiv id, a URL, or a local file or folder, ingested now.

Resources: `cove://papers/{doc_id}` (a document: title, source, pages, and its page URIs) and
`cove://papers/{doc_id}/pages/{page}` (the indexed text of one page, what citations point at).

`cove mcp` speaks stdio (the SDK points fd 1 at stderr while serving, so progress output of the
models never corrupts the protocol); `cove mcp --http` serves streamable HTTP on 127.0.0.1 only,
with the SDK's DNS-rebinding protection and a bearer token on every request (`api.token`, or one
generated and printed at start). `add_paper` reads local paths only inside `ingest.allowed_roots`.
Like `cove serve`, one `service.library` service per process.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import Resource as MCPResource

from cove.settings import CoveSettings
from cove.untrusted import answer_text
from service.library import LibraryService, NotFound, library_json, shared_service

INSTRUCTIONS = (
    "Cove is the user's private library of research papers. Use search_papers to find passages and "
    "ask_papers for an answer whose every sentence was checked against a cited page; quote its "
    "citations (title, page) when you use it. A refusal means the library does not cover the question."
)
MAX_LISTED_DOCUMENTS = 500  # resources/list stays small for big libraries; the templates reach every page


def _failure(err: Exception) -> ToolError:
    """What a failing tool tells the client: a plain reason, no traceback."""
    from app.api import api_error

    return ToolError(api_error(err).message)


def citation_view(citation: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "title", "source", "page", "quote", "url", "citekey", "doc_id")
    return {key: citation.get(key, "") for key in keys}


class CoveMCP(MCPServer):
    """The MCP server over one library; resources/list names every indexed document."""

    def __init__(self, service: LibraryService) -> None:
        super().__init__(name="cove", title="Cove research library", instructions=INSTRUCTIONS, log_level="WARNING")
        self.service = service
        self._register()

    async def list_resources(self) -> list[MCPResource]:
        documents = await anyio.to_thread.run_sync(self.service.documents)
        return [
            MCPResource(
                uri=f"cove://papers/{d.doc_id}",
                name=d.doc_id,
                title=d.title or d.source,
                description=f"{d.pages} pages; page text at cove://papers/{d.doc_id}/pages/{{n}}",
                mime_type="application/json",
            )
            for d in documents
            if d.status == "ok"
        ][:MAX_LISTED_DOCUMENTS]

    def _register(self) -> None:
        service = self.service
        limits = service.settings.api

        @self.tool()
        def search_papers(query: str, k: int = 5) -> dict[str, Any]:
            """Search the library's papers (hybrid dense + keyword search). Returns the best passages
            with title, page, section, link and the passage text."""
            if not query.strip() or len(query) > limits.max_question_chars:
                raise ToolError(f"query must be 1-{limits.max_question_chars} characters")
            try:
                return service.search(query, max(1, min(k, limits.max_search_k)))
            except Exception as err:
                raise _failure(err) from err

        @self.tool()
        def ask_papers(
            question: str,
            history: list[dict[str, str]] | None = None,
            pipeline: Literal["cove", "baseline"] = "cove",
        ) -> dict[str, Any]:
            """Answer a question from the library with checked, page-level citations. `history`: earlier
            turns [{"role": "user"|"assistant", "content": ...}] for follow-ups. `pipeline`: "cove"
            (chain-of-verification) or "baseline" (single answer)."""
            if not question.strip() or len(question) > limits.max_question_chars:
                raise ToolError(f"question must be 1-{limits.max_question_chars} characters")
            turns = [t for t in history or [] if t.get("role") in ("user", "assistant") and t.get("content")]
            try:
                answer = service.ask(question, turns[-limits.max_messages :], pipeline).to_json()
            except Exception as err:
                raise _failure(err) from err
            return {
                "answer": answer_text(answer["answer"], answer["citations"]),  # literal: hosts render Markdown
                "refused": answer["refused"],
                "mode": answer["mode"],
                "citations": [citation_view(c) for c in answer["citations"]],
                "corrections": answer["corrections"],
            }

        @self.tool()
        def list_papers() -> dict[str, Any]:
            """The papers in the library: title, source, pages, status (and the error of failed ones), citekey."""
            return {"papers": library_json(service.documents())}

        @self.tool()
        def add_paper(url_or_path: str) -> dict[str, Any]:
            """Add a paper: an arXiv id (2106.09685), a URL (PDF or HTML), or a local file or folder."""
            target = url_or_path.strip()
            if not target:
                raise ToolError("give an arXiv id, a URL or a local path")
            local = Path(target).expanduser()
            try:
                if local.exists() or target.startswith(("/", "~", "./", "../")):
                    return service.add(paths=[str(local)])
                return service.add(items=[target])
            except Exception as err:
                raise _failure(err) from err

        @self.resource("cove://papers/{doc_id}", mime_type="application/json")
        def paper(doc_id: str) -> str:
            """A document of the library: its catalog record and the URIs of its pages."""
            record = service.document(doc_id)
            if record is None:
                raise ResourceError(f"no document {doc_id!r} in the library")
            data = library_json([record])[0]
            data["page_uris"] = [f"cove://papers/{doc_id}/pages/{n}" for n in range(1, record.pages + 1)]
            return json.dumps(data, ensure_ascii=False)

        @self.resource("cove://papers/{doc_id}/pages/{page}", mime_type="text/plain")
        def paper_page(doc_id: str, page: str) -> str:
            """The indexed text of one page of a document."""
            try:
                return service.page_text(doc_id, int(page))
            except (NotFound, ValueError) as err:
                raise ResourceError(str(err)) from err


def build_server(settings: CoveSettings) -> CoveMCP:
    return CoveMCP(shared_service(settings))


def run_stdio(settings: CoveSettings) -> None:
    build_server(settings).run("stdio")


def run_http(settings: CoveSettings, token: str) -> None:
    """Streamable HTTP on 127.0.0.1 only (the SDK then refuses foreign Host and Origin headers), and
    every request must carry `token` as a bearer token: any local process (or web page) could
    otherwise call add_paper and read back what it added."""
    import uvicorn

    app = build_server(settings).streamable_http_app(host="127.0.0.1")
    uvicorn.run(BearerToken(app, token), host="127.0.0.1", port=settings.api.mcp_port, log_level="warning")


class BearerToken:
    """ASGI middleware: HTTP requests without ``Authorization: Bearer <token>`` get 401."""

    def __init__(self, app, token: str) -> None:
        if not token:
            raise ValueError("the MCP HTTP transport needs a token")
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            scheme, _, value = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token):
                body = json.dumps({"error": "Missing or wrong token (Authorization: Bearer <token>)."}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
