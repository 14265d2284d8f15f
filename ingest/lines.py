"""Lines of text from positioned runs: which runs share a baseline, where the spaces and the wide
gaps between table cells are, and the cleaned text of each line with the box of every word.

A line is what a reader sees as one line: the runs of one baseline in content-stream order, with
subscripts and superscripts kept on it (they overlap the line vertically). Spaces are put where the
pen moved by more than a fraction of an em; a gap of about an em or more separates cells (a table
row, authors set side by side). Layout analysis (`ingest.layout`) works on these lines.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace

from ingest.clean import INVISIBLE, ODD_SPACES, SPACING_ACCENTS, fix_accents, fix_ligatures
from ingest.runs import Run

SPACE_GAP_EM = 0.15  # a gap wider than this (in ems of the smaller font) is a space
CELL_GAP_EM = 0.9  # a gap wider than this separates cells
# Fonts of mathematics (TeX's math italic, symbols and extensions, AMS, Cambria/STIX math ...).
MATH_FONT = re.compile(
    r"^(CMMI|CMSY|CMEX|CMBSY|CMMIB|MSBM|MSAM|EUFM|EUSM|EURM|RSFS|txsy|txex|txmi|Symbol|rtxmi)|Math", re.I
)
BOLD_FONT = re.compile(r"Bold|Medi|Semibold|Demi|Black|Heavy|CMBX|SFBX|-Bd\b", re.I)
MATH_SYMBOL = re.compile("[=≤≥≈∼∝∑∏∫√∈∉⊂⊆∀∃∇∂±×·⊙⊕→←↦∞‖|^_]")


@dataclass(slots=True)
class Cell:
    """Text separated from its neighbours on the line by a wide gap."""

    x0: float
    x1: float
    text: str
    start: int = 0  # where the cell starts in its line's text


@dataclass(slots=True)
class Box:
    """A word's characters [start, end) in its line's text, and where it is drawn."""

    start: int
    end: int
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(slots=True)
class Line:
    """One visual line: its cleaned text, geometry, style, and (after analysis) what it is."""

    text: str
    x0: float
    x1: float
    y: float  # baseline of the line's main font
    size: float  # the main font's size
    font: str  # the font most characters use
    math_share: float  # share of characters set in math fonts
    region: int  # figure region id (0: page content)
    upright: bool
    cells: list[Cell]
    boxes: list[Box]
    order: int  # position in content-stream order
    fonts: dict[str, int]  # characters per font
    scripts: list[tuple[int, int]]  # [start, end) of the text in sub- and superscripts (markers, indices)
    kind: str = "text"  # set by layout analysis: text, heading, caption, table, figure, equation, ...
    label: str = ""  # "Figure 2" / "Table 3" for captions (and the lines they claim)
    column: str = "F"  # "L", "R" (two-column pages) or "F" (full width / one column)
    notes: set[str] = field(default_factory=set)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def bold(self) -> bool:
        return bool(BOLD_FONT.search(self.font))

    @property
    def top(self) -> float:
        return self.y + 0.78 * self.size

    @property
    def bottom(self) -> float:
        return self.y - 0.22 * self.size


def clean_run_text(text: str) -> str:
    """A run's text without ligature glyphs, invisible characters or odd spaces."""
    text = ODD_SPACES.sub(" ", INVISIBLE.sub("", fix_ligatures(text)))
    if "\u00a8" in text or "\u00b4" in text or "\u02c6" in text or "\u02dc" in text:
        text = fix_accents(text)
    return unicodedata.normalize("NFC", text) if not text.isascii() else text


def _extent(run: Run) -> tuple[float, float]:
    return run.y - 0.22 * run.size, run.y + 0.78 * run.size


def _same_line(line: list[Run], main: Run, run: Run) -> bool:
    last = line[-1]
    if run.region != last.region or run.upright != last.upright:
        return False
    if not run.upright:  # rotated text: the same column of text (across), close along it
        if run.angle != last.angle:
            return False
        if run.angle in (90, 270):
            return abs(run.x0 - last.x0) < 0.5 * run.size and abs(run.y - last.y_end) < 3 * run.size
        return abs(run.y - last.y) < 0.5 * run.size
    script = run.size < 0.85 * main.size  # a sub- or superscript may sit under the glyph before it
    if run.x0 < last.x1 - (2.0 if script else 0.6) * max(run.size, last.size):  # went back: a new line
        return False
    low, high = _extent(main)
    run_low, run_high = _extent(run)
    overlap = min(high, run_high) - max(low, run_low)
    return overlap >= 0.5 * min(high - low, run_high - run_low)


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs in content order -> runs per visual line (still in content order)."""
    groups: list[list[Run]] = []
    mains: list[Run] = []
    for run in runs:
        if groups and _same_line(groups[-1], mains[-1], run):
            groups[-1].append(run)
            if run.size > mains[-1].size * 1.05:
                mains[-1] = run
        else:
            groups.append([run])
            mains.append(run)
    return groups


ACCENTS = {**SPACING_ACCENTS, "\u02da": "\u030a"}  # TeX's ring too ("˚a" -> "å")


def _place_accents(runs: list[Run]) -> list[Run]:
    """TeX draws an accent as a glyph of its own over the letter ("R¨uckl´e"): put it on the letter it
    sits over, as a combining mark ("Rücklé")."""
    accents = [r for r in runs if len(r.text) == 1 and r.text in ACCENTS]
    if not accents:
        return runs
    kept = [r for r in runs if r not in accents]
    for accent in accents:
        centre = (accent.x0 + accent.x1) / 2
        base = next((r for r in kept if r.x0 <= centre <= r.x1 and r.text.strip()), None)
        if base is None:
            kept.append(accent)
            continue
        at = min(len(base.text) - 1, max(0, int((centre - base.x0) / max(1e-6, base.x1 - base.x0) * len(base.text))))
        if not base.text[at].isalpha():
            at = next((i for i in range(at, -1, -1) if base.text[i].isalpha()), at)
        base.text = base.text[: at + 1] + ACCENTS[accent.text] + base.text[at + 1 :]
    return sorted(kept, key=lambda r: r.x0)


def make_line(runs: list[Run], order: int) -> Line | None:
    """The Line of one group of runs, or None when it holds no visible text."""
    if runs[0].upright:
        runs = _place_accents(sorted(runs, key=lambda r: r.x0))
    else:
        runs = sorted(runs, key=lambda r: _along(r, r.y))
    main = max(runs, key=lambda r: r.size)  # the first of the largest (max keeps the first)
    parts: list[str] = []
    boxes: list[Box] = []
    cells: list[Cell] = []
    cell_start, cell_x0 = 0, runs[0].x0
    length = 0
    prev: Run | None = None
    fonts: Counter[str] = Counter()
    scripts: list[tuple[int, int]] = []
    math_chars = 0
    for run in runs:
        text = clean_run_text(run.text)
        if not text.strip():
            continue
        if prev is not None:
            gap = run.x0 - prev.x1 if run.upright else _along(run, run.y) - _along(prev, prev.y_end)
            em = min(run.size, prev.size)
            if run.upright and gap > CELL_GAP_EM * em:
                cells.append(Cell(cell_x0, prev.x1, "".join(parts)[cell_start:].strip(), cell_start))
                parts.append(" ")
                length += 1
                cell_start, cell_x0 = length, run.x0
            elif gap > SPACE_GAP_EM * em and not _thousands("".join(parts[-2:]), text, gap, em):
                if not (parts and parts[-1].endswith(" ")) and not text.startswith(" "):
                    parts.append(" ")
                    length += 1
        start = length
        parts.append(text)
        length += len(text)
        if run.size < 0.8 * main.size and abs(run.y - main.y) > 0.12 * main.size:
            scripts.append((start, length))
        if run.upright:
            boxes.append(Box(start, length, run.x0, run.y - 0.22 * run.size, run.x1, run.y + 0.78 * run.size))
        else:
            boxes.append(Box(start, length, run.x0, min(run.y, run.y_end), run.x1, max(run.y, run.y_end)))
        chars = len(text.replace(" ", ""))
        fonts[run.font] += chars
        if MATH_FONT.search(run.font):
            math_chars += chars
        prev = run
    if prev is None:
        return None
    raw = "".join(parts)
    cells.append(Cell(cell_x0, prev.x1, raw[cell_start:].strip(), cell_start))
    text = raw.rstrip()
    lead = len(text) - len(text.lstrip())
    if lead:
        text = text[lead:]
        boxes = [Box(max(0, b.start - lead), max(0, b.end - lead), b.x0, b.y0, b.x1, b.y1) for b in boxes]
        scripts = [(max(0, a - lead), max(0, b - lead)) for a, b in scripts]
        cells = [Cell(c.x0, c.x1, c.text, max(0, c.start - lead)) for c in cells]
    total = sum(fonts.values()) or 1
    return Line(
        text=text,
        x0=min(r.x0 for r in runs),
        x1=max(r.x1 for r in runs),
        y=main.y,
        size=round(main.size, 2),
        font=fonts.most_common(1)[0][0] if fonts else main.font,
        math_share=math_chars / total,
        region=main.region,
        upright=main.upright,
        cells=[c for c in cells if c.text],
        boxes=_merge_word_boxes(boxes, text),
        order=order,
        fonts=dict(fonts),
        scripts=scripts,
    )


def _along(run: Run, y: float) -> float:
    """Position along rotated text: up the page for text turned left (90°), down for 270°."""
    if run.angle == 90:
        return y
    if run.angle == 270:
        return -y
    return -run.x0 if run.angle == 180 else run.x0


def _thousands(before: str, after: str, gap: float, em: float) -> bool:
    """ "2," + "000" set in math mode, with the thin space TeX puts after a comma: one number."""
    three_digits = after[:3].isdigit() and not after[3:4].isdigit()
    return before[-2:-1].isdigit() and before.endswith(",") and three_digits and gap < 0.3 * em


def _merge_word_boxes(boxes: list[Box], text: str) -> list[Box]:
    """Runs of one word (split by kerning or a font change) become one box; words stay apart."""
    merged: list[Box] = []
    for box in boxes:
        if merged and box.start == merged[-1].end and box.start < len(text) and text[box.start - 1 : box.start] != " ":
            last = merged[-1]
            merged[-1] = Box(
                last.start,
                box.end,
                min(last.x0, box.x0),
                min(last.y0, box.y0),
                max(last.x1, box.x1),
                max(last.y1, box.y1),
            )
        else:
            merged.append(box)
    return merged


def build_lines(runs: list[Run]) -> list[Line]:
    """The page's lines in content order."""
    lines = []
    for group in group_runs(runs):
        line = make_line(group, len(lines))
        if line is not None:
            lines.append(line)
    return lines


def split_line(line: Line, at: int) -> list[Line]:
    """A line cut in two at character `at` (where a cell starts): each part keeps its own words,
    cells and scripts."""
    left_boxes = [b for b in line.boxes if b.end <= at]
    right_boxes = [Box(b.start - at, b.end - at, b.x0, b.y0, b.x1, b.y1) for b in line.boxes if b.start >= at]
    if not left_boxes or not right_boxes:
        return [line]
    left = replace(
        line,
        text=line.text[:at].rstrip(),
        x1=max(b.x1 for b in left_boxes),
        cells=[c for c in line.cells if c.start < at],
        boxes=left_boxes,
        scripts=[(s, e) for s, e in line.scripts if e <= at],
        notes=set(line.notes),
    )
    right = replace(
        line,
        text=line.text[at:],
        x0=min(b.x0 for b in right_boxes),
        cells=[Cell(c.x0, c.x1, c.text, c.start - at) for c in line.cells if c.start >= at],
        boxes=right_boxes,
        scripts=[(s - at, e - at) for s, e in line.scripts if s >= at],
        notes=set(line.notes),
    )
    return [left, right]


def without_scripts(line: Line, mark: str = ",") -> str:
    """The line's text with its sub- and superscripts replaced by `mark`, and `mark` between cells:
    names set side by side, or followed by affiliation markers ("Tri Dao†, Daniel Y. Fu†"), apart."""
    cuts = sorted([(s, e) for s, e in line.scripts] + [(c.start, c.start) for c in line.cells if c.start > 0])
    text = line.text
    for start, end in reversed(cuts):
        text = text[:start] + mark + text[end:]
    return text


def recount_math(line: Line, also_math: re.Pattern) -> None:
    """Count the fonts matching `also_math` as mathematics too (TeX's roman CMR is math in a paper
    whose text is set in Times, but text in one set in Computer Modern)."""
    total = sum(line.fonts.values()) or 1
    math = sum(n for font, n in line.fonts.items() if MATH_FONT.search(font) or also_math.search(font))
    line.math_share = math / total


def is_mathy(line: Line) -> bool:
    """Mostly set in math fonts, or a formula with symbols and few words."""
    if line.math_share >= 0.5:
        return True
    words = re.findall(r"[A-Za-z]{3,}", line.text)
    return line.math_share >= 0.25 and bool(MATH_SYMBOL.search(line.text)) and len(words) <= 4
