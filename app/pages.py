"""A cited PDF page as a picture, with the quoted passage highlighted: what "Show on page" opens.

The chat app shows it under a citation (`st.image`), and the page route `/cove/page/<id>/<n>?q=<quote>`
(app/server.py) serves the same PNG to a browser. Both go through `highlighted_page`.

**Why a server-side PNG and not a PDF viewer component.** The machine is offline and only PyPI, npm
and Debian packages install. `streamlit-pdf-viewer` 0.0.30 does install and bundles pdf.js 4.3.136
(worker included, no CDN), but it ships the *whole PDF* to the browser as a base64 component argument
(the Transformer paper: 2.1 MB, 2.9 MB as base64, on every script run that shows it), runs 2 MB of
third-party JavaScript in a component iframe, and leaves a huge or hostile page to the user's browser,
where nothing on the server can bound it. Rendering here with PDFium (`pypdfium2`, a wheel with the
library inside) measured, on the 2-core machine: 0.07-0.17 s per letter page at 2x (1224x1584 px),
PNG encoding 0.14 s, 0.3-0.6 MB per page, plus about 0.35 s to start the render process. The image
is cached under COVE_HOME, so showing it again costs a file read. The highlight is drawn with
Pillow from boxes computed here, so a test can check its pixels.

**Where the highlight comes from.** Word positions recorded at parse time (`ingest.layout`:
`positions_path`, mapped to the page's text); nothing is re-extracted at view time. A quote is
located in that text (`cove.docs.locate_quote`: case, spacing, punctuation and line-break hyphens
ignored); a table-row quote, which the engine renders as "Table 3 (header): row" rather than
verbatim, is located by its row's cells; a quote that spans something the page text has in another
order (a column break on a re-ordered page) is highlighted sentence by sentence. A quote that cannot
be located gives the page without a highlight, and says so.

**Bounded and guarded.** The same rules as the document route (`app.documents`): a doc id of a safe
shape, only `ok` documents, only this home's own copy (and only when that copy is a PDF), a page
number inside the document, a quote of limited length. Rendering runs in a child process
(`app/render_page.py`) with a deadline, an address-space and CPU cap and a pixel cap; at most
`app.page_renders_at_once` run at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cove.docs import PagePositions, table_row_of
from cove.settings import CoveSettings

MAX_QUOTE_CHARS = 2000  # citations carry quotes of at most 400 characters; anything longer is not one
MIN_ROW_CHARS = 6  # fewer letters and digits than this in a row's cells could match anywhere on the page
HIGHLIGHT_FILL = (255, 200, 0, 110)  # translucent yellow over the words
HIGHLIGHT_EDGE = (230, 120, 0, 255)
RENDER_SCRIPT = Path(__file__).with_name("render_page.py")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")

Box = tuple[float, float, float, float]


class PageUnavailable(Exception):
    """This page cannot be shown (the reason is safe to show: it names no path)."""


@dataclass
class PageView:
    """A rendered page and what was highlighted on it."""

    png: bytes
    page: int
    highlight: str  # "quote", "row" (a table row's cells), "partial" (some sentences), "none"
    boxes: list[Box] = field(default_factory=list)  # the highlighted words, in PDF user space

    @property
    def note(self) -> str:
        """What a reader should know about the highlight ("" when the whole quote is marked)."""
        return {
            "none": "The quoted passage could not be located on this page: the page is shown without a highlight.",
            "partial": "Only part of the quoted passage was located on this page: that part is highlighted.",
        }.get(self.highlight, "")


# --- locating the quote ---------------------------------------------------------------------------------


def locate_boxes(positions: PagePositions, quote: str) -> tuple[str, list[Box]]:
    """How the quote was found on the page ("quote", "row", "partial" or "none") and the word boxes it covers."""
    from ingest.layout import find_quote_boxes

    boxes = find_quote_boxes(positions, quote)
    if boxes:
        return "quote", boxes
    boxes = _row_boxes(positions, table_row_of(quote) or "")
    if boxes:
        return "row", boxes
    sentences = [p for p in _SENTENCE_END.split(quote) if len(p.split()) >= 4]
    if len(sentences) > 1:
        boxes = [box for sentence in sentences for box in find_quote_boxes(positions, sentence)]
    return ("partial", boxes) if boxes else ("none", [])


def _row_boxes(positions: PagePositions, row: str) -> list[Box]:
    """The cells of a table row on the page. A row-group label the table carries down ("(A)" on its
    first row only, in print) may be missing: then the row is found by its later cells."""
    from ingest.layout import find_quote_boxes

    cells = [cell.strip() for cell in row.split("|") if cell.strip()]
    for first in range(len(cells)):
        rest = " ".join(cells[first:])
        if sum(c.isalnum() for c in rest) < MIN_ROW_CHARS:
            break
        boxes = find_quote_boxes(positions, rest)
        if boxes:
            return boxes
    return []


# --- the guarded entry point ------------------------------------------------------------------------------


def highlighted_page(settings: CoveSettings, doc_id: str, page: int, quote: str = "") -> PageView:
    """Page `page` of an indexed PDF as a PNG with `quote` highlighted. Raises `PageUnavailable` when the
    document, its copy or the page is not one this home serves, and `RenderFailed` when rendering failed
    or ran out of time."""
    from ingest.layout import load_positions, positions_path

    record, pdf = _served_pdf(settings, doc_id)
    if not isinstance(page, int) or not 1 <= page <= max(record.pages, 1):
        raise PageUnavailable(f"This document has no page {page}.")
    quote = " ".join(str(quote)[:MAX_QUOTE_CHARS].split())
    positions = None
    path = positions_path(settings, doc_id)
    if quote and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # a damaged file: no highlight
            positions = load_positions(path).get(page)
    how, boxes = locate_boxes(positions, quote) if positions and quote else ("none", [])
    base, geometry = _base_render(settings, record.content_hash, pdf, page)
    if not boxes:
        return PageView(base.read_bytes(), page, how)
    return PageView(_with_highlights(settings, base, geometry, boxes), page, how, boxes)


def _served_pdf(settings: CoveSettings, doc_id: str):
    """The catalog record and the PDF copy of a document this home serves (the document route's rules)."""
    from app.documents import served_copy

    served = served_copy(settings, doc_id)
    if served is None:
        raise PageUnavailable("No copy of this document is kept in this library (run `cove ingest` on it here).")
    record, path, kind = served
    if kind != "pdf":
        raise PageUnavailable("This document is not a PDF: it has no pages to show.")
    return record, path


# --- rendering, bounded and cached -------------------------------------------------------------------------


class RenderFailed(Exception):
    """The page could not be rendered in time or at all (the reason is safe to show)."""


_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _render_slot(settings: CoveSettings) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(settings.app.page_renders_at_once, threading.BoundedSemaphore(
            settings.app.page_renders_at_once))  # fmt: skip


def page_cache_dir(settings: CoveSettings, content_hash: str) -> Path:
    """Where the rendered pages of one document file are kept (by content hash: a changed file renders anew)."""
    safe = re.sub(r"[^0-9a-f]", "", content_hash.lower())[:64] or "unknown"
    return settings.home_dir / "cache" / "pages" / safe


def _base_render(settings: CoveSettings, content_hash: str, pdf: Path, page: int) -> tuple[Path, dict]:
    """The page without highlights (rendered once, then read from the cache) and its geometry."""
    app = settings.app
    folder = page_cache_dir(settings, content_hash)
    stem = f"p{page}-s{app.page_render_scale:g}-m{app.page_render_max_pixels}"
    image, meta = folder / f"{stem}.png", folder / f"{stem}.json"
    if image.is_file() and meta.is_file():
        with contextlib.suppress(OSError, ValueError):
            return image, json.loads(meta.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{stem}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        geometry = _run_renderer(settings, pdf, page, partial)
        meta.write_text(json.dumps(geometry))  # before the image: an image is only ever read with its geometry
        partial.replace(image)
    finally:
        partial.unlink(missing_ok=True)
    _trim_cache(settings, keep={image, meta})
    return image, geometry


def _trim_cache(settings: CoveSettings, keep: set[Path]) -> None:
    """Keep the page cache under `app.page_cache_mb` after every write into it: the least recently
    written files go first, never those in `keep` (what this request just wrote and reads next).

    So the cache holds at most the limit, or, when the files in `keep` are larger than the limit by
    themselves, those and nothing else. Files being written (``.part``) are another render's: skipped."""
    root = settings.home_dir / "cache" / "pages"
    files = []
    for path in root.glob("*/*"):
        if path in keep or path.name.endswith(".part"):
            continue
        with contextlib.suppress(OSError):  # another render may be trimming too
            stat = path.stat()
            files.append((stat.st_mtime, stat.st_size, path))
    kept = 0
    for path in keep:
        with contextlib.suppress(OSError):
            kept += path.stat().st_size
    total, limit = kept + sum(size for _, size, _ in files), settings.app.page_cache_mb * 2**20
    for _, size, path in sorted(files):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        total -= size


def _run_renderer(settings: CoveSettings, pdf: Path, page: int, out: Path) -> dict:
    app = settings.app
    slot = _render_slot(settings)
    if not slot.acquire(timeout=app.page_render_timeout_s):
        raise RenderFailed("Other pages are being rendered: try again in a moment.")
    try:
        command = [
            sys.executable, "-I", str(RENDER_SCRIPT), str(pdf), str(page), str(app.page_render_scale),
            str(app.page_render_max_pixels), str(app.page_render_memory_mb), str(int(app.page_render_timeout_s) + 1),
            str(out),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=app.page_render_timeout_s)
        except subprocess.TimeoutExpired as err:
            raise RenderFailed(
                f"Rendering this page took longer than {app.page_render_timeout_s:g} s "
                "(app.page_render_timeout_s): it is not shown."
            ) from err
    finally:
        slot.release()
    if done.returncode != 0 or not out.is_file():
        raise RenderFailed("This page could not be rendered (the PDF may be damaged or too complex).")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as err:
        raise RenderFailed("This page could not be rendered.") from err


def _with_highlights(settings: CoveSettings, base: Path, geometry: dict, boxes: list[Box]) -> bytes:
    """The base image with translucent rectangles over `boxes` (cached by the boxes drawn)."""
    from PIL import Image, ImageDraw

    key = hashlib.sha256(json.dumps([geometry, boxes]).encode()).hexdigest()[:20]
    cached = base.with_name(f"{base.stem}-h{key}.png")
    if cached.is_file():
        with contextlib.suppress(OSError):
            return cached.read_bytes()
    with Image.open(base) as opened:
        image = opened.convert("RGBA")
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for rect in pixel_rects(geometry, merge_line_boxes(boxes)):
        draw.rectangle(rect, fill=HIGHLIGHT_FILL, outline=HIGHLIGHT_EDGE, width=1)
    out = io.BytesIO()
    Image.alpha_composite(image, overlay).convert("RGB").save(out, format="PNG", compress_level=3)
    data = out.getvalue()
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.part")
    partial.write_bytes(data)
    partial.replace(cached)
    # Each quote gives another image: without a trim here, distinct `?q=` values grew the cache
    # past its limit (1 MB allowed, 3.8 MB held). The base page stays: the next quote needs it.
    _trim_cache(settings, keep={cached, base, base.with_suffix(".json")})
    return data


def merge_line_boxes(boxes: list[Box]) -> list[Box]:
    """Consecutive word boxes of one line as one box (a marked passage, not a row of word frames);
    words far apart (table cells) stay apart."""
    merged: list[Box] = []
    for box in boxes:
        if merged:
            x0, y0, x1, y1 = merged[-1]
            height = max(y1 - y0, box[3] - box[1], 1.0)
            same_line = min(y1, box[3]) - max(y0, box[1]) > 0.5 * height
            if same_line and 0 <= box[0] - x1 < 1.5 * height:
                merged[-1] = (x0, min(y0, box[1]), box[2], max(y1, box[3]))
                continue
        merged.append(box)
    return merged


def pixel_rects(geometry: dict, boxes: list[Box], pad: float = 1.5) -> list[tuple[int, int, int, int]]:
    """PDF user-space boxes as pixel rectangles (left, top, right, bottom) on the rendered image, which
    shows the page's crop box turned by its /Rotate (0, 90, 180 or 270 degrees clockwise)."""
    left, bottom, right, top = geometry["box"]
    width, height = geometry["size"]
    rotation = int(geometry.get("rotation", 0)) % 360
    span_x, span_y = (right - left) or 1.0, (top - bottom) or 1.0
    rects = []
    for x0, y0, x1, y1 in boxes:
        corners = []
        for x, y in ((x0, y0), (x1, y1)):
            u, v = (x - left) / span_x, (top - y) / span_y  # 0..1 across and down the unturned page
            u, v = {0: (u, v), 90: (1 - v, u), 180: (1 - u, 1 - v), 270: (v, 1 - u)}.get(rotation, (u, v))
            corners.append((u * width, v * height))
        (a, b), (c, d) = corners
        rects.append(
            (int(min(a, c) - pad), int(min(b, d) - pad), int(max(a, c) + pad + 0.5), int(max(b, d) + pad + 0.5))
        )
    return rects
