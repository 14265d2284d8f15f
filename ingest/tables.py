"""Tables: find the lines of a table next to its caption, and rebuild its header and rows.

A table in a PDF is text placed in a grid, often with no ruling a parser could follow. Its caption
("Table 3: …") says where it is: the lines directly above or below the caption, in the caption's
column, that look like table rows (several cells separated by wide gaps, or short cells) and not
like prose. Columns are the x-ranges that most rows cover (a cell spanning several columns in one
row does not merge them); rows are the cells of one baseline. Header rows are those before the first
row with numbers (at most three, merged per column: "train" over "steps" -> "train steps"). A row
label set between the rows it names (the Transformer's "(A)" beside four rows) is given to each of
those rows, so every row reads on its own.

The text of a table block is: the caption line, the header cells joined with " | ", then one line
per row with its cells joined with " | ".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.lines import Line

MAX_HEADER_ROWS = 3
NUMBERISH = re.compile(r"^[\s(+\-−–~≈<>]*[$€£]?\d[\d.,]*\s*[%×xkKMBTG]?\w{0,3}[)*†‡]*$|^[-–—]$|^n/?a$", re.I)


@dataclass
class Table:
    label: str  # "Table 3"
    caption: str
    header: list[str]
    rows: list[list[str]]
    lines: list[Line]

    def text_lines(self) -> list[str]:
        """Caption, header, then rows: the table block's text, one line each."""
        out = [self.caption] if self.caption else []
        if self.header:
            out.append(" | ".join(self.header))
        out += [" | ".join(row) for row in self.rows]
        return out

    @property
    def text(self) -> str:
        return "\n".join(self.text_lines())


def _prose_like(line: Line, band_width: float, body_size: float) -> bool:
    """A line of running text: wide, one cell, many words, body-sized."""
    words = len(line.text.split())
    if len(line.cells) > 1 and line.width < 0.95 * band_width:
        return False
    wide = line.width >= 0.72 * band_width
    return (wide and words >= 7) or (words >= 4 and line.text.rstrip().endswith(".") and line.size >= 0.97 * body_size)


def table_like(line: Line, band_width: float, body_size: float) -> bool:
    if line.kind not in ("text", "equation") or line.region or not line.upright:
        return False
    return not _prose_like(line, band_width, body_size)


def collect_table_lines(
    caption: list[Line], candidates: list[Line], band: tuple[float, float], body_size: float
) -> list[Line]:
    """The table's lines: the run of table-like lines directly above or below the caption (whichever
    side has more multi-cell lines). `candidates` are the page's unclaimed lines."""
    x0, x1 = band
    width = x1 - x0
    inside = [ln for ln in candidates if _overlap(ln.x0, ln.x1, x0, x1) >= 0.6 * max(1.0, min(ln.width, width))]
    top = max(ln.top for ln in caption)
    bottom = min(ln.bottom for ln in caption)
    above = sorted((ln for ln in inside if ln.bottom >= top - 2), key=lambda ln: ln.y)
    below = sorted((ln for ln in inside if ln.top <= bottom + 2), key=lambda ln: -ln.y)
    sides = [_walk(above, caption[0].y, +1, width, body_size), _walk(below, caption[-1].y, -1, width, body_size)]
    sides = [s for s in sides if len(s) >= 1]
    if not sides:
        return []
    best = max(sides, key=lambda s: (sum(len(ln.cells) > 1 for ln in s), len(s)))
    if sum(len(ln.cells) > 1 for ln in best) == 0 and len(best) < 2:
        return []
    return best


def _walk(ordered: list[Line], start_y: float, direction: int, width: float, body_size: float) -> list[Line]:
    taken: list[Line] = []
    previous = start_y
    for line in ordered:
        distance = (line.y - previous) * direction
        limit = (5.0 if not taken else 3.2) * max(line.size, body_size * 0.8)
        if distance > limit or not table_like(line, width, body_size):
            break
        taken.append(line)
        previous = line.y
    return taken


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


# --- rebuilding the grid --------------------------------------------------------------------------


@dataclass
class _Cell:
    x0: float
    x1: float
    y: float
    size: float
    text: str


def _rows(lines: list[Line]) -> list[list[_Cell]]:
    """Cells grouped by baseline, top row first, each row left to right."""
    cells = [_Cell(c.x0, c.x1, ln.y, ln.size, c.text) for ln in lines for c in ln.cells if c.text.strip()]
    cells.sort(key=lambda c: -c.y)
    rows: list[list[_Cell]] = []
    for cell in cells:
        if rows and abs(rows[-1][0].y - cell.y) <= 0.45 * cell.size:
            rows[-1].append(cell)
        else:
            rows.append([cell])
    return [sorted(row, key=lambda c: c.x0) for row in rows]


def _columns(rows: list[list[_Cell]]) -> list[tuple[float, float]]:
    """X-ranges covered by enough rows; a gap most rows leave empty separates two columns."""
    events: list[tuple[float, int]] = []  # +1 where a row's covered stretch starts, -1 where it ends
    for row in rows:
        for x0, x1 in _merged(sorted((c.x0, c.x1) for c in row)):
            events += [(x0, 1), (x1, -1)]
    if not events:
        return []
    events.sort(key=lambda e: (e[0], -e[1]))  # at one x, starts before ends: touching cells leave no gap
    quiet = max(0, int(0.12 * len(rows)))
    columns: list[tuple[float, float]] = []
    covered, start = 0, None
    for x, step in events:
        before = covered
        covered += step
        if before <= quiet < covered and start is None:
            start = x
        elif covered <= quiet < before and start is not None:
            columns.append((start, x))
            start = None
    return columns


def _merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping (sorted) intervals of one row joined."""
    out: list[tuple[float, float]] = []
    for x0, x1 in spans:
        if out and x0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], x1))
        else:
            out.append((x0, x1))
    return out


def _column_of(cell: _Cell, columns: list[tuple[float, float]]) -> int:
    for i, (_, right) in enumerate(columns):
        if cell.x0 < right - 0.5:
            return i
    return len(columns) - 1


def _is_data_row(cells: list[str]) -> bool:
    filled = [c for c in cells if c]
    return bool(filled) and sum(bool(NUMBERISH.match(c)) for c in filled) >= max(1, len(filled) // 3)


def build_table(label: str, caption: str, lines: list[Line]) -> Table:
    rows = _rows(lines)
    columns = _columns(rows)
    grid: list[list[str]] = []
    ys: list[float] = []
    for row in rows:
        cells = [""] * len(columns)
        for cell in row:
            i = _column_of(cell, columns)
            cells[i] = f"{cells[i]} {cell.text}".strip()
        grid.append(cells)
        ys.append(row[0].y)
    keep = [i for i in range(len(columns)) if any(r[i] for r in grid)]
    grid = [[r[i] for i in keep] for r in grid]
    header_count = next((i for i, r in enumerate(grid) if _is_data_row(r)), 1)
    header_count = header_count if 0 < header_count <= MAX_HEADER_ROWS else min(1, len(grid))
    header = [" ".join(r[i] for r in grid[:header_count] if r[i]) for i in range(len(keep))]
    body, body_ys = grid[header_count:], ys[header_count:]
    return Table(label, caption, header, _spread_row_labels(body, body_ys), lines)


def _spread_row_labels(rows: list[list[str]], ys: list[float]) -> list[list[str]]:
    """A first-column label set once for a group of rows ("(A)" beside four rows, "GPT-3" beside
    three) is given to every row of its group, so each row reads on its own; rows holding only the
    label go. Groups are runs of rows separated by wider gaps (tables rule them off); a label-only
    row belongs to the group of the row nearest to it."""
    if not rows or len(rows[0]) < 2:
        return rows
    label_only = [i for i, r in enumerate(rows) if r[0] and not any(r[1:])]
    skip = set(label_only)
    others = [i for i in range(len(rows)) if i not in skip]
    group_of = _row_groups(others, ys)
    names: dict[int, set[str]] = {}
    for i in others:
        if rows[i][0]:
            names.setdefault(group_of[i], set()).add(rows[i][0])
    for j in label_only:
        nearest = min(others, key=lambda i: abs(ys[i] - ys[j]), default=None)
        if nearest is not None:
            names.setdefault(group_of[nearest], set()).add(rows[j][0])
    out = []
    for i in others:
        row = rows[i]
        group_names = names.get(group_of[i], set())
        if not row[0] and len(group_names) == 1:
            row = [next(iter(group_names)), *row[1:]]
        out.append(row)
    return out


def _row_groups(indices: list[int], ys: list[float]) -> dict[int, int]:
    """Group rows (top to bottom) wherever the gap to the next row is clearly wider than usual."""
    if not indices:
        return {}
    steps = [ys[a] - ys[b] for a, b in zip(indices, indices[1:], strict=False)]
    usual = sorted(steps)[len(steps) // 2] if steps else 0.0
    group, groups = 0, {indices[0]: 0}
    for row, step in zip(indices[1:], steps, strict=True):
        if usual and step > 1.12 * usual:
            group += 1
        groups[row] = group
    return groups


def table_band(
    caption: list[Line], columns: tuple[float, float, float] | None, text_box: tuple[float, float]
) -> tuple[float, float]:
    """Where to look for a table (or a figure's text): the caption's column, or the whole text width
    for a caption that crosses the gutter and on one-column pages. `columns` = (left, gutter, right)."""
    if columns is None:
        return (text_box[0] - 5, text_box[1] + 5)
    left, gutter, right = columns
    x0, x1 = min(ln.x0 for ln in caption), max(ln.x1 for ln in caption)
    if x1 <= gutter + 3:
        return (left - 5, gutter)
    if x0 >= gutter - 3:
        return (gutter, right + 5)
    return (left - 5, right + 5)


__all__ = ["Table", "build_table", "collect_table_lines", "table_band", "table_like"]
