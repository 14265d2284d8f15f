"""What `cove chat` runs: the Streamlit chat app plus one route that opens the library's documents.

Citations link to ``/cove/doc/<doc_id>#page=N``: the copy of the PDF that was indexed (the user's
file, or the cached download), so the page a citation names is the page the browser opens, offline.
Only PDFs are served as documents; anything else is sent as plain text, so an archived web page
cannot run scripts on the app's origin.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

DOC_ROUTE = "/cove/doc/{doc_id}"


def document(request: Request) -> Response:
    """The indexed copy of one document, inline (a sync endpoint: Starlette runs it in a thread)."""
    from cove.catalog import Catalog
    from cove.settings import load_settings
    from ingest.pipeline import document_file

    settings = load_settings()
    doc_id = request.path_params["doc_id"]
    if not settings.catalog_path.exists():
        return PlainTextResponse("The library is empty.", status_code=404)
    catalog = Catalog(settings.catalog_path)
    try:
        record = catalog.get(doc_id)
    finally:
        catalog.close()
    path = document_file(record, settings) if record else None
    if path is None:
        return PlainTextResponse(f"No local copy of {doc_id!r} in the library.", status_code=404)
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    if record.kind == "pdf":
        name = Path(record.source).name if record.source.lower().endswith(".pdf") else f"{doc_id}.pdf"
        return FileResponse(
            path, media_type="application/pdf", filename=name, content_disposition_type="inline", headers=headers
        )
    return FileResponse(path, media_type="text/plain; charset=utf-8", headers=headers)


app = st.App(str(Path(__file__).with_name("streamlit_app.py")), routes=[Route(DOC_ROUTE, document)])
