"""What `cove chat` runs: the Streamlit chat app plus one route that opens the library's documents.

Citations link to ``/cove/doc/<doc_id>#page=N``: the copy of the document that was indexed, so the
page a citation names is the page the browser opens, offline. What the route serves is narrow on
purpose (see docs/security.md):

- only documents whose catalog status is `ok`;
- only the copies ingest made under COVE_HOME (`library/files/<sha256>.<ext>`, found by content
  hash, symlinks resolved and kept inside that folder): never a path or URL from the catalog, which
  a shared store may have filled in;
- PDFs as PDFs, anything else as plain text (sniffed from the bytes, not from the catalog's kind),
  so an archived web page cannot run scripts on the app's origin.

A second route, ``/cove/page/<doc_id>/<n>?q=<quote>``, serves page n of such a PDF as a PNG with the
quote highlighted (`app.pages`: same rules, plus a page inside the document, a bounded quote, a bounded
render). Every request, the page's websocket included, first passes `app.access.AccessGuard` (Host and
Origin checks, and the access token when the app listens beyond loopback).
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.access import AccessGuard
from app.documents import document_response
from app.pages import PageUnavailable, RenderFailed, highlighted_page
from cove.settings import load_settings

DOC_ROUTE = "/cove/doc/{doc_id}"
PAGE_ROUTE = "/cove/page/{doc_id}/{page}"
_NOT_HERE = "No copy of this document is kept in this library (run `cove ingest` on it here)."


def document(request: Request) -> Response:
    """The indexed copy of one document, inline (a sync endpoint: Starlette runs it in a thread)."""
    found = document_response(load_settings(), request.path_params["doc_id"])
    return found if found is not None else PlainTextResponse(_NOT_HERE, status_code=404)


def page_image(request: Request) -> Response:
    """A page of an indexed PDF as a PNG, the quote `q` highlighted (sync: rendering runs in a thread).
    `X-Cove-Highlight` says what was marked: quote, row, partial or none."""
    try:
        number = request.path_params["page"]
        page = int(number) if re.fullmatch(r"[1-9][0-9]{0,5}", number) else 0
        view = highlighted_page(load_settings(), request.path_params["doc_id"], page, request.query_params.get("q", ""))
    except PageUnavailable as err:
        return PlainTextResponse(str(err), status_code=404)
    except RenderFailed as err:
        return PlainTextResponse(str(err), status_code=503)
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
        "Content-Security-Policy": "default-src 'none'",
        "X-Cove-Highlight": view.highlight,
    }
    return Response(view.png, media_type="image/png", headers=headers)


app = st.App(
    str(Path(__file__).with_name("streamlit_app.py")),
    routes=[Route(DOC_ROUTE, document), Route(PAGE_ROUTE, page_image)],
    middleware=[Middleware(AccessGuard, settings=load_settings().app)],
)
