"""The library's own copies of the documents it indexed: what the page route serves.

Citations open `/cove/doc/<id>#page=N` (app/server.py). That route must never open a path or URL
that came from elsewhere (a catalog record mirrored from a shared store, say), so ingest keeps the
exact bytes it indexed under COVE_HOME, named by their SHA-256 (`library/files/<sha256>.<ext>`),
and the route looks them up by the record's content hash alone:

- downloads and uploads already lie under COVE_HOME: they are hard-linked (no extra disk);
- the user's own files are copied (they may move or change later, and are never served from
  where they lie);
- a lookup resolves symlinks and refuses anything that ends up outside the copies folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from cove.catalog import STATUS_OK, DocumentRecord
from cove.settings import CoveSettings
from cove.untrusted import resolve_inside

# The library's own copies of indexed documents, named by content hash (`settings.files_dir`).
_COPY_SUFFIX = {"pdf": ".pdf", "html": ".html", "markdown": ".md", "text": ".txt"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def library_copy(settings: CoveSettings, content_hash: str, kind: str) -> Path | None:
    """Where this home keeps the indexed bytes of a document: COVE_HOME/library/files/<sha256>.<ext>."""
    if not _SHA256.fullmatch(content_hash or "") or kind not in _COPY_SUFFIX:
        return None
    return settings.files_dir / f"{content_hash}{_COPY_SUFFIX[kind]}"


def document_file(record: DocumentRecord, settings: CoveSettings) -> Path | None:
    """The copy of an indexed (`ok`) document that citations open, if this home has it."""
    if record.status != STATUS_OK:
        return None
    path = library_copy(settings, record.content_hash, record.kind)
    real = resolve_inside(path, [settings.files_dir]) if path else None
    return real if real is not None and real.is_file() else None


def keep_library_copy(settings: CoveSettings, path: Path, content_hash: str, kind: str) -> None:
    """Keep the bytes being indexed under COVE_HOME (a hard link when they already lie there)."""
    target = library_copy(settings, content_hash, kind)
    if target is None or target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        linked = False
        if resolve_inside(path, [settings.home_dir]) is not None:
            with contextlib.suppress(OSError):
                os.link(path, partial)
                linked = True
        if not linked:
            shutil.copyfile(path, partial)
        os.replace(partial, target)  # atomic: never a half copy under the final name
    finally:
        partial.unlink(missing_ok=True)
