"""The chat app in a real browser: `cove chat` on a free 127.0.0.1 port over a small real library,
driven by Playwright in headless Debian Chromium. Asks, waits for the cited answer, opens the cited
page, saves a screenshot; then two sessions ask at once and both are answered.

Screenshots go to $COVE_ARTIFACTS (default: .artifacts/ in the repo)."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urljoin

import pytest
from conftest import ROOT
from servers import CoveChat

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("COVE_ARTIFACTS", ROOT / ".artifacts"))
ANSWER_TIMEOUT_MS = 300_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def app_url(small_library, tmp_path):
    """`cove chat` as a user starts it, on a copy of the small library; its URL."""
    home = tmp_path / "home"
    shutil.copytree(small_library.home_dir, home)
    with CoveChat(home, log=tmp_path / "chat.log") as app:
        yield app.url


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def ask(page, question: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.wait_for(timeout=60_000)
    box.fill(question)
    box.press("Enter")


def wait_for_answer(page) -> str:
    """The finished status label (the status turns 'complete' when the checked answer is shown)."""
    done = page.locator("summary", has_text=re.compile(r"\(\d+\.\d s")).first  # "Answered and checked (9.8 s)"
    done.wait_for(timeout=ANSWER_TIMEOUT_MS)
    return done.inner_text().strip().splitlines()[-1]  # after the icon name


def test_ask_see_citations_open_the_cited_page(app_url, browser):
    from pypdf import PdfReader

    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(app_url)
    ask(page, "How many attention heads does the base Transformer use?")
    label = wait_for_answer(page)
    assert label.startswith("Answered"), label

    # The answer carries numbered markers linking to the cited page; the sources panel lists them.
    marker = page.locator('[data-testid="stChatMessage"] a[href*="/cove/doc/"]').first
    marker.wait_for()
    href = marker.get_attribute("href")
    assert "#page=" in href
    sources = page.get_by_text("Sources (").first
    assert sources.is_visible()
    open_link = page.get_by_role("link", name="Open page").first
    quote = page.locator('[data-testid="stChatMessage"] blockquote').first.inner_text()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-answer.png"), full_page=True)

    # Opening a source: the link serves the indexed PDF, and the cited page holds the quoted passage.
    target = open_link.get_attribute("href")
    doc_url, page_number = target.split("#page=")
    response = page.request.get(app_url + doc_url)
    assert response.status == 200 and response.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(response.body()))
    page_text = " ".join(reader.pages[int(page_number) - 1].extract_text().split())
    words = [w.strip(".,;:()\u201c\u201d\"'\u2026") for w in quote.split()]
    words = [w for w in words if len(w) > 3]
    found = sum(1 for w in words if w in page_text)
    assert found >= 0.8 * len(words), (quote, page_number)
    with page.context.expect_page(timeout=30_000) as opened:
        open_link.click()
    assert opened.value.url.endswith(target.split("/")[-1])  # a new tab on the PDF at that page


def test_two_sessions_at_once_both_answered(app_url, browser):
    pages = []
    for question in (
        "How many attention heads does the base Transformer use?",
        "What rank r does LoRA use for its adaptation matrices?",
    ):
        context = browser.new_context(viewport={"width": 1200, "height": 900})  # separate sessions
        page = context.new_page()
        page.goto(app_url)
        page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
        pages.append((page, question))
    for page, question in pages:
        ask(page, question)
    labels = [wait_for_answer(page) for page, _ in pages]
    # Both questions are answered from the library (h = 8 heads; LoRA's rank r): a refusal is a failure.
    assert all(label.startswith("Answered") for label in labels), labels
    # The model answers one call at a time; a session that had to wait said so.
    assert any("after waiting for the model" in label for label in labels), labels
    pages[1][0].screenshot(path=str(ARTIFACTS / "chat-second-session.png"), full_page=True)



def test_show_on_page_highlights_the_quote(app_url, browser, tmp_path):
    """"Show on page" under a PDF citation shows the cited page with a highlight over the quote's words
    (the word positions ingest recorded) and nowhere else: the image the browser got is compared, pixel by
    pixel, with the same page served without a highlight by the page route."""
    from PIL import Image, ImageChops, ImageDraw

    from app.pages import locate_boxes, merge_line_boxes, pixel_rects
    from cove.settings import load_settings
    from ingest.layout import load_positions, page_box, positions_path
    from service.conversations import ConversationStore

    page = browser.new_page(viewport={"width": 1300, "height": 1400})
    page.goto(app_url)
    ask(page, "How many attention heads does the base Transformer use?")
    assert wait_for_answer(page).startswith("Answered")

    # The citation behind the first "Show on page" switch: the first PDF citation of the stored answer.
    settings = load_settings({"home": str(tmp_path / "home")})
    store = ConversationStore(settings.chats_path)
    try:
        (chat,) = store.list()
        answer = [m for m in store.messages(chat.id) if m.role == "assistant"][-1]
    finally:
        store.close()
    cited = next(c for c in answer.citations if "#page=" in c["url"])
    doc_id, number, quote = cited["doc_id"], int(cited["page"]), cited["quote"]

    page.get_by_text("Show on page").first.click()
    shown = page.locator('[data-testid="stImage"] img').first
    shown.wait_for(timeout=120_000)
    assert page.get_by_text(f"Page {number}: the quoted passage is highlighted").count() == 1
    shown.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-show-on-page.png"))

    marked = Image.open(io.BytesIO(page.request.get(urljoin(app_url, shown.get_attribute("src"))).body()))
    plain_response = page.request.get(f"{app_url}/cove/page/{doc_id}/{number}")
    assert plain_response.status == 200 and plain_response.headers["x-cove-highlight"] == "none"
    plain = Image.open(io.BytesIO(plain_response.body()))
    marked.save(ARTIFACTS / "chat-show-on-page-image.png")
    box = page_box(settings, doc_id, number)
    assert marked.size == plain.size == (round(2 * (box[2] - box[0])), round(2 * (box[3] - box[1])))

    # Where the quote's words are on the page, from the positions ingest recorded (a table-row quote,
    # which the engine does not quote verbatim, by its row's cells).
    how, words = locate_boxes(load_positions(positions_path(settings, doc_id))[number], quote)
    assert how in ("quote", "row") and words, (how, quote)
    geometry = {"box": box, "size": marked.size, "rotation": 0}
    marked, plain = marked.convert("RGB"), plain.convert("RGB")
    for rect in pixel_rects(geometry, words, pad=0):
        area = (rect[2] - rect[0]) * (rect[3] - rect[1])
        yellow = [p for p in marked.crop(rect).getdata() if p[0] > 200 and p[1] > 150 and p[2] < 170]
        assert len(yellow) >= 0.2 * area, (rect, quote)  # the paper around the letters turned yellow
        blue_before, blue_after = (sum(p[2] for p in im.crop(rect).getdata()) / area for im in (plain, marked))
        assert blue_after < blue_before - 40, (rect, blue_before, blue_after)
    # Nothing changed outside the quote's lines (a few pixels of margin for the frame).
    changed = ImageChops.difference(marked, plain).convert("L").point(lambda v: 255 if v > 8 else 0)
    outside = ImageDraw.Draw(changed)
    for rect in pixel_rects(geometry, merge_line_boxes(words), pad=4):
        outside.rectangle(rect, fill=0)
    assert changed.getbbox() is None, changed.getbbox()

# --- hostile documents stay inert ------------------------------------------------------------------------

HOSTILE = ROOT / "tests" / "fixtures" / "hostile"
PWNED_NAME = "web-<img src=x onerror=parent.__pwned=1>.pdf"
HOSTILE_ANCHOR = 'x)<iframe srcdoc="<img src=x onerror=parent.__pwned=1>"></iframe>'


@pytest.fixture
def hostile_app(tmp_path):
    """`cove chat` over a library of the issue's payloads: an article fetched over HTTP whose heading id
    breaks out of a link, a PDF named like an <img onerror> tag whose /Title holds Markdown links and
    HTML, and a Markdown note full of javascript: links. The article's chunks also get the raw hostile
    anchor planted in the store, as another instance of a shared store could write them."""
    import http.server
    import threading
    from functools import partial

    from cove.settings import load_settings
    from cove.store import ChunkStore
    from ingest.pipeline import ingest
    from ingest.sources import from_path, from_url

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(HOSTILE))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    settings = load_settings({"home": str(home), "fetch": {"allow_private_hosts": True}})
    article = from_url(f"http://127.0.0.1:{httpd.server_address[1]}/web-xss-anchor.html")
    try:
        files = [from_path(HOSTILE / PWNED_NAME), from_path(HOSTILE / "web-javascript-links.md")]
        report = ingest([article, *files], settings)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(report.ingested) == 3, report.results
    store = ChunkStore(settings)
    got = store.collection.get(where={"doc_id": article.doc_id}, include=["metadatas"])
    merges = [m for m in got["metadatas"] if m["section"].startswith("How the Zorblax")]
    assert merges and not any(m["anchor"] for m in merges), "ingest keeps no unsafe anchor"
    store.collection.update(ids=got["ids"], metadatas=[{**m, "anchor": HOSTILE_ANCHOR} for m in got["metadatas"]])
    with CoveChat(home, log=tmp_path / "chat.log") as app:
        yield app.url


def assert_inert(page) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("iframe[srcdoc]").count() == 0
    assert page.locator("img[onerror]").count() == 0
    assert page.locator('a[href^="javascript:"]').count() == 0


def test_hostile_names_titles_and_anchors_stay_text(hostile_app, browser):
    page = browser.new_page(viewport={"width": 1300, "height": 1400})
    page.goto(hostile_app)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
    assert_inert(page)

    ask(page, "How many warmup steps does the Quillfeather optimizer use?")
    assert wait_for_answer(page).startswith("Answered")
    page.wait_for_timeout(1000)  # let anything that would run, run
    assert_inert(page)
    chat = page.locator('[data-testid="stChatMessage"]')
    assert chat.get_by_text("onerror=parent.__pwned=1>.pdf").count() >= 1, "the file name is shown as text"
    assert chat.get_by_text("[Quillfeather](javascript:parent.__pwned=1)").count() >= 1, "so is the title"

    ask(page, "How many merges does the Zorblax tokenizer use?")
    second = chat.nth(3)  # the new answer, under the second question
    second.locator("summary", has_text=re.compile(r"\(\d+\.\d s")).wait_for(timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_timeout(1000)
    assert_inert(page)
    hrefs = chat.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert any("web-xss-anchor.html#x%29%3Ciframe" in h for h in hrefs), hrefs  # the anchor, percent-encoded
    page.screenshot(path=str(ARTIFACTS / "chat-hostile.png"), full_page=True)


FIRST_CONTENT_QUESTIONS = [
    "How many attention heads does the base Transformer use?",
    "What rank r does LoRA use on GPT-3?",
    "Which optimizer trained the Transformer?",
    "How are the LoRA matrices A and B initialized?",
    "What dropout rate did the base Transformer use?",
]


def test_first_checked_sentences_are_on_screen_before_the_answer(app_url, browser):
    """Issue 15: the best checked sentence with its source is on screen before the model has
    finished. Per question: from Enter to the "Checked so far" sentences being visible (with a
    citation marker), and to the finished answer. The p50s go to .artifacts/first-content.json
    (a measurement, not a timed assertion: the machines are noisy); the order is asserted."""
    import json
    import statistics
    import time

    rows = []
    for question in FIRST_CONTENT_QUESTIONS:
        page = browser.new_page(viewport={"width": 1300, "height": 1100})  # a new chat per question
        page.goto(app_url)
        page.get_by_test_id("stChatInputTextArea").wait_for(timeout=60_000)
        started = time.perf_counter()
        ask(page, question)
        early = page.locator('[data-testid="stChatMessage"]', has_text="Checked so far:").last
        early.wait_for(timeout=ANSWER_TIMEOUT_MS)
        first = time.perf_counter() - started
        assert early.locator('a[href*="/cove/doc/"]').count() >= 1  # the sentence comes with its source
        wait_for_answer(page)
        rows.append({"question": question, "first_checked_s": round(first, 3),
                     "answer_s": round(time.perf_counter() - started, 3)})  # fmt: skip
        assert rows[-1]["first_checked_s"] < rows[-1]["answer_s"]
        page.close()
    summary = {
        "first_checked_p50_s": statistics.median(r["first_checked_s"] for r in rows),
        "answer_p50_s": statistics.median(r["answer_s"] for r in rows),
        "questions": rows,
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "first-content.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
