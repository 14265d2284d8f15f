"""The names a paper is called by: "the Transformer", "GPT-1", "LoRA", "CoVe", "the IOI circuit".

Users rarely type a paper's title. They say "the Transformer" for "Attention Is All You Need" and
"GPT-1" for "Improving Language Understanding by Generative Pre-Training", names that are not in the
title at all. A question that names its paper is recognised only if the library knows these names,
so each document learns them at ingest from two places:

- **its own text** (the first pages, where a paper names its contribution): a defined acronym
  ("Low-Rank Adaptation, or LoRA", "Chain-of-Verification (CoVe)") whose letters match the words
  before it, and a named proposal ("we propose a new simple network architecture, the Transformer");
- **the reading list** it came from: the short name the notes give a link ("[...](...) - GPT-2") or
  a name in parentheses after the title ("... (GPT-1)").

Names from the text are kept only when the document uses them repeatedly, so a passing definition
("high bandwidth memory (HBM)") does not name the paper; the retriever further ignores a name that
several documents share (`cove.retrieve`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cove import text as tx

MAX_ALIASES = 8
_ACRONYM_DEF = re.compile(
    r"((?:[A-Z]?[a-z]+[-\s]){1,6}[A-Za-z]+)\s*(?:\(|,\s*or\s+)([A-Z][A-Za-z0-9]*[A-Z][A-Za-z0-9-]*)\)?"
)
_PROPOSAL = re.compile(
    r"\bwe\s+(?:propose|introduce|present|call|name|dub|term|develop)\b[^.]{0,100}?,?\s+(?:the|a|an|called|named|dubbed)?\s*"
    r"([A-Z][A-Za-z0-9-]*(?:\s+[A-Z][A-Za-z0-9-]*)*)(?=[,.;:\s])",
)
_PARENTHESISED = re.compile(r"\(([A-Z][A-Za-z0-9 .-]{1,20})\)\s*$")
_TOO_GENERIC = {"We", "Our", "The", "This", "It", "In", "Table", "Figure", "Section", "Appendix", "Equation"}


def _defines(words: str, acronym: str) -> str:
    """The words an acronym stands for ('Low-Rank Adaptation' for 'LoRA', 'Chain-of-Verification'
    for 'CoVe'): the last words before it whose initials hold its capitals in order, or ''."""
    parts = [w for w in re.split(r"[-\s]+", words) if w]
    capitals = [c.lower() for c in acronym if c.isupper()]
    if len(capitals) < 2:
        return ""
    for start in range(len(parts) - 1, -1, -1):
        initials = [w[0].lower() for w in parts[start:]]
        if initials[0] == capitals[0] and _subsequence(capitals, initials) and len(initials) <= len(capitals) + 1:
            return " ".join(parts[start:])
    return ""


def _subsequence(needle: list[str], hay: list[str]) -> bool:
    it = iter(hay)
    return all(c in it for c in needle)


def _about_title(phrase: str, title: str) -> bool:
    """Is a defined phrase the paper's own subject: every content word of it in the title?"""
    words = set(re.split(r"[-\s:,]+", tx.fold(title)))
    content = [w for w in re.split(r"[-\s]+", tx.fold(phrase)) if w and w not in tx.STOP_WORDS]
    return bool(content) and all(w in words for w in content)


def aliases_from_text(text: str, title: str = "", min_uses: int = 3) -> list[str]:
    """Names a document gives itself in `text` (its first pages), used at least `min_uses` times:
    acronyms of its title's words ("Low-Rank Adaptation (LoRA)") or in its title, and what it says
    it proposes ("we propose ..., the Transformer")."""
    found: list[str] = []
    folded_title = tx.fold(title)
    for words, acronym in _ACRONYM_DEF.findall(text):
        phrase = _defines(words, acronym)
        if phrase and (_about_title(phrase, title) or tx.fold(acronym) in folded_title):
            found.append(acronym)
    for match in _PROPOSAL.finditer(text):
        name = match.group(1).strip("-")
        if name.split()[0] not in _TOO_GENERIC and len(name) >= 3:
            single_word = " " not in name and not tx.name_like(name)
            found.append(f"the {name}" if single_word else name)
    counted = [name for name in dict.fromkeys(found) if _uses(text, name) >= min_uses]
    return counted[:MAX_ALIASES]


def _uses(text: str, name: str) -> int:
    bare = name.removeprefix("the ")
    return len(re.findall(rf"(?<![\w-]){re.escape(bare)}(?![\w-])", text))


def aliases_from_title(title: str) -> list[str]:
    """A name in parentheses after a title: 'Improving ... Pre-Training (GPT-1)' -> ['GPT-1']."""
    found = _PARENTHESISED.search(title.strip())
    return [found.group(1).strip()] if found else []


def title_without_alias(title: str) -> str:
    return _PARENTHESISED.sub("", title).strip()


def merge(*groups: Iterable[str]) -> list[str]:
    """Aliases from several places, first spelling of each kept, at most MAX_ALIASES. A name that
    only starts a longer one ("IO" of "IOI", "Nucleus" of "Nucleus Sampling") is left out."""
    seen: dict[str, str] = {}
    for group in groups:
        for alias in group:
            key = tx.fold(alias).removeprefix("the ")
            if alias and key not in seen:
                seen[key] = alias
    kept = [alias for key, alias in seen.items() if not any(o != key and o.startswith(key) for o in seen)]
    return kept[:MAX_ALIASES]


def alias_keys(alias: str) -> list[str]:
    """How an alias is matched in a question: its folded form without a leading article."""
    folded = tx.fold(alias).removeprefix("the ").strip()
    return [folded] if folded else []
