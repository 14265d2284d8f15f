"""Choosing the source sentence that answers a part of a question: named features, fitted weights.

An answer is only as good as the sentence it quotes. Earlier versions picked it with about ten
hand-set bonuses and penalties, each added for one development question; they did not carry over
to questions nobody had tuned for. Here every candidate sentence gets a vector of *named features*
(below), the score is their weighted sum, and the weights are fitted on the tuning items' gold
evidence sentences by `evals/fit_quotes.py` (a listwise logistic ranker in numpy), then shipped as
`cove/quote_weights.json` and overridable in settings (`quotes.weights`). `explain()` says which
features made a choice.

Candidates are the sentences of the retrieved chunks (and each pair of consecutive sentences: an
answer often spans two), minus anything the parser marked as not prose (figure labels, equations,
references, front matter: `cove.docs.unquotable_spans`); table rows are candidates with their
table's caption and header. Similarity needs MiniLM vectors, the one costly feature: it is computed
only for the candidates that the other features rank highest (`quotes.prefilter`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cove import text as tx
from cove.checks import Evidence, number_term_tokens, terms_near
from cove.question import Part, Question
from cove.settings import QUOTE_WEIGHTS_FILE, fitted_quote_weights

WEIGHTS_FILE = QUOTE_WEIGHTS_FILE

# What a candidate is, and where some features switch: part of the features' *definitions*, which
# the weights in quote_weights.json were fitted with (evals/fit_quotes.py). They are not tuned
# numbers: change one and refit, or the weights describe other features.
MIN_QUOTE_CHARS, MAX_QUOTE_CHARS = 20, 400  # a single sentence shorter or longer is not a candidate
SHORT_CHARS, LONG_CHARS = 40, 300  # the `short` and `long` features
NUMBER_ABOUT_SATURATES = 4  # `number_about`: this many of the part's terms next to a number is all of it

# name -> what it measures (the report and explain() print these)
FEATURES: dict[str, str] = {
    "focus": "share of what the part asks about (IDF-weighted) that the sentence states",
    "focus_all": "the sentence states every term of what the part asks about",
    "new_name": "a what/which/who part, and the sentence names something the question does not (an answer)",
    "context": "share of the part's shared terms (subject, paper) in the sentence or its source's title",
    "passage": "share of all the part's terms found in the sentence's whole passage",
    "similarity": "MiniLM cosine between the sentence and the part",
    "passage_similarity": "MiniLM cosine between the passage and the question (retrieval's view)",
    "rank": "how early retrieval ranked the passage (1 for the first)",
    "named_paper": "the passage is from a paper the question names",
    "other_paper": "the question names papers and the passage is from another one",
    "number_about": "a number stated within a few words of what the part asks about (number questions)",
    "no_number": "a number question, and the sentence states no number",
    "numeric_density": "share of the sentence's tokens that are numbers (table or figure debris)",
    "symbol_density": "share of characters that are symbols (equations)",
    "cut_off": "the sentence does not end like a sentence (cut by a chunk boundary)",
    "question_mark": "the sentence is itself a question",
    "heading": "the sentence starts with a numbered heading",
    "short": "shorter than 40 characters",
    "long": "longer than 300 characters",
    "pair": "two consecutive sentences quoted together",
    "reason": "a why-question, and the sentence gives a reason (because, so that, allows, ...)",
    "table_row": "a row of a table, quoted with its header",
}
FEATURE_NAMES = tuple(FEATURES)
CHEAP = tuple(f for f in FEATURE_NAMES if f != "similarity")

_REASON = re.compile(
    r"\b(because|since|so that|in order to|allows?|allowing|enables?|to improve|to avoid|due to|thus|therefore)\b",
    re.IGNORECASE,
)
_HEADING_START = re.compile(r"\d+(?:\.\d+)*\.?\s+[A-Z]")
_NUMBER_TOKEN = re.compile(r"^[\d.,%×x±]+$")
NOT_QUOTED_BLOCKS = {"figure", "reference", "front"}


@dataclass(frozen=True)
class Candidate:
    """A quotable piece of one source: a sentence, two consecutive ones, or a table row."""

    text: str  # as quoted (whitespace collapsed)
    n: int  # the source's number
    start: int  # offsets into the source text (for a pair: first start, second end)
    end: int
    pair: bool = False
    table_row: bool = False


@dataclass
class Scored:
    candidate: Candidate
    score: float
    features: dict[str, float] = field(default_factory=dict)
    reader: float | None = None  # the trained reader's calibrated probability, when it read this one


@functools.cache
def _shipped_weights() -> dict[str, float]:
    return fitted_quote_weights()


def default_weights() -> dict[str, float]:
    """The fitted weights shipped with Cove (`evals/fit_quotes.py` writes them); a copy to change."""
    return dict(_shipped_weights())


# What the gate looks at: the best candidate's score and the features that say whether it states
# the asked thing at all (a high-ranking passage can still be about something else).
GATE_FEATURES = ("score", "focus", "context", "similarity", "passage_similarity", "number_about", "no_number", "rank")


def default_gate() -> dict:
    """The fitted answerability gate: {"weights": {feature: w}, "bias": b, "threshold": p}."""
    data = json.loads(WEIGHTS_FILE.read_text())
    return data.get("gate") or {"weights": {"score": 1.0}, "bias": -float(data.get("threshold", 0.0)), "threshold": 0.5}


# --- candidates --------------------------------------------------------------------------------------


def candidates(evidence: Evidence, max_pair_chars: int = 600) -> list[Candidate]:
    """The quotable pieces of one source, in order."""
    if evidence.block in NOT_QUOTED_BLOCKS:
        return []
    if evidence.block == "table":
        return _table_rows(evidence)
    singles = []
    for start, end in tx.sentence_spans(evidence.text):
        if _overlaps(start, end, evidence.unquotable):
            continue
        sentence = tx.squash(evidence.text[start:end]).lstrip("\u2022 ")
        if MIN_QUOTE_CHARS <= len(sentence) <= MAX_QUOTE_CHARS and _reads_as_prose(sentence):
            singles.append(Candidate(sentence, evidence.n, start, end))
    pairs = [
        Candidate(f"{a.text} {b.text}", evidence.n, a.start, b.end, pair=True)
        for a, b in zip(singles, singles[1:], strict=False)
        if len(a.text) + len(b.text) < max_pair_chars and not _overlaps(a.end, b.start, evidence.unquotable)
    ]
    return singles + pairs


def _reads_as_prose(sentence: str) -> bool:
    """Words, not a run of symbols: mostly letters and digits, and at least three words of letters.
    A sentence stating hyper-parameters ("We used Adam with β1 = 0.9, β2 = 0.98 and ϵ = 10−9.") is
    half digits and signs yet exactly what a question about them wants quoted; how much of a
    candidate is symbols is left to the scorer (`symbol_density`)."""
    dense = sum(c.isalnum() for c in sentence) > 0.5 * len(sentence)
    return dense and len(re.findall(r"[^\W\d_]{2,}", sentence)) >= 3


def _overlaps(start: int, end: int, spans: Sequence[tuple[int, int, str]]) -> bool:
    return any(s < end and start < e for s, e, _ in spans)


def _table_rows(evidence: Evidence) -> list[Candidate]:
    """A table chunk is its caption line, its header cells joined by ' | ', then one line per row
    (`ingest.tables`): each row is quoted with the table's label and header, so its numbers keep
    their meaning ("Table 3 (N | dmodel | ...): base | 6 | 512 ...")."""
    header = " | ".join(evidence.table_header)
    label = evidence.label or "Table"
    out, offset = [], 0
    for line in evidence.text.split("\n"):
        row = line.strip()
        is_head = not row or row == header or row.startswith(label) or (not out and ":" in row[:20])
        if not is_head and "|" in row:
            shown = f"{label} ({header}): {row}" if header else f"{label}: {row}"
            out.append(Candidate(shown, evidence.n, offset, offset + len(line), table_row=True))
        offset += len(line) + 1
    return out


# --- features ---------------------------------------------------------------------------------------


@dataclass
class Pool:
    """Everything quotes may come from for one question: the sources and their candidates."""

    evidence: dict[int, Evidence]
    items: list[Candidate]
    terms: list[set[str]]  # stemmed terms of each candidate
    idf: dict[str, float]

    @classmethod
    def build(cls, evidence: dict[int, Evidence], max_pair_chars: int = 600) -> Pool:
        items = [c for n in sorted(evidence) for c in candidates(evidence[n], max_pair_chars)]
        terms = [_candidate_terms(c.text) for c in items]
        return cls(evidence, items, terms, {})

    def paper_text(self, doc_id: str) -> str:
        """Every retrieved passage of one paper (with its header), as one text."""
        return "\n".join(e.full for e in self.evidence.values() if e.doc_id == doc_id)

    def idf_of(self, term: str) -> float:
        if term not in self.idf:
            df = sum(term in t for t in self.terms)
            self.idf[term] = math.log(1 + len(self.terms) / (1 + df))
        return self.idf[term]


@functools.lru_cache(maxsize=8192)
def _candidate_terms(text: str) -> frozenset[str]:
    return frozenset(tx.key_terms(text, min_len=3) | {tx.stem(e) for e in tx.entities(text)} | tx.stems(text))


@functools.lru_cache(maxsize=512)
def _header_terms(header: str) -> frozenset[str]:
    return frozenset(tx.stems(header) | {tx.stem(e) for e in tx.entities(header)})


def _weighted_share(terms: set[str], found: set[str] | frozenset[str], pool: Pool) -> float:
    if not terms:
        return 0.0
    total = sum(pool.idf_of(t) for t in terms)
    return sum(pool.idf_of(t) for t in terms if t in found) / total if total else 0.0


def _number_about(sentence: str, part: Part) -> float:
    """How many of the part's terms sit next to a number in the sentence, the focus counting twice
    (0 to 1): "h = 8 parallel attention layers, or heads" for "how many heads"."""
    tokens = number_term_tokens(sentence)
    best = 0
    for kind, value in tokens:
        if kind == "number":
            near = terms_near(tokens, value)
            best = max(best, len(near & part.terms) + len(near & part.focus))
    return min(best, NUMBER_ABOUT_SATURATES) / NUMBER_ABOUT_SATURATES


def cheap_features(part: Part, question: Question, pool: Pool, index: int) -> dict[str, float]:
    """Every feature but similarity, for candidate `index` of the pool as an answer to `part`."""
    candidate = pool.items[index]
    evidence = pool.evidence[candidate.n]
    text = candidate.text
    found = pool.terms[index] | _header_terms(evidence.header)
    passage = _candidate_terms(evidence.text) | _header_terms(evidence.header)
    tokens = text.split()
    numeric = sum(bool(_NUMBER_TOKEN.match(t)) for t in tokens) / max(1, len(tokens))
    symbols = sum(not (c.isalnum() or c.isspace() or c in ".,;:'\"()-") for c in text) / max(1, len(text))
    has_number = bool(tx.numbers(text))
    asked_names = {tx.fold(n) for n in part.names}
    return {
        "focus": _weighted_share(part.focus, found, pool),
        "focus_all": float(bool(part.focus) and part.focus <= found),
        "new_name": float(not part.wants_number and any(tx.fold(e) not in asked_names for e in tx.entities(text))),
        "context": _weighted_share(part.context, found, pool) if part.context else 0.0,
        "passage": _weighted_share(part.terms, passage, pool),
        "passage_similarity": float(evidence.cosine),
        "rank": 1.0 / (1 + evidence.rank) if evidence.rank else 0.0,
        "named_paper": float(
            bool(part.papers or question.papers) and evidence.doc_id in (part.papers or question.papers)
        ),
        "other_paper": float(
            bool(part.papers or question.papers) and evidence.doc_id not in (part.papers or question.papers)
        ),
        "number_about": _number_about(text, part) if part.wants_number else 0.0,
        "no_number": float(part.wants_number and not has_number),
        "numeric_density": 0.0 if candidate.table_row else numeric,
        "symbol_density": symbols,
        "cut_off": float(not tx.ends_cleanly(text) and not candidate.table_row),
        "question_mark": float(text.rstrip().endswith("?")),
        "heading": float(bool(_HEADING_START.match(text))),
        "short": float(len(text) < SHORT_CHARS),
        "long": float(len(text) > LONG_CHARS),
        "pair": float(candidate.pair),
        "reason": float(question.why and bool(_REASON.search(text))),
        "table_row": float(candidate.table_row),
    }


# --- the scorer -------------------------------------------------------------------------------------

Embed = Callable[[list[str]], np.ndarray]


class QuoteScorer:
    """Scores a pool's candidates as answers to each part of a question."""

    def __init__(
        self, weights: dict[str, float], embed: Embed | None = None, prefilter: int = 24, gate: dict | None = None
    ) -> None:
        unknown = set(weights) - set(FEATURE_NAMES) - {"bias"}
        if unknown:
            raise ValueError(f"unknown quote features in weights: {', '.join(sorted(unknown))}")
        self.weights = weights
        self.gate = gate or default_gate()
        self.embed = embed
        self.prefilter = prefilter
        self.reader = None  # a `cove.reader.rank.CalibratedReader`: it reranks and gates when set
        self._vectors: dict[str, np.ndarray] = {}

    def _vector_of(self, texts: list[str]) -> list[np.ndarray]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing and self.embed is not None:
            for text, vector in zip(missing, self.embed(missing), strict=True):
                self._vectors[text] = np.asarray(vector, dtype=np.float32)
            if len(self._vectors) > 4096:  # a long-lived engine: keep the cache bounded
                for key in list(self._vectors)[: len(self._vectors) - 4096]:
                    del self._vectors[key]
        return [self._vectors.get(t) for t in texts]

    def score(self, features: dict[str, float]) -> float:
        return self.weights.get("bias", 0.0) + sum(self.weights.get(k, 0.0) * v for k, v in features.items())

    def rank(self, part: Part, question: Question, pool: Pool, limit: int | None = None) -> list[Scored]:
        """The pool's candidates for `part`, best first, each with its features and score."""
        scored = [Scored(c, 0.0, cheap_features(part, question, pool, i)) for i, c in enumerate(pool.items)]
        for s in scored:
            s.score = self.score(s.features)
        scored.sort(key=lambda s: s.score, reverse=True)
        head = scored[: self.prefilter]
        if head and self.embed is not None:
            part_vector, *vectors = self._vector_of([part.text] + [s.candidate.text for s in head])
            for s, vector in zip(head, vectors, strict=True):
                s.features["similarity"] = float(vector @ part_vector) if vector is not None else 0.0
                s.score = self.score(s.features)
            head.sort(key=lambda s: s.score, reverse=True)
        for s in scored[self.prefilter :]:
            s.features["similarity"] = 0.0
        ranked = head + scored[self.prefilter :]
        return ranked[:limit] if limit else ranked

    def confidence(self, scored: Scored) -> float:
        """How likely the part is answered by this candidate at all (0 to 1): the reader's calibrated
        probability where it read the candidate, else the fitted gate."""
        if scored.reader is not None:
            return scored.reader
        values = {**scored.features, "score": scored.score}
        z = self.gate.get("bias", 0.0) + sum(w * values.get(k, 0.0) for k, w in self.gate["weights"].items())
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def answers(self, scored: Scored, threshold: float | None = None) -> bool:
        """Does the candidate clear the gate (`threshold` overrides the fitted one)? With a reader,
        its calibrated threshold decides (`reader.threshold` overrides that)."""
        if self.reader is not None and scored.reader is not None:
            return self.reader.answers(scored)
        return self.confidence(scored) >= (self.gate.get("threshold", 0.5) if threshold is None else threshold)

    def explain(self, scored: Scored) -> dict[str, float]:
        """Each feature's contribution to the score (weight x value), largest first."""
        parts = {k: round(self.weights.get(k, 0.0) * v, 4) for k, v in scored.features.items() if v and k != "reader"}
        if self.reader is not None and "reader" in scored.features:  # the trained reader's share of the ranking
            parts["reader"] = round(self.reader.calibration.reader_weight * scored.features["reader"], 4)
        if self.weights.get("bias"):
            parts["bias"] = round(self.weights["bias"], 4)
        return dict(sorted(parts.items(), key=lambda kv: -abs(kv[1])))


def missing_qualifiers(part: Part, evidence: Evidence, pool: Pool | None = None) -> set[str]:
    """Names and numbers the part asks about that neither the passage nor the other retrieved
    passages of its paper state: 'on ImageNet-21k', 'BetaNet-70B', 'a TPU v5'. A
    passage about the paper's own setting then answers a question about a setting it does not report."""
    text = pool.paper_text(evidence.doc_id) if pool is not None and evidence.doc_id else evidence.full
    haystack = tx.fold(text)
    missing = {name for name in part.names if not tx.has_entity(name, haystack)}
    stated = tx.numbers(text)
    asked = tx.numbers(tx.without_named_numbers(part.text))  # "GPT-2" names a model, not a number
    return missing | {n for n in asked if n not in stated}
