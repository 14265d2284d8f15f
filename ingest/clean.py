"""Clean what pypdf leaves behind, and find section headings.

pypdf gives one string per page with: ligature glyphs (``ﬁ`` for "fi"), words hyphenated across line
breaks ("exam-\\nple"), runs of spaces and odd Unicode spaces, and the running headers/footers that
repeat on every page (journal names, page numbers). Each is fixed by a small function here so the
cleaning is testable step by step.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from cove.docs import Section

LIGATURES = {
    "\ufb00": "ff",
    "\ufb01": "fi",
    "\ufb02": "fl",
    "\ufb03": "ffi",
    "\ufb04": "ffl",
    "\ufb05": "st",
    "\ufb06": "st",
    "\u0132": "IJ",
    "\u0133": "ij",
}
# Spaces that are not ASCII spaces, plus the zero-width and soft-hyphen characters pypdf emits, and
# control characters (a symbol font's glyph, e.g. FlashAttention's "3\x02 speedup" for "3× speedup").
ODD_SPACES = re.compile("[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The look-behind makes a match start only where a word starts: without it, every letter of a long
# run of letters starts a match attempt that scans to the run's end (a 45 KB line took 135 s).
HYPHEN_BREAK = re.compile(r"(?<![A-Za-z])([A-Za-z]{2,})-\n([a-z]{2,})")
MULTI_SPACE = re.compile(r"[ \t]{2,}")
MANY_BLANK_LINES = re.compile(r"\n{3,}")


def fix_ligatures(text: str) -> str:
    for glyph, letters in LIGATURES.items():
        text = text.replace(glyph, letters)
    return text


# pypdf emits accents as separate spacing characters before the letter: "Z¨urich" -> "Zürich".
SPACING_ACCENTS = {
    "\u00a8": "\u0308",
    "\u00b4": "\u0301",
    "`": "\u0300",
    "\u02c6": "\u0302",
    "\u02dc": "\u0303",
}
SPACING_ACCENT = re.compile("([\u00a8\u00b4\u02c6\u02dc])\\s?([A-Za-z])")


def fix_accents(text: str) -> str:
    return SPACING_ACCENT.sub(lambda m: unicodedata.normalize("NFC", m.group(2) + SPACING_ACCENTS[m.group(1)]), text)


def fix_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = INVISIBLE.sub("", text)
    text = ODD_SPACES.sub(" ", text)
    text = MULTI_SPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return MANY_BLANK_LINES.sub("\n\n", text).strip()


def join_hyphenated(text: str) -> str:
    """'exam-\\nple' -> 'example\\n'. Only lower-case continuations, so 'GPT-\\n2' and 'Self-\\nAttention'
    keep their hyphen (those are real compounds far more often than line-break splits)."""
    return HYPHEN_BREAK.sub(lambda m: m.group(1) + m.group(2) + "\n", text)


def clean_page_text(text: str) -> str:
    return fix_whitespace(join_hyphenated(fix_whitespace(fix_accents(fix_ligatures(text)))))


# --- running headers and footers ------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")


def _line_key(line: str) -> str:
    """Lines that differ only in numbers (page 3 / page 4) are the same header."""
    return _DIGITS.sub("#", line.strip().lower())


def remove_running_lines(pages: list[str], edge_lines: int = 2, min_share: float = 0.5) -> list[str]:
    """Drop lines that repeat at the top or bottom of at least `min_share` of the pages.

    Only the first and last `edge_lines` lines of each page are candidates, so a phrase repeated in
    body text is never removed. Needs three or more pages to tell a header from a coincidence.
    """
    if len(pages) < 3:
        return pages
    counts: Counter[str] = Counter()
    for text in pages:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        edge = set(lines[:edge_lines] + lines[-edge_lines:])
        counts.update({_line_key(ln) for ln in edge})
    threshold = max(3, int(min_share * len(pages) + 0.5))
    running = {key for key, n in counts.items() if n >= threshold and len(key) < 120}
    if not running:
        return pages
    cleaned = []
    for text in pages:
        lines = text.split("\n")
        nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
        edge_idx = set(nonblank[:edge_lines] + nonblank[-edge_lines:])
        kept = [ln for i, ln in enumerate(lines) if not (i in edge_idx and _line_key(ln) in running)]
        cleaned.append("\n".join(kept).strip())
    return cleaned


# --- section headings -----------------------------------------------------------------------------

NAMED_SECTIONS = (
    "abstract|introduction|background|related work|conclusions?|discussion|references|bibliography|"
    "acknowledge?ments?|appendix|appendices|experiments?|results|method(?:s|ology)?|evaluation|"
    "limitations|future work|broader impacts?"
)
NAMED_HEADING = re.compile(rf"^(?:(?:\d+|[A-Z])\.?\s+)?({NAMED_SECTIONS})\.?$", re.IGNORECASE)
# "3 Model Architecture", "3.2.1 Scaled Dot-Product Attention", "A Appendix: Proofs", "B.1 Setup"
NUMBERED_HEADING = re.compile(r"^((?:\d{1,2}|[A-H])(?:\.\d{1,2}){0,3})\.?\s+([A-Z][^\n]{1,78})$")
_SENTENCE_END = re.compile(r"[.,;:]$")


def _looks_like_heading_title(title: str) -> bool:
    words = title.split()
    if not 1 <= len(words) <= 10 or _SENTENCE_END.search(title):
        return False
    if sum(c.isdigit() for c in title) > len(title) / 3:  # table rows such as "3 BLEU 27.3 28.4"
        return False
    # Most words capitalised or short function words: "Scaled Dot-Product Attention", "Why self-attention"
    letters = [w for w in words if w[0].isalpha()]
    return bool(letters) and letters[0][0].isupper()


def find_sections(text: str) -> list[Section]:
    """Headings in one page of cleaned text, with their character offsets."""
    sections: list[Section] = []
    offset = 0
    for line in text.split("\n"):
        stripped = line.strip()
        named = NAMED_HEADING.match(stripped)
        numbered = NUMBERED_HEADING.match(stripped)
        if named:
            sections.append(Section(offset, stripped))
        elif numbered and _looks_like_heading_title(numbered.group(2)):
            # Section numbers outside a sane range are usually table cells or list items.
            number = numbered.group(1)
            if not number[0].isdigit() or int(number.split(".")[0]) <= 20:
                sections.append(Section(offset, stripped))
        offset += len(line) + 1
    return sections
