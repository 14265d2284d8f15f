"""A fast tokenizer of PDF content streams: the (operands, operator) pairs pypdf's `ContentStream`
gives, read by one compiled regular expression instead of byte-by-byte Python.

Reading content streams was most of the layout parse (issue 23: about 55% of parse time went to
pypdf's `ContentStream.operations`). pypdf still opens the file, decodes the streams, reads fonts and
resources; only the tokenising of the decoded bytes is done here, and it yields what pypdf yields
for the operands the layout interpreter (`ingest.runs`) reads: numbers as int/float, names as `str`
("/F1"), strings as `bytes` (escapes resolved as pypdf resolves them), arrays as lists, and an inline
image as one ``b"INLINE IMAGE"`` operation. `tests/test_content_scan.py` checks the chunks of the
shared corpus are the same as with pypdf's tokenizer.

Hostile streams stay bounded: at most `MAX_TOKENS` tokens (pypdf's own budget), containers nested at
most `MAX_NESTING` deep; a stray byte is skipped rather than losing the page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

MAX_TOKENS = 2_000_000  # pypdf's stream_parsing_work_maximum_count
MAX_NESTING = 64
INLINE_IMAGE = b"INLINE IMAGE"

_WS = rb"\x00\t\n\x0c\r "
_DELIM = rb"()<>\[\]{}/%"
_TOKEN = re.compile(
    rb"(?P<ws>[" + _WS + rb"]+)"
    rb"|(?P<num>[+\-.0-9][+,\-.0-9]*)"  # pypdf reads a run of these characters as one number
    rb"|(?P<name>/[^" + _WS + rb"\x0b" + _DELIM + rb"]*)"
    rb"|(?P<str>\((?:[^()\\]|\\.)*\))"  # a literal string without unescaped inner parentheses
    rb"|(?P<lstr>\()"  # one with nested parentheses (rare): read by `_literal`
    rb"|(?P<dict><<)|(?P<enddict>>>)"
    rb"|(?P<hex><[^>]*>)"
    rb"|(?P<arr>\[)|(?P<endarr>\])"
    rb"|(?P<op>[A-Za-z'\"][^" + _WS + rb"\x0b" + _DELIM + rb"]*)"
    rb"|(?P<comment>%[^\r\n]*)"
    rb"|(?P<other>.)",
    re.S,
)
_SPACE = rb"(?:[" + _WS + rb"]++|%[^\r\n]*+)"
_SIMPLE_STRING = rb"\((?:[^()\\]++|\\.)*+\)"
_ITEM = (  # one operand without nested containers; an array or a dictionary of such items
    rb"(?>[+\-.0-9][+,\-.0-9]*+|/[^" + _WS + rb"\x0b" + _DELIM + rb"]*+|" + _SIMPLE_STRING + rb"|<[^<>]*+>"
    rb"|\[(?:[^\[\]()<>]++|" + _SIMPLE_STRING + rb"|<[^<>]*+>)*+\]"
    rb"|<<(?:[^<>()\[\]]++|" + _SIMPLE_STRING + rb"|<[^<>]*+>)*+>>)"
)
# The operands and operator of one operation in a single match (nested containers, strings with
# unescaped parentheses and inline images go the slow way). Possessive and atomic throughout: a
# stream that does not match fails in linear time, never by backtracking through its numbers.
_OPERATION = re.compile(
    rb"((?:" + _SPACE + rb"*+" + _ITEM + rb")*+)" + _SPACE + rb"*+([A-Za-z'\"][^" + _WS + rb"\x0b" + _DELIM + rb"]*+)",
    re.S,
)
_STRUCTURED = re.compile(rb"[()<>\[\]%\\\\\x00\x0b]")  # NUL and VT: bytes.split and pypdf disagree on them
# A TJ array holding only strings and numbers (anything else between them: the slow way).
_SHOWN = re.compile(rb"(\((?:[^()\\]|\\.)*\))|(<[^<>]*>)|([+\-.0-9][+,\-.0-9]*)", re.S)
_SHOWN_ARRAY = re.compile(
    rb"[" + _WS + rb"]*+\[(?:[" + _WS + rb"]++|" + _SIMPLE_STRING + rb"|<[^<>]*+>|[+\-.0-9][+,\-.0-9]*+)*+\]"
    rb"[" + _WS + rb"]*+",
    re.S,
)
_TRAILING = re.compile(_SPACE + rb"*+", re.S)
_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|([\r\n][\r\n]?)|(.)|$)", re.S)
_ESCAPES = {
    b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f",
    **{bytes([c]): bytes([c]) for c in b"()/\\ %<>[]#_&$"},
}  # fmt: skip
_NOT_HEX = re.compile(rb"[^0-9A-Fa-f]")
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_END_OF_IMAGE = re.compile(rb"(?<=[" + _WS + rb"])EI(?=[" + _WS + rb"]|$)")  # "EI" inside the data is not it
_KEYWORDS = {b"true": True, b"false": False, b"null": None}


class ContentLimitError(ValueError):
    """A content stream beyond the token budget: its page is read no further."""


def operations(data: bytes, wanted: frozenset[bytes] | None = None) -> Iterator[tuple[list[Any], bytes]]:
    """(operands, operator) for each operator of a decoded content stream, in order.

    With `wanted`, only those operators (and inline images) are reported, so the others, most of a
    page (paths, colours), cost one regular-expression match each; None reports every operator."""
    pos = 0
    end = len(data)
    tokens = 0
    while pos < end:
        if tokens > MAX_TOKENS:
            raise ContentLimitError(f"content stream has more than {MAX_TOKENS} tokens")
        match = _OPERATION.match(data, pos)
        if match is not None:
            operator = match.group(2)
            pos = match.end()
            tokens += 1
            if operator == b"BI":  # an inline image: its dictionary and data are skipped whole
                pos = _end_of_inline_image(data, pos)
                yield [], INLINE_IMAGE
                continue
            raw = match.group(1)
            if wanted is not None and operator not in wanted:
                tokens += raw.count(b" ")  # about one token per separator: enough for the budget
                continue
            operands, counted = _operands(raw)
            tokens += counted
        else:
            rest = _TRAILING.match(data, pos)
            if rest.end() == end:  # only whitespace and comments left
                return
            operands, operator, pos, counted = _slow_operation(data, pos)
            tokens += counted
            if operator is None:
                return
            if operator == b"BI":
                pos = _end_of_inline_image(data, pos)
                yield [], INLINE_IMAGE
                continue
            if wanted is not None and operator not in wanted:
                continue
        yield operands, operator


def _operands(raw: bytes) -> tuple[list[Any], int]:
    """The operands of one operation, from the bytes before its operator (no nesting beyond one
    array or dictionary: the operation pattern only matches such)."""
    if not _STRUCTURED.search(raw):  # numbers and names only (Td, Tm, cm, Tf): split on whitespace
        words = raw.split()
        return [_name(w) if w[:1] == b"/" else _number(w) for w in words], len(words)
    if _SHOWN_ARRAY.fullmatch(raw):
        items = _SHOWN.findall(raw)  # a TJ array of strings and numbers
        return [[_unescape(text[1:-1]) if text else _hex(hexed[1:-1]) if hexed else _number(number)
                 for text, hexed, number in items]], len(items)  # fmt: skip
    operands, _, _, counted = _slow_operation(raw, 0)
    return operands, counted


def _slow_operation(data: bytes, pos: int) -> tuple[list[Any], bytes | None, int, int]:
    """One operation token by token from `pos`: (operands, operator or None at the end, end, tokens)."""
    operands: list[Any] = []
    stack: list[list[Any]] = []  # open arrays and dictionaries (a dictionary is kept as a list)
    tokens = 0
    scan = _TOKEN.finditer(data, pos)
    while (match := next(scan, None)) is not None:
        kind = match.lastgroup
        if kind == "ws" or kind == "comment":
            continue
        tokens += 1
        if tokens > MAX_TOKENS:
            raise ContentLimitError(f"content stream has more than {MAX_TOKENS} tokens")
        target = stack[-1] if stack else operands
        if kind == "num":
            target.append(_number(match.group()))
        elif kind == "op":
            word = match.group()
            if not stack:
                return operands, word, match.end(), tokens
            target.append(_KEYWORDS.get(word, word.decode("latin-1")))  # a keyword value inside [ ] or << >>
        elif kind == "str":
            target.append(_unescape(match.group()[1:-1]))
        elif kind == "name":
            target.append(_name(match.group()))
        elif kind == "arr" or kind == "dict":
            if len(stack) >= MAX_NESTING:
                raise ContentLimitError("content stream nests arrays too deeply")
            inner: list[Any] = []
            target.append(inner)
            stack.append(inner)
        elif kind == "endarr" or kind == "enddict":
            if stack:
                stack.pop()
        elif kind == "hex":
            target.append(_hex(match.group()[1:-1]))
        elif kind == "lstr":
            value, after = _literal(data, match.end())
            target.append(value)
            scan = _TOKEN.finditer(data, after)
        # "other": a stray byte ("}", a lone ">"): skipped
    return operands, None, len(data), tokens


def _number(token: bytes) -> int | float:
    """As pypdf reads it: a float when it has a point, else an int; 0 when malformed."""
    try:
        return float(token) if b"." in token else int(token)
    except ValueError:
        return 0


def _name(token: bytes) -> str:
    """A name ("/F1") as pypdf's NameObject: #xx escapes resolved, UTF-8 if it decodes, else Latin-1."""
    if b"#" in token:
        token = _NAME_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), token)
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return token.decode("latin-1")


def _hex(body: bytes) -> bytes:
    """<48656C6C6F>: whitespace and stray characters ignored, an odd last digit padded with 0."""
    digits = _NOT_HEX.sub(b"", body)
    if len(digits) % 2:
        digits += b"0"
    return bytes.fromhex(digits.decode("ascii"))


def _escape(match: re.Match) -> bytes:
    octal, newline, char = match.group(1), match.group(2), match.group(3)
    if octal is not None:
        value = int(octal, 8)
        return bytes([value]) if value <= 255 else b"\\" + octal  # pypdf keeps an overflow as text
    if newline is not None:
        return b""  # an escaped line break continues the string
    if char is None:
        return b""  # a backslash that ends the stream
    return _ESCAPES.get(char, b"\\" + char)  # an unknown escape keeps its backslash


def _unescape(body: bytes) -> bytes:
    return _ESCAPE.sub(_escape, body) if b"\\" in body else body


def _literal(data: bytes, start: int) -> tuple[bytes, int]:
    """A literal string with nested parentheses, from just after its "(": (bytes, end offset)."""
    depth = 1
    pos = start
    limit = len(data)
    while pos < limit:
        byte = data[pos]
        if byte == 0x5C:  # backslash: the next byte is escaped
            pos += 2
            continue
        if byte == 0x28:
            depth += 1
        elif byte == 0x29:
            depth -= 1
            if depth == 0:
                return _unescape(data[start:pos]), pos + 1
        pos += 1
    return _unescape(data[start:]), limit  # unterminated: the rest of the stream


def _end_of_inline_image(data: bytes, start: int) -> int:
    """Where the content goes on after BI <dictionary> ID <data> EI: just after the EI that ends it."""
    image = data.find(b"ID", start)
    if image < 0:
        return len(data)
    end = _END_OF_IMAGE.search(data, image + 3)
    return end.end() if end else len(data)
