"""Cove's one text toolkit: sentences, words, stems, numbers, names and normalised forms.

Every part of Cove that reads text agrees on these definitions: BM25 tokenises with the same stop
words and stemmer that the checks use to compare a claim with its source, the quote scorer splits
evidence into the same sentences the composer quotes, and the evaluation matches answers with the
same normalisation. Before this module there were four sentence splitters and two stemmers, and a
sentence could be "supported" by one definition of a term and "missing" by another.

Everything here is plain string work with no model and no I/O, so it is cheap and testable alone.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

# --- characters ------------------------------------------------------------------------------------

LIGATURES = {
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st",
    "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij",
}  # fmt: skip

# Papers write symbols, users type their names: "β2 = 0.98" must match "beta values".
GREEK = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ϵ": "epsilon", "ζ": "zeta",
    "η": "eta", "θ": "theta", "κ": "kappa", "λ": "lambda", "μ": "mu", "ν": "nu", "π": "pi", "ρ": "rho",
    "σ": "sigma", "τ": "tau", "φ": "phi", "ϕ": "phi", "χ": "chi", "ψ": "psi", "ω": "omega",
}  # fmt: skip
_GREEK = re.compile("[" + "".join(GREEK) + "]")
_DASHES = re.compile("[\u2010\u2011\u2012\u2013\u2014\u2212]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LINE_BREAK_HYPHEN = re.compile(r"(?<=[a-z])- (?=[a-z])")


def fix_ligatures(text: str) -> str:
    """'ﬁne-tuning' -> 'fine-tuning' (pypdf keeps the ligature glyphs of many papers)."""
    for glyph, letters in LIGATURES.items():
        text = text.replace(glyph, letters)
    return text


def spell_greek(text: str) -> str:
    """'β2' -> ' beta 2': a claim about "beta" meets the symbol its source uses."""
    return _GREEK.sub(lambda m: f" {GREEK[m.group(0)]} ", text)


def squash(text: str) -> str:
    """Runs of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


def fold(text: str) -> str:
    """Lower-cased, whitespace collapsed, dashes unified: for 'is this name in that text?'."""
    return squash(_DASHES.sub("-", text)).lower()


def match_form(text: str) -> str:
    """For substring matching of answers against expected strings: ligatures, compatibility forms,
    control characters and line-break hyphens ("probabil- ity", as pypdf gives them) undone; case,
    dashes and whitespace ignored."""
    text = unicodedata.normalize("NFKC", fix_ligatures(_CONTROL.sub("", text)))
    return _LINE_BREAK_HYPHEN.sub("", fold(text))


# --- what a text says, however it is spelled ---------------------------------------------------------
# Text can hide its words from a pattern: "Ignоre" with a Cyrillic "о", "in\u200bstructions" with a
# zero-width space, "instruc\u00adtions" with a soft hyphen, full-width or mathematical letters.
# `skeleton` undoes that for *detection* only (never for display, quoting or search): compatibility
# forms (NFKC), format characters (Unicode category Cf: zero-width characters, the soft hyphen, bidi
# controls) and combining marks removed, and every character that Unicode's confusables data says
# looks like an ASCII letter or digit replaced by it. The offsets of the result are not the text's.
_FORMAT_OR_MARK = ("Cf", "Mn", "Me")


@functools.cache
def _lookalikes() -> dict[int, str]:
    """{code point: ASCII lookalike} from Unicode's confusables data (the confusable_homoglyphs
    package ships it). Unicode's prototype for I, l and 1 is "l": a capital in that class (Greek
    Iota, Cyrillic I) imitates an I, since a capital L looks nothing like it, so it reads as "i"."""
    import json
    from importlib.resources import files

    data = json.loads(files("confusable_homoglyphs").joinpath("confusables.json").read_text(encoding="utf-8"))
    table: dict[int, str] = {}
    for char, entries in data.items():
        if len(char) != 1 or char.isascii():
            continue
        ascii_ = [e["c"] for e in entries if len(e["c"]) == 1 and e["c"].isascii() and e["c"].isalnum()]
        if ascii_:
            capital = unicodedata.category(char) == "Lu"
            table[ord(char)] = "i" if ascii_[0] == "l" and capital else ascii_[0]
    return table


def reading_form(text: str) -> str:
    """NFKC with format characters (zero-width, soft hyphen, bidi controls) removed: the characters
    a reader sees, in their plain forms."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf") if not text.isascii() else text


def skeleton(text: str) -> str:
    """`reading_form` with combining marks removed ("instruções" -> "instrucoes") and lookalike
    letters folded to ASCII ("Ignоre" with a Cyrillic "о" -> "Ignore"): for pattern matching only."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _FORMAT_OR_MARK)
    return unicodedata.normalize("NFC", text.translate(_lookalikes()))


# --- words and stems ---------------------------------------------------------------------------------

# bm25s's English list is Lucene's 33 words; questions also bring their own filler ("how many ...
# does ... have"), which would otherwise match every methods section.
STOP_WORDS = sorted(
    {
        *"a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
        "this to was will with".split(),
        *"what which who whom whose why when where how many much does do did done has have had having can could "
        "would should shall may might must am were been being its it's i me my we our you your he she his her them "
        "than too very so also just about over under between both each any all some more most other only own same "
        "from up down out off again further once here".split(),
    }
)
_STOP = frozenset(STOP_WORDS)
# Words an answer uses about anything; they are not evidence that a source says the same thing.
GENERIC = _STOP | {
    "paper", "papers", "source", "sources", "authors", "author", "uses", "use", "used", "using", "show", "shows",
    "shown", "propose", "proposes", "proposed", "also", "like", "well", "based", "called", "known", "make",
    "makes", "made", "approach", "method", "work", "study", "according", "stated", "state", "states", "text",
    "answer", "question", "number", "total", "new", "first", "second", "one", "two", "three", "tell", "give",
    "report", "reported", "reports", "say", "says", "said", "mention", "mentioned", "describe", "described",
    "compare", "compared", "comparison", "difference", "differences", "relation", "relationship", "explain",
}  # fmt: skip

WORD = re.compile(r"[A-Za-z][A-Za-z0-9\-']*")
_POSSESSIVE = re.compile(r"(?:'s|')$")
_ALNUM = re.compile(r"[a-z0-9]+")


@functools.lru_cache(maxsize=1)
def _snowball():
    try:
        import Stemmer  # PyStemmer: the Snowball English stemmer, in C ("heads" -> "head")

        return Stemmer.Stemmer("english")
    except ImportError:  # keep working with a crude suffix stripper
        return None


def stemmer():
    """The stemmer BM25 uses (None when PyStemmer is missing): the same one as `stem`."""
    return _snowball()


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """One stemmer for Cove: Snowball English on the lower-cased word."""
    word = word.lower()
    snowball = _snowball()
    if snowball is not None:
        return snowball.stemWord(word)
    for suffix in ("ations", "ation", "ings", "ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def words(text: str) -> set[str]:
    """Lower-case alphanumeric runs: a bag for overlap measures (no stemming, no stop words)."""
    return set(_ALNUM.findall(text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def key_terms(text: str, min_len: int = 4) -> set[str]:
    """Content words, stemmed, that carry a claim (not stop words, generic words or acronyms)."""
    text = spell_greek(strip_citations(text))
    found = (_POSSESSIVE.sub("", w) for w in WORD.findall(text))
    return {stem(w) for w in found if len(w) >= min_len and w.lower() not in GENERIC and not w.isupper()}


def stems(text: str) -> set[str]:
    """Every word of a text, stemmed: what a source offers to match a claim's key terms."""
    return {stem(w) for w in WORD.findall(spell_greek(text))}


# --- numbers ---------------------------------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?:\.\d+)?")
# Counts written as words, one to ninety-nine ("zero" is left out: in papers it is zero-shot or a
# zero initialisation far more often than a count).
_UNITS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()  # fmt: skip
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
NUMBER_WORDS = (
    {word: str(value) for value, word in enumerate(_UNITS, start=1)}
    | {tens: str(20 + 10 * i) for i, tens in enumerate(_TENS)}
    | {f"{tens}-{unit}": str(20 + 10 * i + j) for i, tens in enumerate(_TENS) for j, unit in enumerate(_UNITS[:9], 1)}
)


def numbers(text: str) -> set[str]:
    """Numbers as written, normalised: '1,000' -> '1000', 'eight' -> '8', '0.10' -> '0.1'."""
    found = set()
    for raw in NUMBER.findall(strip_citations(text)):
        value = raw.replace(",", "")
        if "." in value:
            value = value.rstrip("0").rstrip(".") or "0"
        found.add(value)
    for word in WORD.findall(text.lower()):
        if word in NUMBER_WORDS:
            found.add(NUMBER_WORDS[word])
    return found


# --- citation markers in generated text ----------------------------------------------------------------

CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def citations(sentence: str) -> list[int]:
    """The source numbers a sentence cites: 'heads [1, 3].' -> [1, 3]."""
    found: list[int] = []
    for group in CITATION.findall(sentence):
        for part in re.split(r"[,;]", group):
            if part.strip().isdigit() and int(part) not in found:
                found.append(int(part))
    return found


def strip_citations(sentence: str) -> str:
    return squash(re.sub(r"\s+([.!?,;:])", r"\1", CITATION.sub("", sentence)))


# --- names ---------------------------------------------------------------------------------------------

SENTENCE_STARTERS = {
    "The", "This", "These", "That", "It", "In", "A", "An", "They", "We", "Its", "Each", "For", "Our", "On",
    "What", "How", "Which", "Why", "When", "Where", "Who", "And", "Does", "Do", "Is", "Are", "Can", "Did",
    "Compare", "Give", "Tell", "List", "Name", "Describe", "Explain", "If", "As", "With", "To", "By", "From",
}  # fmt: skip


def _inner_capitals(word: str) -> bool:
    return any(c.isupper() for c in word[1:])


def _letters_and_digits(word: str) -> bool:
    return any(c.isdigit() for c in word) and any(c.isalpha() for c in word)


def entities(text: str) -> set[str]:
    """Names: acronyms (BLEU), CamelCase (LoRA), names with digits (GPT-2), capitalised words that
    do not start the sentence. The claim-level notion of "a name the source must contain"."""
    found = set()
    tokens = WORD.findall(strip_citations(text))
    for i, token in enumerate(tokens):
        token = re.sub(r"'s$", "", token.replace("\u2019", "'")).strip("-'")
        if len(token) < 2:
            continue
        capitalised = token[0].isupper() and i > 0 and token not in SENTENCE_STARTERS
        if _inner_capitals(token) or capitalised or _letters_and_digits(token):
            found.add(token)
    return found


def has_entity(entity: str, haystack: str) -> bool:
    """Is the name in the text, allowing 'GPT-2' = 'GPT2' = 'GPT 2', and an abbreviated last part
    ('RACE-high' = 'RACE-h')? (`haystack` as `fold` gives it.)"""
    e = fold(entity)
    if e in haystack or e.replace("-", "") in haystack.replace("-", "") or e.replace("-", " ") in haystack:
        return True
    head, _, last = e.rpartition("-")
    if not head or not last.isalpha():
        return False
    return any(last.startswith(m) for m in re.findall(rf"(?<![\w-]){re.escape(head)}-([a-z]+)", haystack))


def name_like(word: str) -> bool:
    """A word that names something in particular: an acronym (GPT, BERT; not a shouted title word),
    inner capitals (LoRA, FlashAttention) or letters with digits (GPT2)."""
    if word.isupper():
        return 2 <= len(word) <= 5
    return _inner_capitals(word) or (any(c.isdigit() for c in word) and len(word) > 2)


_NAME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-\d+)?")
_LETTER_DIGIT = re.compile(r"(?<=[a-z])[-\s](?=\d+(?![\w.]))")


def name_key(text: str) -> str:
    """How names are compared: folded, and 'GPT-2' / 'GPT 2' written 'gpt2' (as file names do)."""
    return _LETTER_DIGIT.sub("", fold(text))


def name_words(text: str) -> set[str]:
    """The name-like words of a title or file name, as name keys: inner capitals (LoRA, LLaMA,
    FlashAttention), acronyms (GPT) or letters with digits (GPT-2 -> gpt2). Plain words
    ("Attention", "models") are left out: they name no paper in particular."""
    words = _NAME_LIKE.findall(text)
    letters = [c for w in words for c in w if c.isalpha()]
    shouted = sum(c.isupper() for c in letters) > 0.6 * max(1, len(letters))  # "LORA: LOW-RANK ADAPTATION"
    return {name_key(w) for w in words if "-" in w or (not shouted and name_like(w))}


_NAMED_NUMBER = re.compile(r"\b[A-Za-z]+-?\d+(?:\.\d+)?[A-Za-z]*\b")  # GPT-2, A100, RTX4090, v1.5b


def without_named_numbers(text: str) -> str:
    """The text with names that carry digits blanked: in "GPT-2's 48 layers" only 48 is a number."""
    return _NAMED_NUMBER.sub(" ", text)


_NAME_NUMBER = re.compile(r"\b([A-Za-z]+)-(\d+)\b")  # "GPT-2" -> "GPT2", the way file names spell it


def index_form(text: str) -> str:
    """What BM25 tokenises: spellings of one name meet ('GPT-2', 'gpt2' and 'gpt2_language_models'
    share 'gpt2'; 'β1' and 'beta' share 'beta'; ligatures are letters)."""
    text = spell_greek(fix_ligatures(text))
    return _NAME_NUMBER.sub(r"\1\2", text).replace("_", " ")


# --- sentences -----------------------------------------------------------------------------------------

# Abbreviations after which a full stop does not end a sentence.
_ABBREVIATIONS = {
    "e.g", "i.e", "al", "fig", "figs", "eq", "eqs", "sec", "secs", "tab", "vs", "cf", "approx", "resp",
    "no", "nos", "etc", "dr", "mr", "ms", "prof", "ref", "refs", "ch", "vol", "pp", "app", "appx", "def",
}  # fmt: skip
# A sentence may end at ".", "!" or "?" (with closing quotes/brackets) followed by space and a new
# start: a capital, a quote or bracket, a numbered heading ("3.2.1 Scaled ..."), or a citation-free
# digit start; a blank line or a bullet ("•") always starts a new one.
_END = re.compile(r"[.!?][\"'\u201d)\]]*(?=\s+[\"'(\[\u201cA-Z0-9])")
_HARD_BREAK = re.compile(r"\n\s*\n|\s*\u2022\s*")
_TRAILING_CITATIONS = re.compile(r"([.!?])\s*((?:\[\d+(?:\s*[,;]\s*\d+)*\]\s*)+)")


def _ends_abbreviation(text: str, dot: int) -> bool:
    """Is the full stop at `dot` part of 'e.g.', 'et al.', 'Fig.', a decimal or an initial ('A.')?"""
    start = dot
    while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "."):
        start -= 1
    word = text[start:dot].lower()
    if word in _ABBREVIATIONS:
        return True
    return len(word) == 1 and text[start].isupper()  # an initial: "A. Vaswani"


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) spans of the sentences of `text`, offsets into `text` itself (so metadata that
    marks character ranges, such as equations, applies to them). Whitespace at the edges is left out."""
    spans: list[tuple[int, int]] = []
    for block_start, block_end in _blocks(text):
        start = block_start
        for match in _END.finditer(text, block_start, block_end):
            end = match.end()
            if text[match.start()] == "." and _ends_abbreviation(text, match.start()):
                continue
            spans.append((start, end))
            start = end
        spans.append((start, block_end))
    return [(s, e) for s, e in (_trimmed(text, s, e) for s, e in spans) if e > s]


def _blocks(text: str) -> list[tuple[int, int]]:
    """Paragraphs and bullet items: sentence ends never cross them."""
    out, start = [], 0
    for match in _HARD_BREAK.finditer(text):
        out.append((start, match.start()))
        start = match.end()
    out.append((start, len(text)))
    return out


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_sentences(text: str) -> list[str]:
    """Sentences with whitespace collapsed; a citation that trails the full stop moves in front of
    it, so it stays with its sentence ('... heads. [1]' -> '... heads [1].')."""
    text = _TRAILING_CITATIONS.sub(lambda m: f" {m.group(2).strip()}{m.group(1)} ", text)
    return [squash(text[s:e]) for s, e in sentence_spans(text)]


def ends_cleanly(sentence: str) -> bool:
    """Does the sentence end like a sentence (not cut off mid-word by a chunk boundary)?"""
    return sentence.rstrip().endswith((".", "!", "?", ")", '"', "\u201d", "]"))


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "\u2026"


def overlap_share(terms: Iterable[str], other: set[str]) -> float:
    """Share of `terms` found in `other` (1.0 for no terms: nothing is missing)."""
    terms = set(terms)
    return len(terms & other) / len(terms) if terms else 1.0
