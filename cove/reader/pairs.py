"""Training groups for the reader, made from the library's own text (as InPars, Promptagator and
doc2query make them): a question a sentence answers, that sentence as the positive, and *hard
negatives*: sentences of the same paper and page that share the question's words but do not state
what it asks. Those are exactly what similarity confuses ("mentions X" vs "states the asked
property of X"), so they are what the reader must learn to tell apart.

A `Group` is one question with its candidates and their labels, which is what the reader ranks at
answer time: training is listwise over a group (which candidate states it?) plus pointwise over
each pair (does this one state it at all?). Some groups have no positive: the question's own
sentence is taken out, so what remains only mentions the asked thing. Those teach the reader to say
"no candidate states it", which is what abstention needs.

Questions come from two places:
- **templates** over what a sentence states, each naming the asked property and, to make the
  question specific, a few words of the sentence's own setting ("How many decay stages does
  BetaNet use for its learning rate?"): a count ("8 parallel attention layers"), a value ("a weight decay of
  0.1", "beam size = 4"), a named thing of a kind ("the Adam optimizer"), a table cell ("What is
  the F1 of CoVe (joint) in Table 3?"), a purpose or reason ("... to cut cache misses" ->
  "How does BetaNet cut cache misses?");
- **the local model** (`model_questions`): asked to write the question a sentence answers; a reply
  is kept only when it is a question that shares content words with the sentence *and* the
  sentence is among the few of its paper that share the most of the question's words (the
  round-trip filter of Promptagator: a question its own sentence does not stand out for is vague).

A candidate is what the runtime quotes (`cove.quotes.candidates`: single sentences and pairs of
consecutive ones, table rows), read as the reader reads it (`reader_text`), so training and serving
see the same inputs. Everything is seeded.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cove import text as tx
from cove.checks import Evidence
from cove.quotes import Candidate, candidates

# --- what a sentence states ---------------------------------------------------------------------------

_NUM = r"(?:\d[\d,]*(?:\.\d+)?(?:\s?[eE][-\u2212]?\d+)?%?(?:\s?(?:K|M|B|k|GB|TB|MB|x|\u00d7))?)"
# "a weight decay of 0.1", "beam size = 4", "dropout rate was set to 0.3", "a dimensionality dff = 2048"
_VALUE = re.compile(
    r"\b((?:[A-Za-z][\w-]*\s+){0,2}[A-Za-z][\w-]*)\s+(?:of|=|is|was|are|were|set to|equal to|to|at)\s+"
    r"(?:about\s+|approximately\s+|roughly\s+|around\s+|only\s+|over\s+|~\s?)?(" + _NUM + r")(?![\w.])"
)
# "6 identical layers", "4.5 million sentence pairs", "eight attention heads"
_WORD_NUMBERS = "|".join(sorted((w for w in tx.NUMBER_WORDS if "-" not in w), key=len, reverse=True))
_COUNT = re.compile(
    r"(?<![\w.-])(\d[\d,.]*(?:\s(?:thousand|million|billion))?|" + _WORD_NUMBERS + r")\s+"
    r"((?:[a-z][a-z-]*\s+){0,2}[a-z][a-z-]*s)\b(?!\s+(?:of|the|a|an|our|its|their|on|in|to)\b)",
    re.IGNORECASE,
)
_KINDS = (
    "optimizer", "dataset", "corpus", "benchmark", "activation function", "activation", "tokenizer",
    "architecture", "algorithm", "normalization", "normalizing function", "loss", "metric", "GPUs", "GPU",
    "library", "framework", "encoding", "embeddings", "schedule", "method", "technique", "decoding",
    "sampling", "initialization", "regularization", "heads", "task", "model",
)  # fmt: skip
_NAME = r"([A-Z][\w.-]*[A-Za-z0-9](?:\s[A-Z0-9][\w.-]*)?)"
_KIND = r"(" + "|".join(re.escape(k) for k in sorted(_KINDS, key=len, reverse=True)) + r")"
_NAMED_KIND = re.compile(r"\b" + _NAME + r"\s+" + _KIND + r"\b")  # "the Adam optimizer"
_KIND_NAMED = re.compile(r"\b" + _KIND + r"\s+(?:called\s+|named\s+|\()?" + _NAME)  # "the optimizer Adam"
_PURPOSE = re.compile(
    r"\b(?:to|in order to|so as to)\s+((?:reduce|improve|avoid|increase|speed up|prevent|encourage|make|ensure|"
    r"allow|enable|compute|find|identify|measure|estimate|select|choose|generate|decode|train|evaluate|"
    r"handle|remove|mitigate|detect|verify)\b(?:\s+[\w-]+){1,6})",
    re.IGNORECASE,
)
_REASON = re.compile(r"^(?:We|They|The authors)\s+(.{12,120}?),?\s+(?:because|so that|since)\s")
# A bibliography entry the parser left in a prose chunk ("[323] N. Mostafazadeh, N. Chambers, ..."):
# never a sentence a question is asked of.
_REFERENCE = re.compile(r"^\s*(?:\d+\s+)?\[\d+\]\s|(?:\b[A-Z]\.\s+[A-Z][a-z]+,\s+){2}")

# Nouns a count is not asked by: units of time and size ask "how long"/"how much", not "how many".
_UNITS = set(
    "seconds minutes hours days weeks months years times steps tokens parameters bits bytes points percent "
    "others ones cases items parts orders".split()
)
_STOP = set(tx.STOP_WORDS) | {"we", "our", "their", "its", "this", "that", "these", "those", "which", "while"}
# How a question names the asked thing in context: the few content words before it in its clause.
_CONTEXT_WORDS = 3


@dataclass(frozen=True)
class Pair:
    """One training example: a question, a candidate as the reader reads it, and its label."""

    question: str
    text: str
    label: float  # 1: the text states what the question asks; 0: it does not
    doc_id: str
    origin: str  # "template:count", "model", "dev", ... (the report counts them)


@dataclass
class Group:
    """One question with candidates and their labels: what the reader ranks at answer time. A group
    with no positive is a question none of its candidates answers."""

    question: str
    texts: list[str]
    labels: list[float]
    doc_id: str
    origin: str

    def pairs(self) -> list[Pair]:
        labelled = zip(self.texts, self.labels, strict=True)
        return [Pair(self.question, t, y, self.doc_id, self.origin) for t, y in labelled]

    @property
    def answerable(self) -> bool:
        return any(y > 0.5 for y in self.labels)


@dataclass(frozen=True)
class Asked:
    """A question generated for a candidate, with the answer it must state and what it asks about."""

    question: str
    answer: str  # what a sentence must state to answer it ("" when not checkable)
    origin: str
    focus: frozenset[str] = frozenset()  # stems of the asked property ("warmup", "step")
    setting: frozenset[str] = frozenset()  # stems of the sentence's own setting the question names


@dataclass
class Sentence:
    """A library candidate with its source passage and paper, and the pairs it is quoted in."""

    candidate: Candidate
    evidence: Evidence
    page: int
    pairs: list[str] = field(default_factory=list)  # texts of the two-sentence candidates holding it

    @property
    def doc_id(self) -> str:
        return self.evidence.doc_id

    @property
    def text(self) -> str:
        return self.candidate.text


def reader_text(candidate_text: str, header: str) -> str:
    """A candidate as the reader reads it: the sentence, then its paper (title, section, aliases)."""
    return f"{candidate_text} || {header.strip()}" if header.strip() else candidate_text


def library_sentences(evidence: Iterable[tuple[Evidence, int]], max_pair_chars: int = 600) -> list[Sentence]:
    """Every single candidate of the given passages, with its page and the pairs holding it."""
    out = []
    for ev, page in evidence:
        found = candidates(ev, max_pair_chars)
        singles = {(c.start, c.end): Sentence(c, ev, page) for c in found if not c.pair}
        for c in found:
            if c.pair:
                for s in singles.values():
                    if c.start <= s.candidate.start and s.candidate.end <= c.end:
                        s.pairs.append(c.text)
        out.extend(singles.values())
    return out


# --- templates ---------------------------------------------------------------------------------------


def _content(words: str) -> list[str]:
    """The content words of a phrase, in order (no stop words, no numbers)."""
    return [w for w in tx.WORD.findall(words) if w.lower() not in _STOP and w.lower() not in tx.GENERIC]


def _phrase(words: str) -> str:
    """A phrase without leading function words: 'the base model' -> 'base model'."""
    kept = words.split()
    while kept and (kept[0].lower() in _STOP or kept[0].lower() in tx.GENERIC):
        kept.pop(0)
    return " ".join(kept)


def _setting(text: str, start: int, end: int, exclude: set[str], rng: random.Random) -> list[str]:
    """Up to `_CONTEXT_WORDS` content words of the sentence near the answer (its clause before, then
    after), not among `exclude`: what makes the question about this sentence's setting."""
    before = re.split(r"[,;:]", text[:start])[-1]
    after = re.split(r"[,;:.]", text[end:])[0]
    words = [w for w in _content(before)[-4:] + _content(after)[:3] if tx.stem(w) not in exclude and len(w) > 2]
    words = list(dict.fromkeys(words))
    if not words:
        return []
    return words[: rng.randint(1, min(_CONTEXT_WORDS, len(words)))]


def _ask(asked: str, answer: str, origin: str, focus_words: str, setting: list[str]) -> Asked:
    return Asked(asked, answer, origin, frozenset(tx.stems(focus_words)), frozenset(tx.stem(w) for w in setting))


def _in(setting: list[str], subject: str, rng: random.Random) -> str:
    """' for training step in LLaMA', ' in LLaMA' or ' for training step': where the question points."""
    where = f" in {subject}" if subject and rng.random() < 0.8 else ""
    return (f" for {' '.join(setting)}" if setting else "") + where


def template_questions(sentence: Sentence, subject: str, rng: random.Random) -> list[Asked]:
    """The questions a sentence answers: its counts, values, named things, purposes, table cells."""
    if sentence.candidate.table_row:
        return _table_questions(sentence, subject, rng)
    text = sentence.text
    if _REFERENCE.search(text):
        return []
    asked: list[Asked] = []
    for match in _COUNT.finditer(text):
        noun = _phrase(match.group(2))
        if len(noun) < 4 or noun.split()[-1].lower() in _UNITS or tx.numbers(noun) or not tx.key_terms(noun, 3):
            continue
        setting = _setting(text, match.start(), match.end(), tx.stems(noun), rng)
        where = _in(setting, subject, rng)
        form = rng.choice(("How many {n} are used{w}?", "How many {n}{w}?", "What number of {n} is used{w}?",
                           "How many {n} does it have{w}?"))  # fmt: skip
        asked.append(_ask(form.format(n=noun, w=where), match.group(1), "template:count", noun, setting))
    for match in _VALUE.finditer(text):
        what = _phrase(match.group(1))
        if len(what) < 3 or tx.numbers(what) or not _content(what) or what.split()[-1].lower() in _UNITS:
            continue
        setting = _setting(text, match.start(), match.end(), tx.stems(what), rng)
        where = _in(setting, subject, rng)
        form = rng.choice(("What {w} is used{x}?", "What was the {w}{x}?", "Which {w} was chosen{x}?",
                           "What is the {w}{x}?", "What {w} do they use{x}?"))  # fmt: skip
        asked.append(_ask(form.format(w=what, x=where), match.group(2), "template:value", what, setting))
    for pattern, name_first in ((_NAMED_KIND, True), (_KIND_NAMED, False)):
        for match in pattern.finditer(text):
            name, kind = (match.group(1), match.group(2)) if name_first else (match.group(2), match.group(1))
            generic = tx.fold(name) in tx.GENERIC or name.split()[0] in tx.SENTENCE_STARTERS
            if generic or tx.fold(name) in tx.fold(subject):
                continue
            setting = _setting(text, match.start(), match.end(), tx.stems(kind) | tx.stems(name), rng)
            where = _in(setting, subject, rng)
            form = rng.choice(("Which {k} is used{w}?", "What {k} do they use{w}?", "Which {k} was chosen{w}?"))
            asked.append(_ask(form.format(k=kind, w=where), name, "template:name", kind, setting))
    if not asked:
        purpose = _PURPOSE.search(text)
        if purpose:
            goal = purpose.group(1).rstrip(",;. ")
            who = subject or "the method"
            asked.append(_ask(f"How does {who} {goal[0].lower() + goal[1:]}?", "", "template:purpose", goal, []))
    if not asked:
        reason = _REASON.match(text)
        if reason and subject:
            clause = reason.group(1).rstrip(",; ")
            asked.append(_ask(f"In {subject}, why did they {clause}?", "", "template:reason", clause, []))
    return asked


def _table_questions(sentence: Sentence, subject: str, rng: random.Random) -> list[Asked]:
    """'What is the <column> of <row> in <label>?' for a numeric cell of a table row."""
    ev = sentence.evidence
    row = sentence.text.split("): ", 1)[-1].split(": ", 1)[-1]
    cells = [c.strip() for c in row.split("|")]
    header = ev.table_header
    if len(cells) < 2 or len(header) != len(cells) or not cells[0] or not re.search(r"[A-Za-z]", cells[0]):
        return []
    numeric = [i for i, c in enumerate(cells) if i and tx.numbers(c) and _column_name(header[i])]
    if not numeric:
        return []
    i = rng.choice(numeric)
    label = ev.label or "the table"
    caption = _caption_words(ev)
    where = rng.choice((f"in {label} of {subject}", f"in {subject}'s {caption or label} table", f"in {label}"))
    form = rng.choice(("What is the {c} of {r} {w}?", "What {c} does {r} get {w}?", "{w}, what {c} does {r} reach?"))
    question = form.format(c=header[i], r=cells[0], w=where)
    return [_ask(question[0].upper() + question[1:], cells[i], "template:table", header[i], _content(cells[0]))]


def _caption_words(ev: Evidence) -> str:
    """A few content words of a table's caption (its chunk's first line), for naming the table."""
    first = ev.text.split("\n", 1)[0]
    if not ev.label or not first.startswith(ev.label):
        return ""
    return " ".join(_content(first[len(ev.label) :])[:4])


def _column_name(cell: str) -> bool:
    """A header cell a question can name: a few words, not a run of numbers (a header the parser
    merged with the first row)."""
    cell = cell.strip()
    named = re.search(r"[A-Za-z]{2}", cell) is not None
    return named and 2 <= len(cell) <= 30 and len(tx.numbers(cell)) <= 1 and len(cell.split()) <= 4


def states(sentence_text: str, answer: str) -> bool:
    """Does a sentence state the answer string (folded, numbers compared as numbers)?"""
    if not answer:
        return False
    if tx.numbers(answer):
        return bool(tx.numbers(answer) & tx.numbers(sentence_text))
    return tx.fold(answer) in tx.fold(sentence_text)


# --- negatives ---------------------------------------------------------------------------------------


def hard_negatives(
    asked: Asked, positive: Sentence, paper: list[Sentence], rng: random.Random, count: int = 7
) -> list[Sentence]:
    """Sentences of the same paper that do not state the answer, hardest first: those that mention
    the asked property (the most of its words, the same page breaking ties), those about the same
    setting, a neighbour on the same page, then the rest at random."""
    focus = set(asked.focus) or tx.key_terms(asked.question, min_len=3)
    question = tx.key_terms(asked.question, min_len=3) | tx.stems(asked.question)
    pos_terms = tx.stems(positive.text)
    usable = []  # (sentence, mentions the property, about the setting, shares the question's words, same page)
    for other in paper:
        if other.text == positive.text or states(other.text, asked.answer) or other.text in positive.pairs:
            continue
        terms = tx.stems(other.text)
        if not asked.answer and tx.jaccard(pos_terms, terms) > 0.5:  # a restatement, not a negative
            continue
        same_page = other.page == positive.page
        usable.append((other, len(focus & terms), len(asked.setting & terms), len(question & terms), same_page))
    rng.shuffle(usable)
    chosen: list[Sentence] = []
    for key, n in (
        (lambda u: (u[1], u[4], u[3]), max(1, count // 2)),  # mentions what is asked
        (lambda u: (u[2], u[3]), count // 4 if asked.setting else 0),  # about the same setting
        (lambda u: (u[4], u[3]), 1),  # its neighbour
    ):
        fresh = [u for u in sorted(usable, key=key, reverse=True) if u[0] not in chosen]
        chosen += [u[0] for u in fresh[:n]]
    chosen += [u[0] for u in usable if u[0] not in chosen][: max(0, count - len(chosen))]
    return chosen[:count]


# --- groups ------------------------------------------------------------------------------------------


def library_groups(
    sentences: list[Sentence],
    subjects: dict[str, list[str]],
    seed: int = 22,
    negatives: int = 7,
    extra_questions: dict[int, list[Asked]] | None = None,
    per_paper: int = 600,
    unanswerable_share: float = 0.2,
    pair_share: float = 0.3,
) -> list[Group]:
    """Template (and model-written) questions over the sentences, each a group: its positive (or,
    for `unanswerable_share` of them, none) and hard negatives from the same paper. `subjects` are
    the names questions call each paper by ("LLaMA", "the LLaMA paper")."""
    rng = random.Random(seed)
    by_paper: dict[str, list[Sentence]] = {}
    for s in sentences:
        by_paper.setdefault(s.doc_id, []).append(s)
    groups: list[Group] = []
    for doc_id in sorted(by_paper):
        paper = by_paper[doc_id]
        names = subjects.get(doc_id) or ["the paper"]
        made, tables = 0, 0
        for index in rng.sample(range(len(paper)), len(paper)):
            sentence = paper[index]
            asked = template_questions(sentence, rng.choice(names), rng)
            if sentence.candidate.table_row:  # a paper's tables are many rows alike: a share of its questions
                tables += 1
                if tables > per_paper // 6:
                    asked = []
            asked += (extra_questions or {}).get(id(sentence), [])
            rng.shuffle(asked)
            for question in asked[:2]:
                groups.append(_group(question, sentence, paper, rng, negatives, unanswerable_share, pair_share))
                made += 1
            if made >= per_paper:
                break
    return groups


def _group(asked: Asked, positive: Sentence, paper: list[Sentence], rng: random.Random, negatives: int,
           unanswerable_share: float, pair_share: float) -> Group:  # fmt: skip
    chosen = hard_negatives(asked, positive, paper, rng, negatives)
    texts = [_read(n.text, n) for n in chosen]
    if chosen and rng.random() < pair_share:  # a pair of sentences neither of which states it
        other = rng.choice(chosen)
        free = [p for p in other.pairs if not states(p, asked.answer) and positive.text not in p]
        if free:
            texts[-1] = _read(rng.choice(free), other)
    labels = [0.0] * len(texts)
    if rng.random() >= unanswerable_share:
        shown = positive.text
        if positive.pairs and rng.random() < pair_share:  # quoted with its neighbour, it still states it
            shown = rng.choice(positive.pairs)
        at = rng.randrange(len(texts) + 1)
        texts.insert(at, _read(shown, positive))
        labels.insert(at, 1.0)
    origin = asked.origin if any(labels) else f"{asked.origin}:unanswerable"
    return Group(asked.question, texts, labels, positive.doc_id, origin)


def _read(text: str, sentence: Sentence) -> str:
    return reader_text(text, sentence.evidence.header)


# --- questions written by the local model ------------------------------------------------------------

ROUND_TRIP_TOP = 3  # the sentence must be among its paper's this-many best for the question's words


def model_questions(
    sentences: list[Sentence],
    subjects: dict[str, list[str]],
    write: Callable[[str], str],
    count: int,
    seed: int = 22,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[int, list[Asked]]:
    """Questions the chat model writes (`write(sentence)`, `cove.reader.questions`) for `count` prose
    sentences drawn with `seed`, keyed by `id(sentence)`. A reply counts only as a question sharing
    two content words with its sentence, naming nothing the sentence does not, for which its
    sentence stands out in its paper (the round-trip filter). Half of them are asked of the paper
    by name, as users ask ("... in LLaMA?")."""
    rng = random.Random(seed)
    prose = [s for s in sentences if not s.candidate.table_row and len(s.text) >= 60]
    chosen = rng.sample(prose, min(count, len(prose)))
    by_paper: dict[str, list[Sentence]] = {}
    for s in sentences:
        by_paper.setdefault(s.doc_id, []).append(s)
    out: dict[int, list[Asked]] = {}
    for done, sentence in enumerate(chosen, 1):
        subject = rng.choice(subjects.get(sentence.doc_id) or ["the paper"])
        question = first_question(write(sentence.text))
        shared = tx.key_terms(question, 3) & tx.key_terms(sentence.text, 3)
        invented = [e for e in tx.entities(question) if not tx.has_entity(e, tx.fold(sentence.text))]
        if question and len(shared) >= 2 and not invented and round_trip(question, sentence, by_paper[sentence.doc_id]):
            if rng.random() < 0.5 and tx.fold(subject) not in tx.fold(question):
                question = f"{question.rstrip('?')} in {subject}?"
            out[id(sentence)] = [Asked(question, "", "model", frozenset(shared))]
        if on_progress:
            on_progress(done, len(chosen))
    return out


def round_trip(question: str, sentence: Sentence, paper: list[Sentence], top: int = ROUND_TRIP_TOP) -> bool:
    """Is the sentence among the `top` of its paper sharing the most of the question's words?"""
    terms = tx.key_terms(question, 3)
    if not terms:
        return False
    mine = len(terms & tx.key_terms(sentence.text, 3))
    better = sum(len(terms & tx.key_terms(o.text, 3)) > mine for o in paper if o is not sentence)
    return better < top


def first_question(reply: str) -> str:
    """The first line of a reply that reads as a question."""
    for line in reply.strip().splitlines():
        line = re.sub(r"^\s*(?:Q(?:uestion)?\s*\d*[:.)]|\d+[.)]|[-*])\s*", "", line).strip().strip('"')
        if 12 <= len(line) <= 200 and line.endswith("?"):
            return line
    return ""
