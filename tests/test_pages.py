"""The cited page with its quote highlighted (`app.pages`, the `/cove/page/<id>/<n>` route, the text
fragments of HTML and text citations), on real papers:

- quotes are located from the word positions recorded at ingest: a sentence, a table row quoted as
  "Table 3 (header): row" (its cells), a quote only partly on the page, none at all;
- the rendered page carries the highlight over exactly the quote's words (pixels compared with the
  page rendered without one), and a page that cannot be located still renders, without a highlight;
- bounds: a poster-sized page renders within the pixel cap, a render past its deadline is killed and
  reported, odd ids and page numbers are refused;
- the route, through the real `cove chat` server: foreign Host refused, failed document, text
  document, bad id and out-of-range page 404, the quote highlighted or reported not found.
"""

from __future__ import annotations

import io
import shutil

import httpx
import pytest
from conftest import make_text_pdf, write_pdf
from servers import CoveChat

from app.markdown import citation_link, text_fragment
from app.pages import (
    PageUnavailable,
    RenderFailed,
    highlighted_page,
    locate_boxes,
    merge_line_boxes,
    pixel_rects,
)
from cove.docs import table_row_of
from cove.settings import load_settings
from ingest.layout import load_positions, page_box, positions_path, quote_boxes

pytestmark = pytest.mark.slow

TRANSFORMER = "arxiv-1706.03762"
HEADS_SENTENCE = (
    "Multi-head attention allows the model to jointly attend to information from different representation "
    "subspaces at different positions."
)  # page 5
# Table 3's (A) rows as the answer engine quotes one: label, header, then the cells (page 9).
TABLE_ROW_QUOTE = (
    "Table 3 ( | N | dmodel | dff | h | dk | dv | Pdrop | ϵls | train steps | PPL (dev) | BLEU (dev) | params ×106): "
    "(A) |  |  |  | 16 | 32 | 32 |  |  |  | 4.91 | 25.8 | "
)


@pytest.fixture(scope="module")
def home(small_library, tmp_path_factory):
    """A copy of the small library (the page cache is written into it) plus a document that failed."""
    from ingest.pipeline import ingest
    from ingest.sources import from_path

    root = tmp_path_factory.mktemp("pages")
    home = root / "home"
    shutil.copytree(small_library.home_dir, home)
    broken = root / "broken.pdf"
    broken.write_bytes(make_text_pdf("x"))  # too little text: ingest fails
    report = ingest([from_path(broken)], load_settings({"home": str(home)}))
    assert len(report.failed) == 1, report.results
    return home


def settings_for(home, **app):
    return load_settings({"home": str(home), "app": app})


def other_documents(settings) -> tuple[str, str]:
    """The ids of the library's text note and of its failed document."""
    from cove.catalog import Catalog

    catalog = Catalog(settings.catalog_path)
    try:
        records = catalog.all()
    finally:
        catalog.close()
    text_doc = next(r.doc_id for r in records if r.source == "attention-notes.md")
    return text_doc, next(r.doc_id for r in records if r.status != "ok")


def positions(settings, page: int):
    return load_positions(positions_path(settings, TRANSFORMER))[page]


def to_pixels(settings, image, boxes):
    """Word boxes as pixel rectangles on a rendered page (its crop box is its media box here)."""
    size = image.size
    return pixel_rects({"box": page_box(settings, TRANSFORMER, 1), "size": size, "rotation": 0}, boxes, pad=0)


def is_highlight(pixel) -> bool:
    """Yellow: the translucent highlight over white paper (black text stays dark under it)."""
    red, green, blue = pixel[:3]
    return red > 200 and green > 150 and blue < 150


def mean_rgb(image, rect):
    region = image.crop(rect).convert("RGB")
    pixels = list(region.getdata())
    return tuple(sum(p[i] for p in pixels) / len(pixels) for i in range(3))


# --- locating a quote ---------------------------------------------------------------------------------------


def test_a_sentence_a_table_row_part_of_a_quote_and_none(home):
    settings = settings_for(home)
    how, boxes = locate_boxes(positions(settings, 5), HEADS_SENTENCE)
    assert how == "quote" and boxes == quote_boxes(settings, TRANSFORMER, 5, HEADS_SENTENCE)
    assert len(boxes) == len(HEADS_SENTENCE.split())  # one box per word

    how, boxes = locate_boxes(positions(settings, 9), TABLE_ROW_QUOTE)
    assert how == "row"
    assert quote_boxes(settings, TRANSFORMER, 9, TABLE_ROW_QUOTE) == []  # not verbatim on the page
    # The row's cells: 16 32 32 4.91 25.8 ("(A)" is printed once, on the group's first row).
    cells = quote_boxes(settings, TRANSFORMER, 9, "16 32 32 4.91 25.8")
    assert boxes == cells and len(cells) == 5

    mixed = HEADS_SENTENCE + " Zebras of the Serengeti compute attention with their stripes alone."
    how, boxes = locate_boxes(positions(settings, 5), mixed)
    assert how == "partial" and boxes == quote_boxes(settings, TRANSFORMER, 5, HEADS_SENTENCE)

    assert locate_boxes(positions(settings, 5), "Zebras compute attention with their stripes.") == ("none", [])
    assert locate_boxes(positions(settings, 9), HEADS_SENTENCE) == ("none", [])  # another page's sentence


def test_table_row_quotes_are_read_as_the_engine_writes_them():
    assert table_row_of(TABLE_ROW_QUOTE).startswith("(A) |")
    assert table_row_of("Table 2 (Model | BLEU (EN-DE)): Transformer (big) | 28.4") == "Transformer (big) | 28.4"
    assert table_row_of("Table: base | 6") == "base | 6"
    assert table_row_of("Table 3 (N | h: base | 6") is None  # header cut short: not a row quote
    assert table_row_of("Tables of results are in the appendix.") is None


def test_line_boxes_merge_and_map_onto_the_image_for_each_rotation():
    words = [(10, 700, 40, 712), (43, 700, 80, 712), (300, 700, 330, 712), (10, 680, 50, 692)]
    assert merge_line_boxes(words) == [(10, 700, 80, 712), (300, 700, 330, 712), (10, 680, 50, 692)]
    geometry = {"box": [0, 0, 600, 800], "size": [300, 400], "rotation": 0}
    assert pixel_rects(geometry, [(100, 700, 200, 800)], pad=0) == [(50, 0, 100, 50)]
    turned = {"box": [0, 0, 600, 800], "size": [400, 300], "rotation": 90}  # the image is landscape
    assert pixel_rects(turned, [(0, 700, 100, 800)], pad=0) == [(350, 0, 400, 50)]  # top-left goes top-right
    upside = {"box": [0, 0, 600, 800], "size": [300, 400], "rotation": 180}
    assert pixel_rects(upside, [(0, 700, 100, 800)], pad=0) == [(250, 350, 300, 400)]
    left = {"box": [0, 0, 600, 800], "size": [400, 300], "rotation": 270}
    assert pixel_rects(left, [(0, 700, 100, 800)], pad=0) == [(0, 250, 50, 300)]


# --- the rendered page ---------------------------------------------------------------------------------------


def test_the_highlight_covers_the_quote_and_nothing_else(home):
    from PIL import Image

    settings = settings_for(home)
    plain = highlighted_page(settings, TRANSFORMER, 5)
    marked = highlighted_page(settings, TRANSFORMER, 5, HEADS_SENTENCE)
    assert plain.highlight == "none" and marked.highlight == "quote" and marked.note == ""
    before, after = Image.open(io.BytesIO(plain.png)), Image.open(io.BytesIO(marked.png))
    assert before.size == after.size == (1224, 1584)  # 2 px per point, letter size
    for rect in to_pixels(settings, after, marked.boxes):
        r0, g0, b0 = mean_rgb(before, rect)
        r1, g1, b1 = mean_rgb(after, rect)
        assert b1 < b0 - 40 and r1 > 0.9 * r0, (rect, (r0, g0, b0), (r1, g1, b1))  # yellow over the words
    lower_half = (0, 900, 1224, 1584)  # the quote is in the upper part of page 5
    assert before.crop(lower_half).tobytes() == after.crop(lower_half).tobytes()


def test_an_unlocatable_quote_shows_the_page_without_a_highlight(home):
    settings = settings_for(home)
    view = highlighted_page(settings, TRANSFORMER, 5, "Zebras compute attention with their stripes.")
    assert view.highlight == "none" and view.boxes == [] and "could not be located" in view.note
    assert view.png == highlighted_page(settings, TRANSFORMER, 5).png


def test_odd_documents_and_pages_are_refused(home):
    settings = settings_for(home)
    for doc_id, page in ((TRANSFORMER, 0), (TRANSFORMER, 16), ("../../etc/passwd", 1), ("no-such-doc", 1)):
        with pytest.raises(PageUnavailable):
            highlighted_page(settings, doc_id, page, "x")
    text_doc, failed = other_documents(settings)
    with pytest.raises(PageUnavailable, match="not a PDF"):
        highlighted_page(settings, text_doc, 1)
    with pytest.raises(PageUnavailable, match="No copy"):
        highlighted_page(settings, failed, 1)


def test_a_render_past_its_deadline_is_stopped(home):
    # A page not rendered before (another scale): the child process cannot even start in 50 ms.
    settings = load_settings({"home": str(home), "app": {"page_render_timeout_s": 0.05, "page_render_scale": 1.25}})
    with pytest.raises(RenderFailed, match="longer than 0.05 s"):
        highlighted_page(settings, TRANSFORMER, 3)


def test_every_write_keeps_the_page_cache_within_its_limit(home, tmp_path):
    """Distinct quotes on one page each write a highlighted image: after every one the cache holds at
    most `app.page_cache_mb`, or only what that request wrote and read (the image, its page and the
    page's geometry) when those alone are larger, and never loses the image it just served."""
    private = tmp_path / "home"
    shutil.copytree(home, private, ignore=shutil.ignore_patterns("pages"))  # a cache of its own, empty
    settings = settings_for(private, page_cache_mb=1)
    root = private / "cache" / "pages"
    limit = 2**20
    words = positions(settings, 5).text.split()
    quotes = [" ".join(words[i : i + 6]) for i in range(0, 6 * 12, 6)]  # 12 distinct runs of six words
    served = set()
    for quote in quotes:
        view = highlighted_page(settings, TRANSFORMER, 5, quote)
        assert view.highlight == "quote", quote
        assert view.png not in served
        served.add(view.png)
        files = {p: p.stat().st_size for p in root.glob("*/*")}
        written = next(p for p in files if p.read_bytes() == view.png)  # the image just served is kept
        total = sum(files.values())
        base = [p for p in files if p.name.startswith("p5-") and "-h" not in p.name]
        assert total <= limit or set(files) == {written, *base}, (total, sorted(p.name for p in files))
    assert len(served) == len(quotes)
    assert sum(p.stat().st_size for p in root.glob("*/*")) <= limit


def test_a_poster_sized_page_renders_within_the_pixel_cap(tmp_path):
    """A 200 x 200 inch page (14400 pt square) at 2 px per point would be 829 million pixels."""
    from PIL import Image

    from ingest.pipeline import ingest
    from ingest.sources import from_path

    lines = [f"Line {i} of the poster tells how the river otter catches fish in the cold water." for i in range(40)]
    lines[20] = "The poster otter keeps exactly thirty seven pebbles in its favourite pocket."
    ops = " ".join(f"1 0 0 1 720 {13000 - 40 * i} Tm ({line}) Tj" for i, line in enumerate(lines))
    stream = f"BT /F1 24 Tf {ops} ET".encode()
    pdf = write_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 14400 14400] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )
    (tmp_path / "poster.pdf").write_bytes(pdf)
    settings = load_settings({"home": str(tmp_path / "home"), "app": {"page_render_max_pixels": 1_000_000}})
    source = from_path(tmp_path / "poster.pdf")
    report = ingest([source], settings)
    assert report.ingested, report.results

    view = highlighted_page(settings, source.doc_id, 1, lines[20])
    image = Image.open(io.BytesIO(view.png))
    assert image.size[0] * image.size[1] <= 1_000_000 and image.size[0] == image.size[1]
    assert view.highlight == "quote"
    # The highlight sits where the line is: 1000 px for 14400 pt, the line at y = 13000 - 800 = 12200.
    top_px = (14400 - 12200 - 24) * image.size[1] / 14400
    image.save(tmp_path / "poster.png")
    marked = [y for y in range(image.size[1]) if is_highlight(image.getpixel((52, y)))]
    assert marked and abs(min(marked) - top_px) < 6, (marked[:3], top_px)


# --- links that mark the passage in a web page or text copy ---------------------------------------------------


def test_html_and_text_citations_carry_a_text_fragment():
    article = {
        "url": "https://example.org/post.html#induction-heads",
        "quote": "An induction head attends to the token after a previous copy of the current token.",
        "doc_id": "web-post-1",
        "page": 1,
    }
    assert citation_link(article) == (
        "https://example.org/post.html#induction-heads"
        ":~:text=An%20induction%20head%20attends,of%20the%20current%20token."
    )
    note = {"url": "file:///home/u/notes.md", "quote": "Heron-like birds, waiting & watching.", "doc_id": "file-n-1"}
    assert citation_link(note) == "/cove/doc/file-n-1#:~:text=Heron%2Dlike%20birds%2C%20waiting%20%26%20watching."
    pdf = {"url": "https://arxiv.org/pdf/1706.03762#page=5", "quote": HEADS_SENTENCE, "doc_id": TRANSFORMER, "page": 5}
    assert citation_link(pdf) == f"/cove/doc/{TRANSFORMER}#page=5"  # PDFs: "Show on page" marks the quote
    # A table-row quote is searched by its row; parentheses are encoded too, so none can end a Markdown link.
    assert text_fragment("Table 2 (Model | BLEU): Transformer (big) | 28.4") == ":~:text=Transformer%20%28big%29%2028.4"
    assert text_fragment("  ") == ""


# --- the route, through the real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(home, tmp_path_factory):
    with CoveChat(home, log=tmp_path_factory.mktemp("chat") / "chat.log") as app:
        yield app


def test_page_route_guards_and_highlights(chat, home):
    from PIL import Image

    settings = settings_for(home)
    url = f"{chat.url}/cove/page/{TRANSFORMER}/5"
    marked = httpx.get(url, params={"q": HEADS_SENTENCE}, timeout=60)
    assert marked.status_code == 200 and marked.headers["content-type"] == "image/png"
    assert marked.headers["x-cove-highlight"] == "quote" and marked.headers["x-content-type-options"] == "nosniff"
    assert marked.content == highlighted_page(settings, TRANSFORMER, 5, HEADS_SENTENCE).png
    image = Image.open(io.BytesIO(marked.content))
    assert image.size == (1224, 1584)

    lost = httpx.get(url, params={"q": "Zebras compute attention with their stripes."}, timeout=60)
    assert lost.status_code == 200 and lost.headers["x-cove-highlight"] == "none"
    assert lost.content == httpx.get(url, timeout=60).content  # the page, without a highlight

    row = httpx.get(f"{chat.url}/cove/page/{TRANSFORMER}/9", params={"q": TABLE_ROW_QUOTE}, timeout=60)
    assert row.status_code == 200 and row.headers["x-cove-highlight"] == "row"

    assert httpx.get(url, headers={"Host": "attacker.example"}).status_code == 403
    text_doc, failed = other_documents(settings)
    for path in (
        f"/cove/page/{failed}/1",
        f"/cove/page/{text_doc}/1",
        f"/cove/page/{TRANSFORMER}/0",
        f"/cove/page/{TRANSFORMER}/16",
        f"/cove/page/{TRANSFORMER}/-1",
        f"/cove/page/{TRANSFORMER}/{'9' * 5000}",
        f"/cove/page/{TRANSFORMER}/five",
        "/cove/page/no-such-doc/1",
        "/cove/page/.hidden/1",
        "/cove/page/a%20b%3Cscript%3E/1",
    ):
        refused = httpx.get(chat.url + path, timeout=60)
        assert refused.status_code == 404 and refused.headers["content-type"].startswith("text/plain"), path
    # A path that climbs out is refused by Streamlit's path-security middleware before any route runs.
    assert httpx.get(f"{chat.url}/cove/page/..%2F..%2Fetc%2Fpasswd/1", timeout=60).status_code == 400
