"""The one way a front end serves a library document: the copy this home indexed, or nothing.

The chat app's page route (`/cove/doc/<id>`, app/server.py) and the API's `GET /api/documents/<id>`
(app/api.py) both answer with `document_response`, so they follow the same rules (docs/security.md):
only `ok` documents, only this home's own copies under COVE_HOME (`ingest.copies`), looked up by a
safe id; PDFs inline, anything else as sandboxed plain text, so an archived web page cannot run
scripts on the app's origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starlette.responses import FileResponse, Response

from cove.settings import CoveSettings
from cove.untrusted import SAFE_DOC_ID

if TYPE_CHECKING:
    from cove.catalog import DocumentRecord


def served_copy(settings: CoveSettings, doc_id: str) -> tuple[DocumentRecord, Path, str] | None:
    """The catalog record, the indexed copy and its kind ("pdf", "text", ... sniffed from the bytes) of a
    document this home serves; None when it serves none (odd id, not `ok`, no copy of its own)."""
    from cove.catalog import Catalog
    from ingest.copies import document_file
    from ingest.parse import sniff_kind

    if not isinstance(doc_id, str) or not SAFE_DOC_ID.fullmatch(doc_id) or not settings.catalog_path.exists():
        return None
    catalog = Catalog(settings.catalog_path)
    try:
        record = catalog.get(doc_id)
    finally:
        catalog.close()
    path = document_file(record, settings) if record else None
    if path is None:
        return None
    with path.open("rb") as f:
        return record, path, sniff_kind(f.read(4096))


def document_response(settings: CoveSettings, doc_id: str) -> Response | None:
    """The indexed copy of one document as a response, or None when this home serves none."""
    served = served_copy(settings, doc_id)
    if served is None:
        return None
    record, path, kind = served
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    if kind == "pdf":
        name = Path(record.source).name if record.source.lower().endswith(".pdf") else f"{doc_id}.pdf"
        return FileResponse(
            path, media_type="application/pdf", filename=name, content_disposition_type="inline", headers=headers
        )
    headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return FileResponse(path, media_type="text/plain; charset=utf-8", headers=headers)
