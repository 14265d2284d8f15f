"""Front matter: the title and authors of a paper from its first page, and what else sits above the
abstract (affiliations, e-mails, stamps) so it is kept out of answer quotes.

The title is the largest text near the top of page 1 (never figure text or a rotated arXiv stamp),
joined over its lines ("LAN-" + "GUAGE"). A title set in capitals is shown in title case, taking
each word's spelling from the paper's own text where it has one ("LORA" -> "LoRA", "GPT-2" stays).
Authors are the name-like pieces of the lines between the title and the abstract.
"""

from __future__ import annotations

import re
from collections import Counter

from ingest.lines import Line, without_scripts

TITLE_MIN_SCALE = 1.15  # a title is at least this much larger than the body text
STAMP = re.compile(
    r"^(arxiv|preprint|published|provided|copyright|under review|proceedings|accepted|to appear|draft|"
    r"technical report|workshop|conference)\b|\bconference on\b|©",
    re.I,
)
FRONT_LINE = re.compile(
    r"@|\b(equal contribution|contributed equally|corresponding author|correspondence|work done|"
    r"university|universit[éä]|institute|laborator|department|school of|college|research|inc\.|corporation|"
    r"conference|proceedings|workshop|preprint|arxiv|copyright|licen[cs]e|©|google|microsoft|meta ai|openai|"
    r"deepmind|facebook|amazon|nvidia|alibaba|tencent|baidu|huawei)\b",
    re.I,
)
AFFILIATION = re.compile(
    r"\b(universit|institut|laborator|department|school|college|research|inc\b|corporation|centre|center|"
    r"academy|labs?\b|group|foundation|google|microsoft|meta\b|openai|deepmind|facebook|amazon|nvidia|brain|"
    r"ai\b|tech\b)",
    re.I,
)
MARKERS = re.compile(r"[∗*†‡§¶♠♣♥♦⋆]+|(?<=[a-z])\d+(?:,\d+)*|(?<=\s)\d+(?:,\d+)*(?=\s|$)")
NAME = re.compile(r"^[A-Z][\w'’.\-]*(?:\s+(?:[A-Z][\w'’.\-]*|de|van|von|der|den|di|da|del|la|le|bin|al))+$")
SMALL_WORDS = {
    "a",
    "an",
    "and",
    "as",
    "at",
    "but",
    "by",
    "for",
    "from",
    "in",
    "into",
    "of",
    "on",
    "or",
    "the",
    "to",
    "via",
    "with",
    "vs",
}


def find_title(lines: list[Line], page_height: float, body_size: float) -> list[Line]:
    """The title's lines on page 1: the largest upright page text in the top half, consecutive."""
    candidates = [
        ln
        for ln in lines
        if ln.upright
        and not ln.region
        and ln.y > page_height * 0.45
        and ln.size >= body_size * TITLE_MIN_SCALE
        and re.search(r"[A-Za-z]{2}", ln.text)
        and not STAMP.search(ln.text)
    ]
    if not candidates:
        return []
    biggest = max(ln.size for ln in candidates)
    title = [ln for ln in candidates if ln.size >= biggest - 0.6]
    title.sort(key=lambda ln: ln.order)
    # Keep the first block of them: consecutive in content order and close together on the page.
    kept = [title[0]]
    for line in title[1:]:
        if kept[-1].y - line.y > 2.6 * line.size or line.order - kept[-1].order > 3:
            break
        kept.append(line)
    return kept


def join_title(lines: list[Line]) -> str:
    text = ""
    for line in lines:
        part = " ".join(line.text.split())
        if text.endswith("-") and part[:1].isalpha() and (text[-2:-1].isalpha()):
            # "LAN-" + "GUAGE": a word broken over lines (a real hyphen rarely ends a title line)
            text = text[:-1] + part
        else:
            text = f"{text} {part}".strip()
    return re.sub(r"\s+([:,])", r"\1", text)


def shouting(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 6 and sum(c.isupper() for c in letters) >= 0.85 * len(letters)


def title_case(title: str, vocabulary: Counter[str]) -> str:
    """A title set in capitals, in title case; each word spelt as the paper's text spells it when the
    text has a distinctive spelling ("LoRA", "GPT-2", "Chain-of-Verification")."""
    words = title.split()
    out = []
    for i, word in enumerate(words):
        out.append(_case_word(word, vocabulary, first=i == 0 or words[i - 1].endswith(":")))
    return " ".join(out)


def _case_word(word: str, vocabulary: Counter[str], first: bool) -> str:
    core = word.strip(":,.;()\"'")
    if not core:
        return word
    forms = {w: n for w, n in vocabulary.items() if w.lower() == core.lower()}
    total = sum(forms.values())
    distinctive = [(n, w) for w, n in forms.items() if not w.isupper() and w not in (w.lower(), w.capitalize())]
    if distinctive:  # "LoRA", "LLaMA": inner capitals the text uses
        chosen = max(distinctive)[1]
    elif any(c.isdigit() for c in core) or (
        len(core) <= 5 and total >= 2 and forms.get(core.upper(), 0) >= 0.6 * total
    ):
        chosen = core.upper()  # "GPT-2"; acronyms the text writes in capitals too
    elif "-" in core:
        chosen = "-".join(_case_word(part, vocabulary, first and i == 0) for i, part in enumerate(core.split("-")))
    elif core.lower() in SMALL_WORDS and not first:
        chosen = core.lower()
    else:
        chosen = core.capitalize()
    return word.replace(core, chosen, 1)


def word_vocabulary(texts: list[str]) -> Counter[str]:
    """How the document spells each word (for restoring the case of a shouted title)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(re.findall(r"[A-Za-z][\w\-]*[A-Za-z0-9]", text))
    return counts


def find_authors(front: list[Line], title: list[Line]) -> list[str]:
    """Names from the front-matter lines below the title: bold lines first when there are any."""
    below = [ln for ln in front if ln not in title]
    bold = [ln for ln in below if ln.bold]
    names = _names(bold) or _names(below)
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return seen[:50]


def looks_like_front(line: Line) -> bool:
    """A line of names, affiliations, addresses or stamps."""
    return bool(FRONT_LINE.search(line.text) or STAMP.search(line.text) or _names([line]))


def _names(lines: list[Line]) -> list[str]:
    out = []
    for line in lines:
        if "@" in line.text or AFFILIATION.search(line.text):
            continue
        for piece in [without_scripts(line)]:
            piece = MARKERS.sub(",", piece)
            for part in re.split(r",|\band\b|&|;|\s{2,}", piece):
                name = " ".join(part.split()).strip(" .")
                if NAME.match(name) and 2 <= len(name.split()) <= 5 and not name.isupper():
                    out.append(name)
    return out
