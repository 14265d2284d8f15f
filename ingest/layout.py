"""Layout analysis of a PDF: the paper as a reader sees it, not as pypdf's flat text has it.

From the positioned runs of every page (`ingest.runs`) and their lines (`ingest.lines`) this module
decides what each line is, and builds Cove's parsed document from that:

- running text, in reading order (two columns: a column's end joins the next column's start), with
  headings turned into section metadata instead of being glued to the next sentence, display
  equations kept but marked as spans never to quote, page headers/footers and page numbers dropped;
- captions ("Figure 2: …", "Table 8: …") as their own blocks;
- tables rebuilt as caption + header + rows (`ingest.tables`);
- figure text (axis labels, legends, labels inside a drawing) as figure blocks: searchable, never
  quoted, never a title;
- the bibliography as reference blocks, one parsed entry per row (`ingest.references`);
- front matter (title, authors, affiliations, e-mails, arXiv stamps) as front blocks, with the
  title and authors read from page 1 (`ingest.front`);
- a parse report (pages, words, tables, figures, figure-text share, equations, references,
  warnings such as "no text layer: scanned?" or "odd reading order");
- the position of every word, so a quote can later be highlighted on its page (`quote_boxes`).

Heuristics are tuned on typical arXiv papers (LaTeX, one or two columns) and degrade to plain text
when they find nothing to act on.
"""

from __future__ import annotations

import bisect
import gzip
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cove.docs import Block, Page, PagePositions, ParsedDocument, Section, locate_quote
from ingest.clean import NAMED_HEADING
from ingest.front import (
    FRONT_LINE,
    STAMP,
    find_authors,
    find_title,
    join_title,
    looks_like_front,
    shouting,
    title_case,
    word_vocabulary,
)
from ingest.lines import Line, build_lines, is_mathy, recount_math, split_line
from ingest.references import parse_entry, split_entries
from ingest.runs import DocumentCache, PageRuns, page_runs
from ingest.tables import Table, build_table, collect_table_lines, table_band

CAPTION = re.compile(r"^(Figure|Fig\.|Table|Tab\.)\s*([A-Z]?\d{1,3}(?:\.\d{1,2})?|[IVX]{1,5})\s*[:.|]\s*", re.I)
NUMBERED_HEADING = re.compile(r"^((?:\d{1,2}|[A-H])(?:\.\d{1,2}){0,3})\.?\s+(\S.{0,100})$")
REFERENCES_HEADING = re.compile(r"^(?:\d{1,2}\.?\s+)?(references|bibliography|literature cited|works cited)$", re.I)
ABSTRACT_HEADING = re.compile(r"^abstract\b", re.I)
EQUATION_NUMBER = re.compile(r"\((\d{1,3}[a-z]?|[A-Z]\.\d{1,3})\)$")
# arXiv's side stamp: "arXiv:1706.03762v7 [cs.CL] 2 Aug 2023" (not a citation's "arXiv:1607.06450, 2016")
ARXIV_STAMP = re.compile(r"arXiv:\s*\d{4}\.\d{4,5}v\d+\s*\[[\w.\- ]+\]", re.I)
SENTENCE_END = re.compile(r"[.!?:][)\]\"”’']*$")
DIGITS = re.compile(r"\d+")
RUNNING_MARGIN = 0.085  # share of the page height at the top and bottom where running lines live

PROSE_KINDS = ("text", "equation", "debris")
MIN_FIGURE_WORDS = 4  # figure text with fewer words or numbers than this is not kept as a block


@dataclass
class _PageWork:
    """One page while it is being analysed."""

    number: int
    runs: PageRuns
    lines: list[Line]
    columns: tuple[float, float, float] | None = None  # (left, gutter, right) on two-column pages
    text_box: tuple[float, float] = (0.0, 612.0)  # left and right edge of the running text
    tables: list[Table] = field(default_factory=list)
    reordered: bool = False


@dataclass
class _Stats:
    body_size: float
    line_gap: float  # usual distance between the baselines of two body lines
    body_font: str = ""


ROMAN_MATH = re.compile(r"^CMR\d|^CMBX\d")  # TeX's upright math fonts, when the text is not in them


# --- the document ---------------------------------------------------------------------------------


def analyze_pdf(reader, tokenize: str = "scan") -> ParsedDocument:
    """The parsed document of an opened pypdf reader (pages, blocks, title, authors, report, positions).
    `tokenize="pypdf"` reads content streams with pypdf's own tokenizer (the reference for tests)."""
    cache = DocumentCache(tokenize)
    work: list[_PageWork] = []
    warnings: list[str] = []
    broken = []
    for number, page in enumerate(reader.pages, start=1):
        try:
            runs = page_runs(page, reader, cache)
        except Exception:  # one broken page must not lose the rest of the paper
            runs = PageRuns(612.0, 792.0, 0.0, 0.0)
            broken.append(number)
        work.append(_PageWork(number, runs, build_lines(runs.runs)))
    if broken:
        warnings.append(f"unreadable page(s): {broken[:10]}")
    stats = _stats(work)
    if not ROMAN_MATH.search(stats.body_font) and not stats.body_font.startswith(("SF", "LMRoman", "CMU")):
        for page in work:
            for line in page.lines:
                recount_math(line, ROMAN_MATH)
    _drop_running_lines(work)
    for page in work:
        _classify_page(page, stats)
    title_lines, authors = _front_matter(work, stats)
    for page in work:
        _reading_order(page, stats)
    references = _references(work)
    pages, positions = [], []
    for page in work:
        pages.append(_assemble(page, stats, references.get(page.number, [])))
        positions.append(_positions(page))
    texts = [p.text for p in pages]
    title = join_title(title_lines)
    if title and shouting(title):
        title = title_case(title, word_vocabulary(texts))
    report = _report(work, pages, references, warnings)
    return ParsedDocument(
        kind="pdf",
        pages=pages,
        title=title,
        warnings=report["warnings"],
        authors=authors,
        report=report,
        positions=positions,
    )


def _stats(work: list[_PageWork]) -> _Stats:
    sizes: Counter[float] = Counter()
    fonts: Counter[str] = Counter()
    for page in work:
        for line in page.lines:
            if line.upright and not line.region:
                sizes[round(line.size * 2) / 2] += len(line.text)
                fonts.update(line.fonts)
    body = sizes.most_common(1)[0][0] if sizes else 10.0
    gaps = []
    for page in work:
        body_lines = [ln for ln in page.lines if abs(ln.size - body) <= 0.6 and ln.upright and not ln.region]
        for a, b in zip(body_lines, body_lines[1:], strict=False):
            gap = a.y - b.y
            if 0.9 * body < gap < 2.0 * body and abs(a.x0 - b.x0) < 3 * body:
                gaps.append(gap)
    body_font = fonts.most_common(1)[0][0] if fonts else ""
    return _Stats(body, statistics.median(gaps) if gaps else 1.2 * body, body_font)


def _running_key(line: Line) -> str:
    return DIGITS.sub("#", " ".join(line.text.lower().split()))


def _drop_running_lines(work: list[_PageWork]) -> None:
    """Page headers, footers and page numbers: lines in the top or bottom margin that repeat on at
    least half of the pages (numbers ignored), and lone numbers there."""

    def margin_lines(page: _PageWork) -> list[Line]:
        height, bottom = page.runs.height, page.runs.y_origin
        return [
            ln
            for ln in page.lines
            if ln.upright
            and not ln.region
            and (ln.y - bottom > height * (1 - RUNNING_MARGIN) or ln.y - bottom < height * RUNNING_MARGIN)
        ]

    counts: Counter[str] = Counter()
    for page in work:
        counts.update({_running_key(ln) for ln in margin_lines(page)})
    threshold = max(3, int(0.5 * len(work) + 0.5))
    for page in work:
        for line in margin_lines(page):
            key = _running_key(line)
            lone_number = re.fullmatch(r"[#ivxlc]{1,6}|page #( of #)?|# of #|-\s*#\s*-", key) is not None
            if (len(work) >= 3 and counts[key] >= threshold and len(key) < 150) or lone_number:
                line.kind = "running"


# --- one page -------------------------------------------------------------------------------------


def _classify_page(page: _PageWork, stats: _Stats) -> None:
    lines = [ln for ln in page.lines if ln.kind != "running"]
    page.columns, page.text_box = _columns(lines, page.runs, stats)
    if page.columns is not None and _split_at_gutter(page, page.columns[1]):
        lines = [ln for ln in page.lines if ln.kind != "running"]
    _assign_columns(lines, page.columns)
    for line in lines:
        if line.region:
            line.kind = "figure"
        elif not line.upright:
            line.kind = "front" if ARXIV_STAMP.search(line.text) else "figure"
    _mark_flow(lines, page, stats)
    captions = _captions(lines)
    for label, caption_lines in captions:
        if label.startswith("Table"):
            _claim_table(page, label, caption_lines, lines, stats)
    _claim_uncaptioned_tables(page, lines, captions)
    for line in lines:
        if line.kind == "text" and _is_heading(line, stats):
            line.kind = "heading"
    _join_heading_lines(lines)
    for line in lines:
        if line.kind == "text" and _display_equation(line, page):
            line.kind = "equation"
    _join_equation_pieces(lines)
    for label, caption_lines in captions:
        if label.startswith("Figure"):
            _claim_figure_text(page, label, caption_lines, lines, stats)
    _claim_region_text(lines, page, stats)
    _claim_debris(lines, page, stats, captions)
    _claim_footnotes(lines, page, stats)


def _columns(
    lines: list[Line], runs: PageRuns, stats: _Stats
) -> tuple[tuple[float, float, float] | None, tuple[float, float]]:
    """((left, gutter, right) when the page is set in two columns, else None; (left, right) of the text)."""
    # Pieces of running text: lines, or the two cells of a line that holds one line of each column
    # (a content stream that goes left, right, left, ...).
    body = [
        piece
        for ln in lines
        if ln.upright and not ln.region and abs(ln.size - stats.body_size) <= 0.15 * stats.body_size
        for piece in (ln.cells if len(ln.cells) == 2 else [ln])
        if piece.x1 - piece.x0 > 0.2 * runs.width
    ]
    if len(body) < 4:
        return None, (runs.x_origin + 0.1 * runs.width, runs.x_origin + 0.9 * runs.width)
    x0s = sorted(piece.x0 for piece in body)
    x1s = sorted(piece.x1 for piece in body)
    left, right = x0s[len(x0s) // 20], x1s[-1 - len(x1s) // 20]
    middle = (left + right) / 2
    in_left = [piece for piece in body if piece.x1 < middle]
    in_right = [piece for piece in body if piece.x0 > middle]
    if (
        len(body) < 8
        or min(len(in_left), len(in_right)) < 0.2 * len(body)
        or len(in_left) + len(in_right) < 0.6 * len(body)
    ):
        return None, (left, right)
    left_edge = sorted(piece.x1 for piece in in_left)[-1 - len(in_left) // 20]
    right_edge = sorted(piece.x0 for piece in in_right)[len(in_right) // 20]
    return (left, (left_edge + right_edge) / 2, right), (left, right)


def _split_at_gutter(page: _PageWork, gutter: float) -> bool:
    """Cut lines that hold text of both columns (a cell ends left of the gutter, the next starts
    right of it) into one line per column. True when a line was cut."""
    out: list[Line] = []
    for line in page.lines:
        cut = next(
            (
                b.start
                for a, b in zip(line.cells, line.cells[1:], strict=False)
                if a.x1 < gutter + 2 and b.x0 > gutter - 2
            ),
            None,
        )
        out.extend(split_line(line, cut) if cut and line.kind == "text" and line.upright else [line])
    if len(out) == len(page.lines):
        return False
    for order, line in enumerate(out):
        line.order = order
    page.lines = out
    return True


def _assign_columns(lines: list[Line], columns: tuple[float, float, float] | None) -> None:
    for line in lines:
        if columns is None:
            line.column = "F"
        elif line.x1 <= columns[1] + 2:
            line.column = "L"
        elif line.x0 >= columns[1] - 2:
            line.column = "R"
        else:
            line.column = "F"


def _normal_label(kind: str, number: str) -> str:
    kind = kind.lower()
    return ("Table " if kind.startswith("tab") else "Figure ") + number


def _captions(lines: list[Line]) -> list[tuple[str, list[Line]]]:
    """Caption blocks in content order: the line that starts "Figure 2:" and the lines continuing it."""
    found: list[tuple[str, list[Line]]] = []
    current: list[Line] | None = None
    for line in lines:
        if line.kind != "text":
            current = None
            continue
        match = CAPTION.match(line.text)
        if match:
            label = _normal_label(match.group(1), match.group(2))
            line.kind, line.label = "caption", label
            current = [line]
            found.append((label, current))
        elif current is not None and _continues_caption(current, line):
            line.kind, line.label = "caption", current[0].label
            current.append(line)
        else:
            current = None
    return found


def _continues_caption(caption: list[Line], line: Line) -> bool:
    last = caption[-1]
    step = last.y - line.y
    return (
        0 < step <= 1.75 * line.size
        and abs(line.size - last.size) <= 0.6
        and len(line.cells) == 1
        and line.column == last.column
        and line.x0 >= min(ln.x0 for ln in caption) - 2 * line.size
    )


def _claim_table(page: _PageWork, label: str, caption: list[Line], lines: list[Line], stats: _Stats) -> None:
    band = table_band(caption, page.columns, page.text_box)
    free = [ln for ln in lines if ln.kind == "text"]
    rows = collect_table_lines(caption, free, band, stats.body_size)
    if not rows:
        return
    caption_text = join_lines(caption)
    table = build_table(label, caption_text, rows)
    if not table.rows:
        return
    for line in rows:
        line.kind, line.label = "table", label
    page.tables.append(table)


def _claim_uncaptioned_tables(page: _PageWork, lines: list[Line], captions) -> None:
    """Rows of cells with no caption next to them (the caption is elsewhere on the page, or there is
    none): three or more consecutive lines of three or more cells form a table too. It takes the
    label of a table caption on the page that found no table, if there is one."""
    found = {t.label for t in page.tables}
    spare = [label for label, _ in captions if label.startswith("Table") and label not in found]
    run: list[Line] = []
    for line in [*lines, None]:
        if line is not None and line.kind == "text" and len(line.cells) >= 2 and (not run or _next_row(run[-1], line)):
            run.append(line)
            continue
        if sum(len(ln.cells) >= 3 for ln in run) >= 3:
            label = spare.pop(0) if spare else ""
            caption = next((join_lines(group) for lab, group in captions if lab == label), "") if label else ""
            table = build_table(label, caption, run)
            if table.rows:
                for row_line in run:
                    row_line.kind, row_line.label = "table", label
                page.tables.append(table)
        run = [line] if line is not None and line.kind == "text" and len(line.cells) >= 2 else []


def _next_row(previous: Line, line: Line) -> bool:
    return 0 < previous.y - line.y < 3 * line.size and line.column == previous.column


def _claim_figure_text(page: _PageWork, label: str, caption: list[Line], lines: list[Line], stats: _Stats) -> None:
    """Text drawn in the page itself (not in an image or form) right above or below a figure's
    caption that is not prose: the figure's labels, legends and tick marks."""
    band = table_band(caption, page.columns, page.text_box)
    free = [ln for ln in lines if ln.kind in ("text", "equation") and _overlap(ln, band) > 0.5 * max(1.0, ln.width)]
    top, bottom = caption[0], caption[-1]
    above = sorted((ln for ln in free if ln.y > top.y), key=lambda ln: ln.y)
    below = sorted((ln for ln in free if ln.y < bottom.y), key=lambda ln: -ln.y)
    for ordered, start, direction in ((above, top.y, 1), (below, bottom.y, -1)):
        previous = start
        for line in ordered:
            limit = (6.0 if previous == start else 4.0) * max(line.size, stats.body_size)
            if (line.y - previous) * direction > limit or _prose(line, page, stats):
                break
            line.kind, line.label = "figure", label
            previous = line.y


def _claim_region_text(lines: list[Line], page: _PageWork, stats: _Stats) -> None:
    """Labels drawn by the page over or right beside a figure's image (sub-figure titles, overlays)."""
    if not page.runs.regions:
        return
    for line in lines:
        if line.kind != "text" or _prose(line, page, stats):
            continue
        margin = 1.5 * line.size
        for region in page.runs.regions:
            across = min(line.x1, region.x1 + margin) - max(line.x0, region.x0 - margin)
            if across > 0.5 * line.width and line.bottom < region.y1 + margin and line.top > region.y0 - margin:
                line.kind, line.region = "figure", region.id
                break


def _display_equation(line: Line, page: _PageWork) -> bool:
    """A formula set apart from the text: indented or centred in its column (or numbered at its
    right edge), mostly mathematics. Inline math inside a sentence is not marked."""
    numbered = EQUATION_NUMBER.search(line.text) is not None and line.math_share > 0.1
    if not (is_mathy(line) or numbered):
        return False
    left, right = _column_edges(line, page)
    em = line.size
    set_apart = line.x0 - left > 1.5 * em and (right - line.x1 > 1.5 * em or numbered) and line.width > 3 * em
    return set_apart or (numbered and right - line.x1 < 2 * em)


def _join_equation_pieces(lines: list[Line]) -> None:
    """The numerator, radical or limits of a display formula sit on lines of their own: a short
    mathematical line right next to an equation line belongs to that equation."""
    changed = True
    while changed:
        changed = False
        for i, line in enumerate(lines):
            if line.kind != "text" or not is_mathy(line) or line.width > 6 * line.size:
                continue
            neighbours = [lines[j] for j in (i - 1, i + 1) if 0 <= j < len(lines)]
            if any(n.kind == "equation" and abs(n.y - line.y) < 2 * line.size for n in neighbours):
                line.kind = "equation"
                changed = True


def _column_edges(line: Line, page: _PageWork) -> tuple[float, float]:
    if page.columns is None or line.column == "F":
        return page.text_box if page.columns is None else (page.columns[0], page.columns[2])
    left, gutter, right = page.columns
    return (left, gutter) if line.column == "L" else (gutter, right)


def _overlap(line: Line, band: tuple[float, float]) -> float:
    return max(0.0, min(line.x1, band[1]) - max(line.x0, band[0]))


def _prose(line: Line, page: _PageWork, stats: _Stats) -> bool:
    """A line of running text: most of its column wide with several words, a sentence's end, or
    the next line of a paragraph (right below a wide line, at the usual spacing)."""
    words = len(line.text.split())
    if line.kind == "equation":
        return False
    if "flow" in line.notes:
        return True
    left, right = _column_edges(line, page)
    if line.width >= 0.7 * (right - left) and words >= 4:
        return True
    return words >= 4 and bool(SENTENCE_END.search(line.text)) and line.size >= 0.95 * stats.body_size


def _mark_flow(lines: list[Line], page: _PageWork, stats: _Stats) -> None:
    """Note the lines that continue a paragraph: right below a wide body-size line of the same
    column (in content order), at about the usual line spacing, starting at about the same x."""
    for previous, line in zip(lines, lines[1:], strict=False):
        if previous.kind != "text" or line.kind != "text" or previous.column != line.column:
            continue
        left, right = _column_edges(previous, page)
        step = previous.y - line.y
        if (
            previous.width >= 0.85 * (right - left)
            and abs(previous.size - line.size) < 0.5
            and line.size >= 0.95 * stats.body_size
            and 0.8 * stats.line_gap <= step <= 1.3 * stats.line_gap
            and abs(line.x0 - previous.x0) < 2 * line.size
        ):
            line.notes.add("flow")


def _debris_like(line: Line, stats: _Stats, column_width: float) -> bool:
    """Figure debris among page text: number-only lines, or short small-font fragments."""
    text = line.text
    visible = text.replace(" ", "")
    if not visible:
        return False
    numeric = sum(c.isdigit() or c in ".,%-−+()×x" for c in visible) / len(visible)
    words = len(text.split())
    if numeric >= 0.7 and (words >= 2 or len(line.cells) > 1) and not SENTENCE_END.search(text):
        return True
    small = line.size < 0.9 * stats.body_size and line.math_share < 0.5  # (small inline math is text)
    return small and words <= 4 and line.width < 0.3 * column_width and not SENTENCE_END.search(text)


def _claim_debris(lines: list[Line], page: _PageWork, stats: _Stats, captions) -> None:
    """Clusters of debris-like lines are figure text; a lone one stays in the text, marked."""
    width = (page.columns[1] - page.columns[0]) if page.columns else page.text_box[1] - page.text_box[0]
    footer = page.runs.y_origin + page.runs.height * 0.12
    candidates = [ln for ln in lines if ln.kind == "text" and ln.y > footer and _debris_like(ln, stats, width)]
    suspects = sorted(candidates, key=lambda ln: ln.y)
    ys = [ln.y for ln in suspects]
    reach = 4 * stats.body_size
    for line in suspects:  # neighbours within `reach` above or below (sorted by y: a window, not all pairs)
        window = suspects[bisect.bisect_left(ys, line.y - reach) : bisect.bisect_right(ys, line.y + reach)]
        near = sum(1 for other in window if other is not line and abs(other.x0 - line.x0) < width)
        line.kind = "figure" if near >= 2 else "debris"
        if line.kind == "figure":
            line.label = _nearest_figure_label(line, captions)


def _claim_footnotes(lines: list[Line], page: _PageWork, stats: _Stats) -> None:
    """Footnotes: small lines in the lower part of the page, below the running text of their column.
    They are moved to the end of the page's text, so they no longer cut a sentence in two."""
    limit = page.runs.y_origin + page.runs.height * 0.45
    body = [ln for ln in lines if ln.kind in ("text", "equation", "heading") and ln.size >= 0.95 * stats.body_size]
    for line in lines:
        if line.kind not in ("text", "debris") or line.size > 0.93 * stats.body_size or line.y >= limit:
            continue
        above = [b.y for b in body if b.column in (line.column, "F") or line.column == "F"]
        if not above or line.y < min(above):
            line.kind = "footnote"


def _nearest_figure_label(line: Line, captions) -> str:
    figures = [(abs(lines[0].y - line.y), label) for label, lines in captions if label.startswith("Figure")]
    close = [f for f in figures if f[0] < 350]
    return min(close)[1] if close else ""


def _is_heading(line: Line, stats: _Stats) -> bool:
    text = line.text.strip()
    words = text.split()
    if not words or len(words) > 14 or line.math_share > 0.3:
        return False
    if NAMED_HEADING.match(text) or REFERENCES_HEADING.match(text):
        return True
    numbered = NUMBERED_HEADING.match(text)
    styled = line.bold or line.size >= 1.08 * stats.body_size or (shouting(text) and len(text) > 5)
    if not numbered or not styled:
        return False
    title = numbered.group(2)
    if SENTENCE_END.search(title) and not title.endswith(":") or sum(c.isdigit() for c in title) > len(title) / 3:
        return False
    number = numbered.group(1)
    return not number[0].isdigit() or int(number.split(".")[0]) <= 30


def _join_heading_lines(lines: list[Line]) -> None:
    """A heading set over two lines: the second (same style, right below, not numbered) joins it."""
    for a, b in zip(lines, lines[1:], strict=False):
        if (
            a.kind == "heading"
            and b.kind == "text"
            and b.bold == a.bold
            and abs(b.size - a.size) < 0.3
            and 0 < a.y - b.y <= 1.6 * a.size
            and len(b.text.split()) <= 8
            and not SENTENCE_END.search(b.text)
            and (a.bold or a.size > b.size * 0.99)
            and not NUMBERED_HEADING.match(b.text)
            and a.size > 0
            and b.x0 - a.x0 < 3 * a.size
            and len(a.text) > 25
        ):
            b.kind = "heading-cont"


# --- front matter and references ------------------------------------------------------------------


def _front_matter(work: list[_PageWork], stats: _Stats) -> tuple[list[Line], list[str]]:
    """Mark page 1's front matter; return the title lines and the authors."""
    first = next((p for p in work if any(ln.kind != "running" for ln in p.lines)), None)
    if first is None:
        return [], []
    lines = [ln for ln in first.lines if ln.kind not in ("running",)]
    title = find_title(
        [ln for ln in lines if ln.kind in ("text", "heading", "heading-cont")],
        first.runs.y_origin + first.runs.height,
        stats.body_size,
    )
    # The abstract (a heading, or IEEE's "Abstract—We ..." paragraph) or the first section ends the front matter.
    anchor = next(
        (
            ln
            for ln in lines
            if ln not in title
            and (
                (ln.kind == "heading" and NUMBERED_HEADING.match(ln.text))
                or (ln.kind in ("heading", "text") and ABSTRACT_HEADING.match(ln.text))
            )
        ),
        None,
    )
    front: list[Line] = list(title)
    if anchor is not None:
        front += [
            ln
            for ln in lines
            if ln.kind in ("text", "heading", "debris", "equation") and ln is not anchor and ln.bottom > anchor.top
        ]
    elif title:  # no anchor: the lines after the title that read like names, affiliations or addresses
        start = max(ln.order for ln in title)
        for line in (ln for ln in lines if ln.order > start):
            if line.kind in ("text", "debris") and (looks_like_front(line) or not _prose(line, first, stats)):
                front.append(line)
            elif line.kind != "figure":
                break
    for note in _paragraphs([ln for ln in lines if ln.kind == "footnote"]):
        if any(FRONT_LINE.search(ln.text) or STAMP.search(ln.text) for ln in note):
            front += note
    for line in front:
        line.kind = "front"
    for page in work:  # e-mail lines and stamps elsewhere are front matter too
        for line in page.lines:
            if line.kind == "text" and (ARXIV_STAMP.match(line.text) or re.fullmatch(r"\S+@\S+", line.text.strip())):
                line.kind = "front"
    return title, find_authors([ln for ln in front if ln not in title], title)


def _references(work: list[_PageWork]) -> dict[int, list]:
    """Mark the bibliography's lines and parse its entries; {page number: [Reference, ...]}."""
    in_refs = False
    section: list[tuple[int, Line]] = []
    for page in work:
        for line in page.lines:
            if line.kind == "heading":
                in_refs = bool(REFERENCES_HEADING.match(line.text.strip()))
            elif in_refs and line.kind in PROSE_KINDS:
                line.kind = "reference"
                section.append((page.number, line))
    _mark_indents(section)
    by_page: dict[int, list] = {}
    for page_number, entry_lines in split_entries(section):
        ref = parse_entry(join_lines(entry_lines), page_number)
        by_page.setdefault(page_number, []).append(ref)
    return by_page


def _mark_indents(section: list[tuple[int, Line]]) -> None:
    """Note reference lines indented from their column's left edge (hanging-indent continuations)."""
    lefts: dict[tuple[int, str], float] = {}
    for page, line in section:
        key = (page, line.column)
        lefts[key] = min(lefts.get(key, line.x0), line.x0)
    for page, line in section:
        if line.x0 > lefts[(page, line.column)] + 0.6 * line.size:
            line.notes.add("indented")


# --- reading order and assembly -------------------------------------------------------------------


FOOTNOTE_MARK = re.compile(r"^([∗*†‡§¶]|\d{1,2}(?=\D))")


def _paragraphs(lines: list[Line]) -> list[list[Line]]:
    """Footnote lines (in order) grouped per footnote: a new one starts at a footnote mark."""
    groups: list[list[Line]] = []
    for line in lines:
        if not groups or FOOTNOTE_MARK.match(line.text) or line.order != groups[-1][-1].order + 1:
            groups.append([line])
        else:
            groups[-1].append(line)
    return groups


def _reading_order(page: _PageWork, stats: _Stats) -> None:
    """Content order is the reading order of most PDFs. On a two-column page whose running text
    goes back and forth between the columns, order it by position instead (and say so)."""
    if page.columns is None:
        return
    prose = [ln for ln in page.lines if ln.kind in (*PROSE_KINDS, "heading", "heading-cont")]
    switches = sum(
        1 for a, b in zip(prose, prose[1:], strict=False) if a.column != b.column and "F" not in (a.column, b.column)
    )
    climbs = sum(
        1 for a, b in zip(prose, prose[1:], strict=False) if a.column == b.column and b.y - a.y > 3 * stats.body_size
    )
    if switches <= 2 and climbs <= 2:
        return
    rank = {"F": 0, "L": 1, "R": 2}
    # Bands between full-width lines; inside a band, the left column, then the right one.
    ordered = sorted(prose, key=lambda ln: -ln.y)
    band, bands = 0, {}
    for line in ordered:
        if line.column == "F":
            band += 1
        bands[id(line)] = band
    positions = sorted(prose, key=lambda ln: (bands[id(ln)], rank[ln.column] if ln.column != "F" else 0, -ln.y))
    if positions == prose:  # the columns alternate, but each in its place (boxes side by side)
        return
    page.reordered = True
    orders = sorted(ln.order for ln in prose)
    for line, order in zip(positions, orders, strict=True):
        line.order = order
    page.lines.sort(key=lambda ln: ln.order)


def join_lines(lines: list[Line]) -> str:
    """Lines of one unit (a caption, a reference entry) as one string, hyphenation undone."""
    text = ""
    for line in lines:
        text, _ = append_line(text, line.text, " ")
    return text


HYPHENATED = re.compile(r"[A-Za-z]{2}-$")


def append_line(text: str, addition: str, separator: str) -> tuple[str, int]:
    """`text` with a line appended, and where the line starts in it. A word broken by a hyphen at
    the end of the line before is mended ("exam-" + "ple" -> "example")."""
    if not text:
        return addition, 0
    if HYPHENATED.search(text) and addition[:1].islower():
        return text[:-1] + addition, len(text) - 1
    return text + separator + addition, len(text) + len(separator)


def _assemble(page: _PageWork, stats: _Stats, references: list) -> Page:
    """The page's running text (with sections and never-quote spans) and its blocks."""
    text = ""
    sections: list[Section] = []
    spans: list[tuple[int, int, str]] = []
    anchors: dict[int, int] = {}  # content order of a non-prose line -> offset in the text there
    previous: Line | None = None
    pending_heading: list[Line] = []
    for line in page.lines:
        if line.kind in ("heading", "heading-cont"):
            pending_heading.append(line)
            continue
        if line.kind not in PROSE_KINDS:
            anchors[line.order] = len(text)
            continue
        if pending_heading:
            title = " ".join(" ".join(h.text.split()) for h in pending_heading)
            text = text + "\n\n" if text else text
            sections.append(Section(len(text), title))
            pending_heading = []
            previous = None
            separator = ""
        else:
            separator = _separator(previous, line, stats, page) if previous is not None else "\n\n"
        text, start = append_line(text, line.text, separator)
        if line.kind in ("equation", "debris"):
            spans.append((start, len(text), "equation" if line.kind == "equation" else "figure"))
        previous = line
    if pending_heading:
        title = " ".join(" ".join(h.text.split()) for h in pending_heading)
        sections.append(Section(len(text), title))
    for note in _paragraphs([ln for ln in page.lines if ln.kind == "footnote"]):
        text, _ = append_line(text, join_lines(note), "\n\n")
    blocks = _blocks(page, anchors, references)
    return Page(number=page.number, text=text, sections=sections, spans=_merge_spans(spans), blocks=blocks)


def _separator(previous: Line, line: Line, stats: _Stats, page: _PageWork) -> str:
    ends_sentence = bool(SENTENCE_END.search(previous.text))
    if line.kind == "equation" or previous.kind == "equation":
        return "\n"
    if line.column != previous.column or line.y > previous.y:  # the next column (or page part)
        return "\n\n" if ends_sentence else "\n"
    gap = previous.y - line.y
    if gap > 1.45 * max(stats.line_gap, line.size):
        return "\n\n"
    column_left = (page.columns[0] if line.column in ("L", "F") else page.columns[1]) if page.columns else None
    indented = line.x0 > (column_left if column_left is not None else previous.x0) + 0.8 * line.size
    if ends_sentence and indented and line.x0 > previous.x0 + 0.8 * line.size:
        return "\n\n"
    return "\n"


def _merge_spans(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in spans:
        if merged and merged[-1][2] == kind and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], end, kind)
        else:
            merged.append((start, end, kind))
    return merged


def _blocks(page: _PageWork, anchors: dict[int, int], references: list) -> list[Block]:
    lines = page.lines

    def anchor(group: list[Line]) -> int:
        return anchors.get(min(ln.order for ln in group), 0)

    blocks: list[Block] = []
    captions: dict[str, list[Line]] = {}
    for line in lines:
        if line.kind == "caption":
            captions.setdefault(line.label, []).append(line)
    # One figure block per figure: its regions and loose labels together (unlabelled text of the
    # page in one more); a block with hardly any words ("(a) (b)") is not worth a chunk.
    region_labels = _region_labels(page, captions)
    figures: dict[str, list[Line]] = {}
    for line in lines:
        if line.kind == "figure":
            figures.setdefault(line.label or region_labels.get(line.region, ""), []).append(line)
    for label, group in captions.items():
        blocks.append(Block("caption", join_lines(group), label=label, offset=anchor(group)))
    for table in page.tables:
        blocks.append(
            Block(
                "table",
                table.text,
                label=table.label,
                offset=anchor(table.lines),
                caption=table.caption,
                header=table.header,
                rows=[" | ".join(r) for r in table.rows],
            )
        )
    for label, group in figures.items():
        text = "\n".join(ln.text for ln in sorted(group, key=lambda ln: (ln.region, -round(ln.y), ln.x0)))
        if len(re.findall(r"[A-Za-z]{2,}|\d+", text)) >= MIN_FIGURE_WORDS:
            blocks.append(Block("figure", text, label=label, offset=anchor(group)))
    front = [ln for ln in lines if ln.kind == "front"]
    if front:
        blocks.append(Block("front", "\n".join(ln.text for ln in front), offset=anchor(front)))
    if references:
        ref_lines = [ln for ln in lines if ln.kind == "reference"]
        blocks.append(
            Block(
                "reference",
                "\n".join(r.text for r in references),
                offset=anchor(ref_lines) if ref_lines else 0,
                rows=[r.text for r in references],
                entries=[r.fields() for r in references],
            )
        )
    blocks.sort(key=lambda b: b.offset)
    return blocks


def _region_labels(page: _PageWork, captions: dict[str, list[Line]]) -> dict[int, str]:
    """A figure region's label: the Figure caption right below it (or right above), horizontally overlapping."""
    labels = {}
    for region in page.runs.regions:
        best = None
        for label, group in captions.items():
            if not label.startswith("Figure"):
                continue
            first = group[0]
            overlaps = min(region.x1, first.x1) - max(region.x0, first.x0) > 0
            distance = region.y0 - first.top if first.top <= region.y0 + 5 else first.bottom - region.y1
            if overlaps and -5 <= distance < 120 and (best is None or distance < best[0]):
                best = (distance, label)
        if best:
            labels[region.id] = best[1]
    return labels


# --- positions ------------------------------------------------------------------------------------


def _positions(page: _PageWork) -> PagePositions:
    """Every line of the page (content order) and the box of each of its words."""
    runs = page.runs
    parts: list[str] = []
    boxes = []
    offset = 0
    for line in page.lines:
        for box in line.boxes:
            boxes.append(
                (
                    offset + box.start,
                    offset + box.end,
                    round(box.x0, 1),
                    round(box.y0, 1),
                    round(box.x1, 1),
                    round(box.y1, 1),
                )
            )
        parts.append(line.text)
        offset += len(line.text) + 1
    media = (runs.x_origin, runs.y_origin, runs.x_origin + runs.width, runs.y_origin + runs.height)
    return PagePositions(page.number, media, "\n".join(parts), boxes)


def save_positions(path: Path, positions: list[PagePositions]) -> None:
    """Write a document's word positions (gzip JSON), atomically: replaced when it is re-indexed."""
    data = {
        "version": 1,
        "pages": [{"number": p.number, "box": list(p.box), "text": p.text, "boxes": p.boxes} for p in positions],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
        json.dump(data, f, separators=(",", ":"))
    tmp.replace(path)


def load_positions(path: Path) -> dict[int, PagePositions]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return {
        p["number"]: PagePositions(p["number"], tuple(p["box"]), p["text"], [tuple(b) for b in p["boxes"]])
        for p in data.get("pages", [])
    }


def positions_path(settings, doc_id: str) -> Path:
    """Where ingest keeps a document's word positions under COVE_HOME."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", doc_id)
    return settings.home_dir / "layout" / f"{safe}.json.gz"


def page_box(settings, doc_id: str, page: int) -> tuple[float, float, float, float] | None:
    """The media box (x0, y0, x1, y1) of a page of an indexed PDF, in PDF user space; None if unknown."""
    path = positions_path(settings, doc_id)
    if not path.is_file():
        return None
    found = load_positions(path).get(page)
    return found.box if found else None


def find_quote_boxes(positions: PagePositions, quote: str) -> list[tuple[float, float, float, float]]:
    """Boxes of the words of `positions`' page that the quote covers (its first occurrence)."""
    where = locate_quote(positions.text, quote)
    if where is None:
        return []
    start, end = where
    return [(b[2], b[3], b[4], b[5]) for b in positions.boxes if b[0] < end and b[1] > start]


def quote_boxes(settings, doc_id: str, page: int, quote: str) -> list[tuple[float, float, float, float]]:
    """PDF user-space boxes (x0, y0, x1, y1) of the words a quote covers on a page of an indexed
    document: what a viewer highlights. Empty when the quote is not on that page (or no positions
    were stored, e.g. for HTML documents)."""
    path = positions_path(settings, doc_id)
    if not path.is_file():
        return []
    found = load_positions(path).get(page)
    return find_quote_boxes(found, quote) if found else []


# --- the parse report -----------------------------------------------------------------------------


def _report(work: list[_PageWork], pages: list[Page], references: dict[int, list], warnings: list[str]) -> dict:
    words = sum(len(p.text.split()) + sum(len(b.text.split()) for b in p.blocks) for p in pages)
    figure_chars = sum(len(b.text) for p in pages for b in p.blocks if b.kind == "figure")
    figure_chars += sum(e - s for p in pages for s, e, k in p.spans if k == "figure")
    all_chars = sum(len(p.text) + sum(len(b.text) for b in p.blocks) for p in pages) or 1
    figure_labels = {
        b.label for p in pages for b in p.blocks if b.kind in ("figure", "caption") and b.label.startswith("Figure")
    }
    unlabelled = sum(1 for p in pages for b in p.blocks if b.kind == "figure" and not b.label)
    warnings = list(warnings)
    scanned = [p.number for p in work if p.runs.images and not p.lines]
    blank = [p.number for p in work if not p.runs.images and not any(ln.kind != "running" for ln in p.lines)]
    if len(scanned) == len(work):
        warnings.append(f"no text layer: scanned? (all {len(work)} pages are images without text)")
    elif scanned:
        warnings.append(f"no text layer: scanned? (page(s) {scanned[:10]})")
    if len(blank) == len(work):
        warnings.append("no text layer: scanned? (no page has text)")
    elif blank:
        warnings.append(f"{len(blank)} page(s) without text: {blank[:10]}")
    reordered = [p.number for p in work if p.reordered]
    if reordered:
        warnings.append(f"odd reading order on page(s) {reordered[:10]}: text re-ordered by position")
    return {
        "pages": len(work),
        "words": words,
        "tables": sum(len(p.tables) for p in work),
        "figures": len(figure_labels) + unlabelled,
        "figure_text_share": round(figure_chars / all_chars, 4),
        "equations": sum(1 for p in pages for _, _, k in p.spans if k == "equation"),
        "references": sum(len(v) for v in references.values()),
        "warnings": warnings,
    }
