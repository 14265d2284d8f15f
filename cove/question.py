"""What a question asks: its parts (each asked fact, each named paper), and what each part wants.

"Which loss and momentum trained BetaNet?" asks two things; "What did BetaNet and GammaNet use
for tokenisation?" asks one thing of two papers; "What corpus was it pretrained on, and how many
documents does that corpus hold?" asks two questions in one. An answer that quotes one good
sentence answers one of them. So before anything is composed, the question is cut into `Part`s:

- clauses joined by "and"/"," + a question word ("..., and how many ...") or by a second "?";
- short coordinated phrases ("loss and momentum", "the small and the large variant",
  "compare A with B", "A vs. B"), each becoming a part that shares the rest of the clause;
- one part per named paper when the question names several papers and the cut gave fewer parts.

Each part keeps the terms it asks about (`focus`) apart from the terms it shares with the others
(`context`: the subject, the paper), which is what the quote scorer weighs differently. The rules
are about English question syntax, never about particular questions; `cove.text` supplies words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cove import text as tx

MAX_PARTS = 4  # the default of `answer.max_parts`

_WH = r"(?:what|which|who|whom|whose|where|when|why|how|does|do|did|is|are|was|were|can|could|has|have)"
# ", and how many ...", " and what ...", "; which ...", "? How ..."
_QUESTION_WORD = r"(?:what|which|how|who|whom|whose|where|when|why)"
# A new clause: a second "?", ", and how many ...", " and what ...", "; which ...", ", how long ...",
# ", on which GPUs ...", ", and for at most how many ..." (a comma, up to three words, a question word).
_CLAUSE_BREAK = re.compile(
    rf"\?\s+(?=\w)|\s*[;,]?\s+(?:and|but|also|plus)\s+(?={_WH}\b)|\s*;\s+"
    rf"|,\s+(?:and\s+|or\s+)?(?=(?:[\w-]+\s+){{0,3}}?{_QUESTION_WORD}\b)",
    re.IGNORECASE,
)
# Connectives that set two things side by side.
_COMPARE = re.compile(r"\b(?:compared? (?:with|to)|versus|vs\.?|against|relative to|as opposed to)\b", re.IGNORECASE)
_NUMERIC = re.compile(
    r"\b(how (many|much|long|large|big|fast|often|deep|wide)|what (percentage|fraction|number|size|value|"
    r"ratio|rate|speedup|score|accuracy|perplexity|bleu|dimension|dimensionality)|how many)\b",
    re.IGNORECASE,
)
_ASKED = re.compile(
    r"\b(?:how (?:many|much|long|large|big|fast)|what (?:percentage|fraction|number|size|value) of)"
    r"\s+((?:[\w-]+\s+){0,2}[\w-]+)",
    re.IGNORECASE,
)
_WHY = re.compile(r"^\s*(why|how come|what is the reason|what was the reason|for what reason)\b", re.IGNORECASE)


@dataclass
class Part:
    """One thing the question asks."""

    text: str  # the part as a stand-alone query (retrieval and similarity use it)
    focus: set[str]  # stems of what this part asks about ("dropout", "rate")
    context: set[str]  # stems it shares with the other parts (the subject, the paper)
    wants_number: bool = False
    names: set[str] = field(default_factory=set)  # names it uses (GPT-2, WMT, BLEU)
    papers: set[str] = field(default_factory=set)  # documents it names (doc ids), filled by `analyze`

    @property
    def terms(self) -> set[str]:
        return self.focus | self.context


@dataclass
class Question:
    """The question with its parts, and what it asks for as a whole."""

    text: str
    parts: list[Part]
    why: bool = False
    papers: set[str] = field(default_factory=set)  # every document the question names
    dropped: list[str] = field(default_factory=list)  # parts beyond `max_parts`, not answered (and said so)

    @property
    def multi_part(self) -> bool:
        return len(self.parts) > 1


def wants_number(text: str) -> bool:
    """'How many layers ...?', 'what dropout rate ...' are answered by a number."""
    return bool(_NUMERIC.search(text))


def asked_terms(text: str) -> set[str]:
    """The thing a number question counts: 'how many *hidden units* does ...' -> {hidden, unit}."""
    found = _ASKED.search(text)
    return tx.key_terms(found.group(1)) if found else set()


def question_terms(text: str) -> set[str]:
    """Key terms and names of a text, stemmed: what a sentence must share to be about it."""
    return tx.key_terms(text, min_len=3) | {tx.stem(e) for e in tx.entities(text)}


def analyze(question: str, named: Callable[[str], set[str]] | None = None, max_parts: int = MAX_PARTS) -> Question:
    """The question cut into parts, at most `max_parts` (the others are listed in `dropped`).
    `named(text)` gives the documents a text names (aliases)."""
    named = named or (lambda _text: set())
    pieces = [p for p in (_strip_ends(c) for c in _CLAUSE_BREAK.split(question)) if p]
    setting, pieces = _setting(pieces)
    parts: list[Part] = []
    for clause in pieces or [question]:
        parts.extend(_clause_parts(clause))
    parts = _merge_empty(parts, question)
    if setting:  # "For BetaNet's ImageNet runs, ...": what every part is asked about
        for part in parts:
            part.context |= question_terms(setting) - part.focus
            part.names |= tx.entities(f"of {setting}")
            part.text = f"{setting}, {part.text}"
    papers = named(question)
    for part in parts:  # a part names its own paper; with one paper named, every part is about it
        part.papers = (named(part.text) & papers or (papers if len(papers) == 1 else set())) if papers else set()
    parts = _one_part_per_paper(parts, papers, named)
    shared = set.intersection(*(p.terms for p in parts)) if len(parts) > 1 else set()
    for part in parts:  # a term every part uses is context, unless it is all the part asks about
        if part.focus - shared:
            part.context |= part.focus & shared
            part.focus -= shared
    dropped = [p.text for p in parts[max_parts:]]
    return Question(question, parts[:max_parts], bool(_WHY.match(question)), papers, dropped)


_ASKING = re.compile(rf"\b{_WH}\b", re.IGNORECASE)
# A clause opened by a preposition or a subordinator sets the scene ("In What Makes a Good Prior",
# "When the authors froze the first 4 layers ...", "With BetaNet on ImageNet-1k") when the clauses
# after it ask: a question word inside it is then part of a name or of the scene, not a question.
_SCENE = re.compile(
    r"^(?:in|for|with|on|during|across|under|at|after|before|once|when|while|per|according to|using|"
    r"within|from|of|about)\b",
    re.IGNORECASE,
)
_OPENS_QUESTION = re.compile(rf"^\s*(?:[\w'-]+\s+){{0,3}}?{_QUESTION_WORD}\b", re.IGNORECASE)


def _setting(pieces: list[str]) -> tuple[str, list[str]]:
    """A leading clause that asks nothing ('In BetaNet', 'For the retrieval experiment') and the rest."""
    if len(pieces) < 2:
        return "", pieces
    asks_nothing = not _ASKING.search(pieces[0])
    scene = bool(_SCENE.match(pieces[0])) and all(_OPENS_QUESTION.match(p) for p in pieces[1:])
    if asks_nothing or scene:
        return pieces[0], pieces[1:]
    return "", pieces


def _strip_ends(text: str) -> str:
    return text.strip(" ,;.?!")


def _clause_parts(clause: str) -> list[Part]:
    """A clause's parts: one per coordinated phrase ("A and B", "A, B and C", "A vs B"), else one."""
    sides = _compared(clause)
    if sides:
        return _coordinated(clause, sides)
    conjuncts = _coordination(clause)
    if conjuncts:
        return _coordinated(clause, conjuncts)
    return [_part(clause, question_terms(clause), set(), counted=True)]


_COMPARE_CLAUSE = re.compile(r"^(?:compare|contrast)\s+(.+?)\s+(?:with|to|and|against)\s+(.+)$", re.IGNORECASE)


def _compared(clause: str) -> list[str]:
    """'compare A with B' / 'A compared to B' / 'A vs. B' -> [A, B] (each side keeps its own words)."""
    found = _COMPARE_CLAUSE.match(clause.strip())
    if not found and wants_number(clause):
        return []  # "how much faster is A than B", "how big is X compared to Y": one relative fact
    sides = [found.group(1), found.group(2)] if found else _COMPARE.split(clause)
    if len(sides) == 2 and all(tx.key_terms(side) or tx.entities(side) for side in sides):
        return sides
    return []


def _coordination(clause: str) -> list[str]:
    """Short coordinated phrases in a clause: 'optimizer and beta values' -> ['optimizer', 'beta
    values']. Each conjunct must be a short phrase of content words, so 'pre-training and fine-tuning
    of the model' splits while 'Attention Is All You Need' or a long subordinate clause does not."""
    words = clause.split()
    joins = [i for i, w in enumerate(words) if w.lower() in ("and", "or", "&") and 0 < i < len(words) - 1]
    for join in joins:
        left = _phrase_before(words, join)
        right = _phrase_after(words, join)
        if not left or not right:
            continue
        items = [right]
        # "learning rate, batch size and warmup": walk back over comma-separated items.
        start = join - len(left.split())
        items.insert(0, left.rstrip(","))
        while start > 0 and words[start - 1].endswith(","):
            earlier = _phrase_before(words, start)
            if not earlier:
                break
            items.insert(0, earlier.rstrip(","))
            start -= len(earlier.split())
        if all(tx.key_terms(item) or tx.entities(item) for item in items):
            return items
    return []


_FUNCTION = (set(tx.STOP_WORDS) | {"the", "a", "an", "to", "for", "in", "on", "with", "by", "at"}) - {"of"}


def _phrase_before(words: list[str], index: int) -> str:
    """Up to 3 words before `index`, stopping at a function word or at a comma that ends an
    earlier item ("learning rate, batch size and ..." -> "batch size")."""
    out: list[str] = []
    i = index - 1
    while i >= 0 and len(out) < 3:
        word = words[i]
        if word.strip(",").lower() in _FUNCTION or (word.endswith(",") and i != index - 1):
            break
        out.insert(0, word)
        i -= 1
    return " ".join(out)


# Verbs that end a coordinated phrase: "do BetaNet and GammaNet *use*".
_VERBS = set(
    "use uses used using have has had get gets got achieve achieves achieved report reports reported train trained "
    "need needs take takes perform performs differ mean means show shows apply applies applied employ employs "
    "employed adopt adopts adopted compare work works rely relies require requires reach reaches contain contains "
    "scale scales run runs pre-train pre-trained pretrain pretrained fine-tune fine-tuned finetune finetuned evaluate "
    "evaluated score scored get got obtain obtained make made set choose chose pick picked".split()
)


def _phrase_after(words: list[str], index: int) -> str:
    """Up to 3 words after `index`, skipping a leading article, stopping at a function word or verb."""
    out: list[str] = []
    i = index + 1
    if i < len(words) and words[i].lower() in ("the", "a", "an", "its", "their"):
        i += 1
    while i < len(words) and len(out) < 4:
        word = words[i]
        bare = word.strip(",?.").lower()
        if bare in _FUNCTION or bare in _VERBS:
            break
        out.append(word.strip(",?."))
        if word.endswith((",", "?", ".")):
            break
        i += 1
    while out and out[-1].lower() == "of":  # "number of" without its noun is no phrase
        out.pop()
    return " ".join(out)


def _coordinated(clause: str, items: list[str]) -> list[Part]:
    """One part per item; the clause's other terms are every part's context. When the items are
    names ("BetaNet and GammaNet"), they are whom the clause asks about, not what: the shared terms are
    then the focus and each name is its part's context."""
    item_terms = [question_terms(item) for item in items]
    if len(items) == 2:  # "the small variant's accuracy" vs "the large variant": what tells them apart is the focus
        first, second = item_terms
        item_terms = [first - second or first, second - first or second]
    shared = question_terms(clause) - set().union(*item_terms)
    names_only = all(_is_name(item) for item in items)
    parts = []
    for item, terms in zip(items, item_terms, strict=True):
        text = _substitute(clause, items, item)
        if names_only and shared:
            parts.append(_part(text, set(shared), set(terms)))
        else:
            parts.append(_part(text, set(terms), set(shared)))
    return parts


def _is_name(item: str) -> bool:
    """Is a coordinated item only a name ("BetaNet-2", "GammaNet", "BetaNet"), not a thing asked about?"""
    names = tx.entities(f"of {item}")  # mid-sentence, so a capitalised first word counts as a name
    return bool(names) and not (tx.key_terms(item, min_len=3) - {tx.stem(n) for n in names})


def _substitute(clause: str, items: list[str], keep: str) -> str:
    """The clause with its list of items replaced by one of them: a stand-alone query for that part."""
    pattern = r"\s*(?:,|\band\b|\bor\b|&)?\s*".join(re.escape(i) for i in items)
    found = re.search(pattern, clause)
    if not found:  # the sides of a comparison: keep the side, and the words around both
        found = re.search(re.escape(items[0]) + r".*" + re.escape(items[-1]), clause)
    if not found:
        return clause
    return clause[: found.start()] + keep + clause[found.end() :]


def _part(text: str, focus: set[str], context: set[str], counted: bool = False) -> Part:
    """A part; with `counted`, the thing a number question counts becomes its focus and the rest of
    the clause its context ("how many *layers* does the small BetaNet use")."""
    asked = asked_terms(text) if counted else set()
    if asked:
        focus, context = set(asked), (focus - asked) | context
    return Part(
        text=text.strip(), focus=focus, context=context, wants_number=wants_number(text), names=tx.entities(text)
    )


def _merge_empty(parts: list[Part], question: str) -> list[Part]:
    """A part with nothing to ask joins its neighbour as context: 'and how?' the part before it,
    a leading 'In BetaNet' or 'For the retrieval experiment' the part after it."""
    kept: list[Part] = []
    pending: Part | None = None  # a leading clause with nothing to ask, waiting for the next part
    for part in parts:
        if pending is not None:
            part.context |= pending.focus | pending.context
            part.names |= pending.names
            part.text = f"{pending.text}, {part.text}"
            pending = None
        if part.focus:
            kept.append(part)
        elif kept:
            kept[-1].context |= part.context
            kept[-1].names |= part.names
            kept[-1].text += f" {part.text}"
            kept[-1].wants_number |= part.wants_number
        else:
            pending = part
    if pending is not None:
        kept.append(pending)
    return kept or [_part(question, question_terms(question), set(), counted=True)]


def _one_part_per_paper(parts: list[Part], papers: set[str], named: Callable[[str], set[str]]) -> list[Part]:
    """A question about several papers asks its thing of each: give each paper a part of its own
    unless the cut already did ("BetaNet's optimizer and GammaNet's tokeniser")."""
    if len(papers) < 2:
        return parts
    covered = set().union(*(p.papers for p in parts))
    if len(parts) >= len(papers) and covered >= papers:
        return parts
    out: list[Part] = []
    seen: set[tuple] = set()
    for paper in sorted(papers):
        for part in parts:
            if part.papers and paper not in part.papers:
                continue
            key = (paper, frozenset(part.focus))
            if key in seen:
                continue
            seen.add(key)
            out.append(Part(part.text, set(part.focus), set(part.context), part.wants_number, set(part.names), {paper}))
    return out or parts
