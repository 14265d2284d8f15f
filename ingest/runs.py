"""Text runs with their positions: a small interpreter of a PDF page's content stream.

pypdf's ``extract_text`` gives a page's words in content-stream order, but not where each piece of
text sits: a table row comes out as "base 6 512 2048 8 64 …" with its cells run together, figure
labels look like prose, and the visitor it offers only reports the start of each line. Layout
analysis needs every piece of text with its box, size and font, so this module walks the content
stream itself (parsed by pypdf) and keeps the PDF text state: the transformation matrices, font and
size, character and word spacing, horizontal scaling and rise. Glyph widths and the mapping from
character codes to Unicode come from pypdf's own font objects, so the text is what pypdf decodes.

A `Run` is one string shown by one text operator (a TJ array gives one run per string, since the
numbers between them move the pen: that is where table cells and words separate). Text inside a
form XObject (an included figure: \\includegraphics of a PDF plot) or on top of an image carries the
id of that figure `Region`. Boxes are in PDF user space (points, origin bottom-left).

Speed (issue 23): the decoded streams are tokenised by `ingest.content_scan` (pypdf's tokenizer stays
available as `tokenize="pypdf"`, the reference the tests compare against); a form drawn many times is
decoded and tokenised once per document; each font remembers the width and text of the strings it
has shown (a paper shows the same words thousands of times).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from pypdf.generic import ContentStream, DictionaryObject, IndirectObject

from ingest import content_scan

IDENTITY = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
# A form XObject covering this share of the page is a page wrapper, not a figure.
WRAPPER_AREA_SHARE = 0.6
MAX_FORM_DEPTH = 12  # nested forms deeper than this are skipped (cycles, hostile files)
MAX_FORMS = 5000  # form XObjects drawn per page before the rest are skipped (pypdf stops there too)
MAX_REGIONS = 300  # figure regions kept per page
# Operators that set one number of the text state: (field of _State, factor). Tz is a percentage.
TEXT_STATE_OPERATORS = {
    b"Tc": ("char_spacing", 1.0),
    b"Tw": ("word_spacing", 1.0),
    b"Tz": ("scaling", 0.01),
    b"TL": ("leading", 1.0),
    b"Ts": ("rise", 1.0),
}
# The operators the interpreter acts on: the scanner reports no others.
READ_OPERATORS = frozenset(
    {b"TJ", b"Tj", b"Td", b"TD", b"Tm", b"T*", b"'", b'"', b"BT", b"Tf", b"cm", b"q", b"Q", b"Do"}
    | set(TEXT_STATE_OPERATORS)
)
TOKENIZERS = ("scan", "pypdf")


@dataclass(slots=True)
class Run:
    """One string of text on the page, with its box (x0, y0)-(x1, y1) and baseline y."""

    text: str
    x0: float
    x1: float
    y: float  # baseline
    size: float  # effective font size in points
    font: str  # base font name without the subset prefix ("CMMI10", "NimbusRomNo9L-Medi")
    region: int = 0  # 0: page content; otherwise the id of the figure region the text belongs to
    upright: bool = True  # False for rotated text (arXiv side stamps, rotated axis labels)
    angle: int = 0  # direction of the text in degrees, counter-clockwise, rounded to a right angle
    y_end: float = 0.0  # rotated text: the baseline's y where the run ends (it starts at `y`)

    @property
    def y0(self) -> float:
        return self.y - 0.22 * self.size

    @property
    def y1(self) -> float:
        return self.y + 0.78 * self.size


@dataclass(slots=True)
class Region:
    """Where a figure is drawn: an image, or a form XObject that is not a whole-page wrapper."""

    id: int
    x0: float
    y0: float
    x1: float
    y1: float
    kind: str  # "image" | "form"


@dataclass
class PageRuns:
    """Everything the interpreter found on one page."""

    width: float
    height: float
    x_origin: float
    y_origin: float
    runs: list[Run] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    images: int = 0  # images drawn (a page of images without text is a scan)


def mult(a: tuple | list, b: tuple | list) -> tuple[float, ...]:
    """Matrix product a x b of two PDF matrices [a b c d e f]."""
    return (
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
        a[4] * b[0] + a[5] * b[2] + b[4],
        a[4] * b[1] + a[5] * b[3] + b[5],
    )


def _numbers(operands: list[Any], count: int) -> list[float] | None:
    try:
        values = [float(v) for v in operands[:count]]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _transform_box(matrix: tuple, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    xs, ys = [], []
    for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)):
        xs.append(matrix[0] * x + matrix[2] * y + matrix[4])
        ys.append(matrix[1] * x + matrix[3] * y + matrix[5])
    return min(xs), min(ys), max(xs), max(ys)


@dataclass(slots=True)
class _Font:
    """A pypdf Font with what `_show` needs at hand, and the strings it has shown: raw bytes ->
    (text, characters, width in glyph units, spaces)."""

    font: Any
    name: str
    widths: dict
    default_width: float
    single_byte: bool  # a simple font (one byte per code): word spacing applies to its spaces
    shown: dict = field(default_factory=dict)


@dataclass(slots=True)
class _Form:
    """A form XObject, read once per document however often it is drawn."""

    matrix: tuple
    bbox: list[float] | None
    resources: DictionaryObject | None
    operations: list | None  # None: it draws no text, form or image, only its region counts


class DocumentCache:
    """Per-document memory of fonts and forms (pypdf rebuilds fonts per page; a logo or a plot symbol
    drawn on every page would be decoded and tokenised each time)."""

    def __init__(self, tokenize: str = "scan") -> None:
        if tokenize not in TOKENIZERS:
            raise ValueError(f"tokenize must be one of {TOKENIZERS}")
        self.tokenize = tokenize
        self.fonts: dict[Any, _Font | None] = {}
        self.forms: dict[Any, _Form] = {}

    def font(self, ref: Any) -> _Font | None:
        from pypdf.generic._font import Font

        key = _key(ref)
        if key not in self.fonts:
            try:
                font = Font.from_font_resource(ref.get_object())
                widths = font.character_widths
                self.fonts[key] = _Font(
                    font, _base_name(font), widths, widths.get("default", 500), isinstance(font.encoding, dict)
                )
            except Exception:  # a broken font loses its text, not the page
                self.fonts[key] = None
        return self.fonts[key]

    def operations(self, data: bytes, reader) -> list:
        """(operands, operator) of a decoded content stream, by the chosen tokenizer."""
        if self.tokenize == "pypdf":
            content = ContentStream(None, reader, "bytes")
            content.set_data(data)
            return content.operations
        return list(content_scan.operations(data, READ_OPERATORS))

    def form(self, ref: Any, xobject, reader) -> _Form:
        key = _key(ref)
        if key not in self.forms:
            self.forms[key] = self._read_form(xobject, reader)
        return self.forms[key]

    def _read_form(self, xobject, reader) -> _Form:
        """A form's placement and operations; an unreadable stream keeps its region, loses its text."""
        matrix = _numbers(list(xobject.get("/Matrix", IDENTITY)), 6) or list(IDENTITY)
        bbox = _numbers(list(xobject.get("/BBox", [])), 4)
        operations = None
        try:
            data = xobject.get_data()
            if b"Tj" in data or b"TJ" in data or b"Do" in data or b"'" in data:
                operations = self.operations(data, reader)
        except Exception:
            operations = None
        return _Form(tuple(matrix), bbox, _dict(xobject.get("/Resources")), operations)


def _key(ref: Any) -> Any:
    return (ref.idnum, ref.generation) if isinstance(ref, IndirectObject) else id(ref)


_SUBSET_PREFIX = re.compile(r"^[A-Z]{6}[^A-Za-z0-9]")  # "ABCDEF+CMMI10": a subset tag (the "+" is sometimes mangled)


def _base_name(font) -> str:
    name = getattr(font, "name", "") or ""
    return _SUBSET_PREFIX.sub("", name) if len(name) > 7 else name


@dataclass(slots=True)
class _State:
    """The parts of the graphics state that text extraction needs (saved by q, restored by Q)."""

    ctm: tuple = IDENTITY
    font: Any = None
    font_name: str = ""
    size: float = 0.0
    char_spacing: float = 0.0
    word_spacing: float = 0.0
    scaling: float = 1.0
    leading: float = 0.0
    rise: float = 0.0

    def copy(self) -> _State:
        return _State(
            self.ctm,
            self.font,
            self.font_name,
            self.size,
            self.char_spacing,
            self.word_spacing,
            self.scaling,
            self.leading,
            self.rise,
        )


class _Interpreter:
    """Walks one page's content stream (and the forms it draws), collecting runs and figure regions."""

    def __init__(self, reader, cache: DocumentCache, page_area: float) -> None:
        self.reader = reader
        self.cache = cache
        self.page_area = page_area
        self.runs: list[Run] = []
        self.regions: list[Region] = []
        self.images = 0
        self.forms_seen = 0

    # --- streams -----------------------------------------------------------------------------------
    def run_stream(self, operations: list, resources, ctm: tuple, region: int, depth: int) -> None:
        font_resources = _dict(resources.get("/Font")) if resources else None
        xobjects = _dict(resources.get("/XObject")) if resources else None
        state = _State(ctm=ctm)
        stack: list[_State] = []
        tm = lm = IDENTITY
        for operands, op in operations:
            if op == b"TJ":
                if operands and isinstance(operands[0], list):
                    tm = self._show_array(operands[0], state, tm, region)
            elif op == b"Tj":
                if operands:
                    tm = self._show(operands[0], state, tm, region)
            elif op == b"Td" or op == b"TD":
                move = _numbers(operands, 2)
                if move:
                    if op == b"TD":
                        state.leading = -move[1]
                    lm = mult((1, 0, 0, 1, move[0], move[1]), lm)
                    tm = lm
            elif op == b"Tm":
                matrix = _numbers(operands, 6)
                if matrix:
                    tm = lm = tuple(matrix)
            elif op == b"T*":
                lm = mult((1, 0, 0, 1, 0, -state.leading), lm)
                tm = lm
            elif op == b"'" or op == b'"':
                if op == b'"' and len(operands) >= 3:
                    spacing = _numbers(operands, 2)
                    if spacing:
                        state.word_spacing, state.char_spacing = spacing
                    operands = operands[2:]
                lm = mult((1, 0, 0, 1, 0, -state.leading), lm)
                tm = lm
                if operands:
                    tm = self._show(operands[0], state, tm, region)
            elif op == b"BT":
                tm = lm = IDENTITY
            elif op == b"Tf":
                if len(operands) >= 2:
                    ref = (
                        font_resources.raw_get(operands[0])
                        if font_resources and operands[0] in font_resources
                        else None
                    )
                    state.font = self.cache.font(ref) if ref is not None else None
                    state.font_name = state.font.name if state.font else ""
                    size = _numbers(operands[1:], 1)
                    state.size = size[0] if size else state.size
            elif op == b"cm":
                matrix = _numbers(operands, 6)
                if matrix:
                    state.ctm = mult(tuple(matrix), state.ctm)
            elif op == b"q":
                stack.append(state.copy())
            elif op == b"Q":
                if stack:
                    state = stack.pop()
            elif op in TEXT_STATE_OPERATORS:
                value = _numbers(operands, 1)
                if value:
                    name, scale = TEXT_STATE_OPERATORS[op]
                    setattr(state, name, value[0] * scale)
            elif op == b"Do":
                if operands and xobjects and operands[0] in xobjects:
                    self._draw_xobject(xobjects.raw_get(operands[0]), state.ctm, region, depth)
            elif op == b"INLINE IMAGE":
                self._add_image(state.ctm)

    def _draw_xobject(self, ref, ctm: tuple, region: int, depth: int) -> None:
        try:
            xobject = ref.get_object()
            subtype = xobject.get("/Subtype")
        except Exception:
            return
        if subtype == "/Image":
            self._add_image(ctm)
            return
        if subtype != "/Form" or depth >= MAX_FORM_DEPTH:
            return
        self.forms_seen += 1
        if self.forms_seen > MAX_FORMS:  # hostile or pathological documents: stop descending
            return
        try:
            form = self.cache.form(ref, xobject, self.reader)
        except Exception:  # a form whose dictionary cannot be read draws nothing
            return
        form_ctm = mult(form.matrix, ctm)
        inner_region = region
        if form.bbox and region == 0:
            x0, y0, x1, y1 = _transform_box(form_ctm, *form.bbox)
            area = (x1 - x0) * (y1 - y0)
            if 0 < area < WRAPPER_AREA_SHARE * self.page_area:
                inner_region = self._new_region(x0, y0, x1, y1, "form")
        if form.operations is not None:  # None: a drawing without text, its region is all we need
            self.run_stream(form.operations, form.resources, form_ctm, inner_region, depth + 1)

    def _add_image(self, ctm: tuple) -> None:
        self.images += 1
        x0, y0, x1, y1 = _transform_box(ctm, 0, 0, 1, 1)
        area = (x1 - x0) * (y1 - y0)
        if 4 < area < WRAPPER_AREA_SHARE * self.page_area:  # tiny images are bullets; huge ones scans
            self._new_region(x0, y0, x1, y1, "image")

    def _new_region(self, x0: float, y0: float, x1: float, y1: float, kind: str) -> int:
        if len(self.regions) >= MAX_REGIONS:  # tiles of one picture: the ones so far mark it well enough
            return 0
        region = Region(len(self.regions) + 1, x0, y0, x1, y1, kind)
        self.regions.append(region)
        return region.id

    # --- text --------------------------------------------------------------------------------------
    def _show_array(self, items: list, state: _State, tm: tuple, region: int) -> tuple:
        for item in items:
            if isinstance(item, (bytes, str)):
                tm = self._show(item, state, tm, region)
            else:
                try:
                    shift = -float(item) / 1000 * state.size * state.scaling
                except (TypeError, ValueError):
                    continue
                tm = (tm[0], tm[1], tm[2], tm[3], tm[4] + shift * tm[0], tm[5] + shift * tm[1])
        return tm

    def _show(self, string, state: _State, tm: tuple, region: int) -> tuple:
        font = state.font
        if font is None:
            return tm
        try:
            text, count, width, spaces = font.shown[string]
        except KeyError:
            text, count, width, spaces = font.shown.setdefault(string, _measure(string, font))
        except TypeError:  # an unhashable operand (a malformed stream): nothing shown
            return tm
        if not count:
            return tm
        advance = (
            width * 0.001 * state.size
            + state.char_spacing * count
            + (state.word_spacing * spaces if font.single_byte else 0.0)
        ) * state.scaling
        matrix = mult(tm, state.ctm)
        if text.strip():
            x, y = matrix[4] + state.rise * matrix[2], matrix[5] + state.rise * matrix[3]
            x_end = x + advance * matrix[0]
            y_end = y + advance * matrix[1]
            size = abs(state.size) * math.hypot(matrix[2], matrix[3])
            upright = abs(matrix[1]) < 1e-3 * max(1.0, abs(matrix[0])) and matrix[0] > 0
            if upright:
                self.runs.append(Run(text, x, x_end, y, size, state.font_name, region, True, 0, y))
            else:  # rotated: x0/x1 span the text across, y/y_end along its baseline
                angle = round(math.degrees(math.atan2(matrix[1], matrix[0])) / 90) * 90 % 360
                self.runs.append(
                    Run(
                        text,
                        min(x, x_end) - 0.8 * size,
                        max(x, x_end) + 0.2 * size,
                        y,
                        size,
                        state.font_name,
                        region,
                        False,
                        angle,
                        y_end,
                    )
                )
        return (tm[0], tm[1], tm[2], tm[3], tm[4] + advance * tm[0], tm[5] + advance * tm[1])


def _dict(value) -> DictionaryObject | None:
    try:
        value = value.get_object() if value is not None else None
    except Exception:
        return None
    return value if isinstance(value, DictionaryObject) else None


def _measure(string, font: _Font) -> tuple[str, int, float, int]:
    """(text, characters, width in glyph units, spaces) of a shown string, as pypdf decodes it."""
    text, raw = _decode(string, font.font)
    widths, default = font.widths, font.default_width
    return text, len(raw), sum(widths.get(char, default) for char in raw), raw.count(" ")


def _decode(string, font) -> tuple[str, str]:
    """(unicode text, raw characters keyed like the font's widths), as pypdf decodes a shown string."""
    if isinstance(string, str):  # pypdf already decoded it (a text string object)
        return string, string
    encoding = font.encoding
    if isinstance(encoding, str):
        try:
            raw = string.decode(encoding, "surrogatepass")
        except (UnicodeDecodeError, LookupError):
            raw = string.decode(encoding, "replace") if encoding else ""
        decoded = raw
    else:
        raw = "".join(map(chr, string))
        decoded = "".join(encoding.get(b, chr(b)) for b in string)
    cmap = font.character_map
    text = "".join(cmap.get(c, c) for c in decoded) if cmap else decoded
    return text, raw


def page_runs(page, reader, cache: DocumentCache) -> PageRuns:
    """The runs and figure regions of one pypdf page."""
    box = page.mediabox
    width, height = float(box.width), float(box.height)
    result = PageRuns(width=width, height=height, x_origin=float(box.left), y_origin=float(box.bottom))
    try:
        contents = page["/Contents"].get_object() if "/Contents" in page else None
        data = ContentStream(contents, reader, "bytes").get_data() if contents is not None else None
    except Exception:  # unreadable contents: no text on this page
        data = None
    if not data:
        return result
    interpreter = _Interpreter(reader, cache, max(1.0, width * height))
    interpreter.run_stream(cache.operations(data, reader), _dict(page.get("/Resources")), IDENTITY, 0, 0)
    result.runs = interpreter.runs
    result.regions = interpreter.regions
    result.images = interpreter.images
    return result
