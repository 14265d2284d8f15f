"""Training pairs for the reader, made from the library's own text (as InPars, Promptagator and
doc2query make them): a question a sentence answers, that sentence as the positive, and *hard
negatives*: sentences of the same page and paper that share the question's words but do not state
what it asks. Those are exactly what the quote scorer confuses ("mentions X" vs "states the asked
property of X"), so they are what the reader must learn to tell apart.

Questions come from two places:
- **templates** over what a sentence states: a count ("8 parallel attention layers" -> "How many
  parallel attention layers does <paper> use?"), a value ("a learning rate of 2.5e-4" -> "What
  learning rate does <paper> use?"), a name with its kind ("the Adam optimizer" -> "Which optimizer
  does <paper> use?"), a reason ("... because ..." -> "Why ..."), a table cell ("What is the <column>
  of <row> in Table 3?");
- **the local model** (`model_questions`): asked to write the question a sentence answers; a reply
  is kept only when it is a question that shares a content word with the sentence.

A candidate is what the runtime quotes (`cove.quotes.candidates`), read as the reader reads it
(`reader_text`), so training and serving see the same inputs. Everything is seeded.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cove import text as tx
from cove.checks import Evidence
from cove.quotes import Candidate, candidates

# What a question may be asked about: a count, a value, a named thing of a kind, a reason.
_COUNT = re.compile(
    r"(?<![\w.-])(\d[\d,.]*(?:\s?(?:k|K|M|B|million|billion|thousand))?)\s+"
    r"((?:[a-z][a-z-]*\s+){0,1}[a-z][a-z-]*s)(?=[\s,.;:)])(?!\s+(?:the|a|an|our|its|their|on|in|to)\b)"
)
_VALUE = re.compile(
    r"\b((?:[a-zA-Z][\w-]*\s+){0,2}[a-zA-Z][\w-]*)\s+(?:of|=|set to|equal to)\s+(\d[\d.,]*(?:[eE][-\u2212]?\d+)?%?)"
)
_KINDS = (
    "optimizer", "dataset", "corpus", "benchmark", "activation", "function", "tokenizer", "architecture",
    "method", "metric", "algorithm", "normalization", "encoding", "embeddings", "loss", "GPUs", "GPU",
    "hardware", "library", "model", "models", "task", "tasks", "heads", "layer", "attention", "schedule",
)  # fmt: skip
_NAMED_KIND = re.compile(r"\b([A-Z][\w-]*[A-Za-z0-9](?:\s[A-Z0-9][\w-]*)?)\s+(" + "|".join(_KINDS) + r")\b")
_REASON = re.compile(r"^(?:We|They|The authors|This|It)?\s*(.{12,120}?)\s+(?:because|so that|in order to)\s", re.I)
_GENERIC_NOUNS = {"times", "others", "steps of", "years", "is", "was", "ones", "parts", "cases", "items"}


@dataclass(frozen=True)
class Pair:
    """One training example: a question, a candidate as the reader reads it, and its label."""

    question: str
    text: str
    label: float  # 1: the text states what the question asks; 0: it does not
    doc_id: str
    origin: str  # "template:count", "model", "dev", ... (the report counts them)


@dataclass(frozen=True)
class Asked:
    """A question generated for a candidate, with the answer string it must contain."""

    question: str
    answer: str  # what a sentence must state to answer it ("" when not checkable)
    origin: str


@dataclass
class Sentence:
    """A library candidate with its source passage and paper."""

    candidate: Candidate
    evidence: Evidence
    page: int

    @property
    def doc_id(self) -> str:
        return self.evidence.doc_id


def reader_text(candidate_text: str, header: str) -> str:
    """A candidate as the reader reads it: the sentence, then its paper (title and aliases)."""
    return f"{candidate_text} || {header.strip()}" if header.strip() else candidate_text


def library_sentences(evidence: Iterable[tuple[Evidence, int]], max_pair_chars: int = 600) -> list[Sentence]:
    """Every single (not paired) candidate of the given passages, with its page."""
    out = []
    for ev, page in evidence:
        for candidate in candidates(ev, max_pair_chars):
            if not candidate.pair:
                out.append(Sentence(candidate, ev, page))
    return out


def _clean_phrase(words: str) -> str:
    kept = [w for w in words.split() if tx.fold(w) not in tx.GENERIC or w.isupper()]
    return " ".join(kept)


def template_questions(sentence: Sentence, subject: str, rng: random.Random) -> list[Asked]:
    """The questions a sentence answers, from its counts, values, named things, reasons, table cells."""
    text = sentence.candidate.text
    asked: list[Asked] = []
    if sentence.candidate.table_row:
        return _table_questions(sentence, subject, rng)
    for match in _COUNT.finditer(text):
        noun = _clean_phrase(match.group(2))
        if len(noun) >= 4 and noun.lower() not in _GENERIC_NOUNS and noun == match.group(2):
            form = rng.choice(("How many {n} does {s} use?", "How many {n} are there in {s}?",
                               "What number of {n} does {s} report?", "In {s}, how many {n}?"))  # fmt: skip
            asked.append(Asked(form.format(n=noun, s=subject), match.group(1), "template:count"))
    for match in _VALUE.finditer(text):
        what = _clean_phrase(match.group(1))
        if len(what) >= 4 and not tx.numbers(what):
            form = rng.choice(("What {w} does {s} use?", "What was the {w} in {s}?", "Which {w} did {s} choose?",
                               "What is the {w} for {s}?"))  # fmt: skip
            asked.append(Asked(form.format(w=what, s=subject), match.group(2), "template:value"))
    for match in _NAMED_KIND.finditer(text):
        name, kind = match.group(1), match.group(2)
        if tx.fold(name) in tx.GENERIC or tx.fold(name) in tx.fold(subject):
            continue
        form = rng.choice(("Which {k} does {s} use?", "What {k} is used in {s}?", "Which {k} did {s} rely on?"))
        asked.append(Asked(form.format(k=kind, s=subject), name, "template:name"))
    reason = _REASON.match(text)
    if reason and not asked:
        clause = reason.group(1).rstrip(",; ")
        asked.append(Asked(f"Why does {subject} {clause[0].lower() + clause[1:]}?", "", "template:reason"))
    return asked


def _table_questions(sentence: Sentence, subject: str, rng: random.Random) -> list[Asked]:
    """'What is the <column> of <row> in <label>?' for a numeric cell of a table row."""
    ev = sentence.evidence
    row = sentence.candidate.text.split("): ", 1)[-1].split(": ", 1)[-1]
    cells = [c.strip() for c in row.split("|")]
    header = ev.table_header
    if len(cells) < 2 or len(header) != len(cells) or not cells[0]:
        return []
    numeric = [i for i, c in enumerate(cells) if i and tx.numbers(c) and _column_name(header[i])]
    if not numeric:
        return []
    i = rng.choice(numeric)
    label = ev.label or "the table"
    return [Asked(f"What is the {header[i]} of {cells[0]} in {label} of {subject}?", cells[i], "template:table")]


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


def hard_negatives(
    asked: Asked, positive: Sentence, paper: list[Sentence], rng: random.Random, count: int = 4
) -> list[Sentence]:
    """On-topic sentences of the same paper that do not state the answer: the most of the
    question's terms first (the same page breaking ties), then one at random."""
    terms = tx.key_terms(asked.question, min_len=3) | tx.stems(asked.question)
    pos_terms = tx.stems(positive.candidate.text)
    scored = []
    for other in paper:
        if other.candidate.text == positive.candidate.text or states(other.candidate.text, asked.answer):
            continue
        other_terms = tx.stems(other.candidate.text)
        if not asked.answer and tx.jaccard(pos_terms, other_terms) > 0.5:  # a restatement, not a negative
            continue
        overlap = len(terms & other_terms) + 0.5 * (other.page == positive.page)
        scored.append((overlap, rng.random(), other))
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    chosen = [s for _, _, s in scored[: count - 1]]
    rest = [s for _, _, s in scored[count - 1 :]]
    if rest:
        chosen.append(rng.choice(rest))
    return chosen


def library_pairs(
    sentences: list[Sentence],
    subjects: dict[str, str],
    seed: int = 22,
    negatives: int = 4,
    extra_questions: dict[int, list[Asked]] | None = None,
    per_paper: int = 400,
) -> list[Pair]:
    """Template (and model-written) questions over the sentences, each with its positive and hard
    negatives from the same paper. `subjects` names each paper the way questions do ("LLaMA")."""
    rng = random.Random(seed)
    by_paper: dict[str, list[Sentence]] = {}
    for s in sentences:
        by_paper.setdefault(s.doc_id, []).append(s)
    pairs: list[Pair] = []
    for doc_id in sorted(by_paper):
        paper = by_paper[doc_id]
        subject = subjects.get(doc_id) or "the paper"
        made, tables = 0, 0
        for index in rng.sample(range(len(paper)), len(paper)):
            sentence = paper[index]
            asked = template_questions(sentence, subject, rng)
            if sentence.candidate.table_row:  # a paper's tables are many rows alike: a share of its questions
                tables += 1
                if tables > per_paper // 8:
                    asked = []
            asked += (extra_questions or {}).get(id(sentence), [])
            for question in asked[:2]:
                pairs.append(Pair(question.question, _read(sentence), 1.0, doc_id, question.origin))
                for negative in hard_negatives(question, sentence, paper, rng, negatives):
                    pairs.append(Pair(question.question, _read(negative), 0.0, doc_id, question.origin))
                made += 1
            if made >= per_paper:
                break
    return pairs


def _read(sentence: Sentence) -> str:
    return reader_text(sentence.candidate.text, sentence.evidence.header)


# --- questions written by the local model ------------------------------------------------------------

MODEL_PROMPT = (
    "Write one short question that the following sentence from the paper {subject} answers. "
    "Reply with the question only.\n\nSentence: {sentence}"
)


def model_questions(
    sentences: list[Sentence],
    subjects: dict[str, str],
    ask: Callable[[str], str],
    count: int,
    seed: int = 22,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[int, list[Asked]]:
    """Questions the local model writes for `count` sentences drawn with `seed`, keyed by
    `id(sentence)`. A reply counts only as a question sharing a content word with its sentence."""
    rng = random.Random(seed)
    chosen = rng.sample(sentences, min(count, len(sentences)))
    out: dict[int, list[Asked]] = {}
    for done, sentence in enumerate(chosen, 1):
        subject = subjects.get(sentence.doc_id) or "the paper"
        reply = ask(MODEL_PROMPT.format(subject=subject, sentence=sentence.candidate.text))
        question = _first_question(reply)
        if question and tx.key_terms(question) & tx.key_terms(sentence.candidate.text):
            out[id(sentence)] = [Asked(question, "", "model")]
        if on_progress:
            on_progress(done, len(chosen))
    return out


def _first_question(reply: str) -> str:
    for line in reply.strip().splitlines():
        line = re.sub(r"^\s*(?:Q(?:uestion)?\s*\d*[:.)]|\d+[.)]|[-*])\s*", "", line).strip().strip('"')
        if 12 <= len(line) <= 200 and line.endswith("?"):
            return line
    return ""
