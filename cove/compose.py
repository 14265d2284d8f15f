"""The answer policy: from a question's parts, the quotable evidence and the model's checked
sentences, compose what the user reads.

    composition = compose(question, pool, scorer, checked, settings)
    composition.text()          # '"... h = 8 parallel attention layers, or heads." [2]'

The policy, in order:
1. every part of the question gets the best candidate sentence for it (`cove.quotes`), if that
   sentence clears the fitted answerability gate and its paper states the names and numbers the
   part asks about; otherwise the part is *not found*;
2. no part found and no supported model sentence: the answer is a refusal;
3. the model's sentences that passed the checks (`cove.checks`) *lead* when they cover every found
   part (a capable model: a bigger GGUF, a server); otherwise the quotes lead and at most
   `max_generated_sentences` checked sentences that add something follow them (the bundled 135M
   model's sentences rarely carry the answer, its sources' words usually do);
4. a part not found gets an explicit line: "The library does not say …".

Everything the checks removed or corrected is kept as typed `Correction`s, so the app can show
"draft said 1 head; page 5 says 8" instead of silently swapping text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

from cove import text as tx
from cove.checks import SentenceCheck
from cove.question import Part, Question
from cove.quotes import Pool, QuoteScorer, Scored, missing_qualifiers


class Mode(StrEnum):
    """How an answer was written."""

    REFUSED = "refused"  # the library does not cover the question
    EXTRACTIVE = "extractive"  # the sources' sentences only
    QUOTED = "quoted"  # quotes first, then checked model sentences
    GENERATED = "generated"  # checked model sentences lead (a capable model)


class Change(StrEnum):
    REMOVED = "removed"  # a model sentence no source supports
    CORRECTED = "corrected"  # a model sentence replaced by the source sentence it misstated
    CONTRADICTED = "contradicted"  # independent evidence states another number/name for the same thing
    CONFIRMED = "confirmed"  # independent evidence confirms a draft sentence
    NOT_FOUND = "not_found"  # a part of the question with no evidence
    REFUSED = "refused"  # the whole question
    NOTE = "note"  # something the reader should know about how the answer was made


@dataclass
class Correction:
    """One thing the checks did to the model's text, with its reason and the source involved."""

    change: Change
    claim: str = ""  # what the model (or draft) said
    replacement: str = ""  # what the source says instead
    reason: str = ""
    source: int | None = None  # the source number of the replacement
    page: int | None = None

    def __str__(self) -> str:
        if self.change is Change.CONTRADICTED:
            where = f"page {self.page} says" if self.page else "the source says"
            return f"draft said \u201c{self.claim}\u201d; {where} \u201c{self.replacement}\u201d"
        if self.change is Change.NOTE:
            return self.reason
        if self.change in (Change.REFUSED, Change.NOT_FOUND):
            return f"{self.change.value}: {self.reason}"
        shown = f"{self.change.value} \u201c{self.claim}\u201d"
        return f"{shown} ({self.reason})" if self.reason else shown

    def to_json(self) -> dict:
        data = asdict(self)
        data["change"] = self.change.value
        data["text"] = str(self)
        return data


@dataclass
class PartAnswer:
    """What was found for one part of the question."""

    part: Part
    best: Scored | None  # the best candidate, found or not
    found: bool
    why_not: str = ""
    model_reply: str = ""  # the model's own answer to the part, kept only when the checks support it

    def to_json(self) -> dict:
        out = {"part": self.part.text, "found": self.found, "why_not": self.why_not}
        if self.best is not None:
            out |= {
                "quote": self.best.candidate.text,
                "source": self.best.candidate.n,
                "score": round(self.best.score, 4),
            }
        return out


@dataclass
class Sentence:
    """One sentence of the final answer: a quote, a checked model sentence, or a 'not found' line."""

    text: str
    source: int | None  # the source it cites (None: a line about what the library lacks)
    quoted: bool = False

    def render(self) -> str:
        if self.source is None:
            return self.text
        body = f"\u201c{self.text}\u201d" if self.quoted else self.text.rstrip(".")
        return f"{body} [{self.source}]" + ("" if self.quoted else ".")


@dataclass
class Composition:
    mode: Mode
    sentences: list[Sentence] = field(default_factory=list)
    parts: list[PartAnswer] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)

    def text(self) -> str:
        return " ".join(s.render() for s in self.sentences)

    @property
    def cited(self) -> list[tuple[str, int]]:
        """(sentence, source) pairs that carry a citation, in answer order."""
        return [(s.text, s.source) for s in self.sentences if s.source is not None]


@dataclass
class ComposeSettings:
    """The composer's knobs (from `AnswerSettings` / `QuoteSettings`)."""

    threshold: float | None = None  # the gate's probability threshold; None = the fitted one
    max_generated_sentences: int = 2
    generated_lead: str = "auto"  # "auto" | "always" | "never"
    rank_limit: int = 8  # `quotes.rank_limit`: candidates per part considered, best first
    cover_share: float = 0.5  # `answer.generated_cover_share`
    repeat_share: float = 0.6  # `answer.generated_repeat_share`
    # With a trained reader the evidence decides: no part found means no answer, whatever the model
    # wrote (its sentences pass the word checks on passages that do not state the asked thing).
    evidence_decides: bool = False


def answer_candidates(part: Part, question: Question, pool: Pool, scorer: QuoteScorer, limit: int) -> list[Scored]:
    """The candidates the composer considers for a part, best first, with their features: the
    scorer's top `limit`, and of a part about a named paper only that paper's. With a trained reader
    (`scorer.reader`), the scorer's top `reader.candidates` reranked by the reader. The one candidate
    path: the fitter (`evals/fit_quotes.py`) reads its features from here too."""
    reader = scorer.reader
    ranked = scorer.rank(part, question, pool, limit=max(limit, reader.candidates) if reader else limit)
    if part.papers:  # a part about a named paper is answered from that paper
        ranked = [s for s in ranked if pool.evidence[s.candidate.n].doc_id in part.papers]
    if reader is not None and ranked:
        ranked = reader.rerank(part.text, ranked, pool)
    return ranked[:limit]


def best_for_part(
    part: Part, question: Question, pool: Pool, scorer: QuoteScorer, threshold: float | None = None, limit: int = 8
) -> PartAnswer:
    """The best candidate for a part, and whether it is good enough to answer it."""
    ranked = answer_candidates(part, question, pool, scorer, limit)
    if part.papers and not ranked:
        return PartAnswer(part, None, False, "no passage of the paper it names")
    if not ranked:
        return PartAnswer(part, None, False, "no quotable sentence in the sources")
    for candidate in ranked:  # the best one whose passage states what the part names
        missing = missing_qualifiers(part, pool.evidence[candidate.candidate.n], pool)
        if not missing:
            if not scorer.answers(candidate, threshold):
                why = f"the best sentence does not answer it (confidence {scorer.confidence(candidate):.2f})"
                return PartAnswer(part, candidate, False, why)
            return PartAnswer(part, candidate, True)
    missing = missing_qualifiers(part, pool.evidence[ranked[0].candidate.n], pool)
    return PartAnswer(part, ranked[0], False, f"no source states {', '.join(sorted(missing))}")


def compose(
    question: Question,
    pool: Pool,
    scorer: QuoteScorer,
    checked: list[SentenceCheck],
    settings: ComposeSettings,
    answers: list[PartAnswer] | None = None,
) -> Composition:
    """The final answer (see the module docstring for the policy). `answers` may be given when the
    parts were answered elsewhere (chain-of-verification answers each from its own retrieval)."""
    answers = (
        answers
        if answers is not None
        else [best_for_part(p, question, pool, scorer, settings.threshold, settings.rank_limit) for p in question.parts]
    )
    supported = [c for c in checked if c.supported]
    corrections = [
        Correction(Change.REMOVED, tx.strip_citations(c.sentence), reason="; ".join(c.reasons)) for c in checked
        if not c.supported
    ]  # fmt: skip
    found = [a for a in answers if a.found]
    if not found and (not supported or settings.evidence_decides):
        why = "; ".join(a.why_not for a in answers if a.why_not) or "no supported answer in the sources"
        return Composition(Mode.REFUSED, [], answers, corrections + [Correction(Change.REFUSED, reason=why)])

    quotes = _quotes(found)
    generated = [Sentence(tx.strip_citations(c.sentence), c.supported_by) for c in supported]
    lead = _generated_leads(settings, found, generated, pool)
    if lead:
        uncovered = [a for a in found if not _covers(generated, a, pool, settings.cover_share)]
        sentences = generated + [q for q, a in zip(quotes, found, strict=True) if a in uncovered]
        mode = Mode.GENERATED
    else:
        extra = [g for g in generated if not _repeats(g.text, [q.text for q in quotes], settings.repeat_share)]
        if quotes:  # a model sentence next to quotes stays only if a quoted source backs it
            extra = [g for g in extra if g.source in {q.source for q in quotes}]
        extra = extra[: settings.max_generated_sentences]
        sentences = quotes + extra
        mode = Mode.QUOTED if quotes and extra else Mode.EXTRACTIVE if quotes else Mode.GENERATED
    missing = [a for a in answers if not a.found]
    if found and missing and len(answers) > 1:
        for a in missing:
            sentences.append(Sentence(not_found_line(a.part), None))
            corrections.append(Correction(Change.NOT_FOUND, reason=f"{a.part.text}: {a.why_not}"))
    return Composition(mode, _dedupe(sentences), answers, corrections)


def not_found_line(part: Part) -> str:
    return f"The library does not say: {part.text.rstrip('?. ')}?"


def _quotes(found: list[PartAnswer]) -> list[Sentence]:
    return [Sentence(a.best.candidate.text, a.best.candidate.n, quoted=True) for a in found]


def _dedupe(sentences: list[Sentence]) -> list[Sentence]:
    """One sentence may answer two parts: quote it once."""
    seen: set[tuple[str, int | None]] = set()
    out = []
    for s in sentences:
        key = (s.text, s.source)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _covers(generated: list[Sentence], answer: PartAnswer, pool: Pool | None = None, share: float = 0.5) -> bool:
    """Does a checked model sentence answer the part, *in agreement with its best evidence*? It
    must state the part's focus (and a number if one is asked), cite the passage the best quote is
    from, and name nothing and state no number that the quote (or its paper's title) does not: the
    checks only prove a sentence's words are in its source, so a small model can pass them with a
    wrong relation ("LLaMA normalises with SwiGLU"); agreeing with the quote rules that out."""
    part, best = answer.part, answer.best
    for sentence in generated:
        terms = tx.key_terms(sentence.text, min_len=3) | tx.stems(sentence.text)
        if tx.overlap_share(part.focus, terms) < share or (part.wants_number and not tx.numbers(sentence.text)):
            continue
        if best is None or pool is None:
            return True
        if sentence.source == best.candidate.n and _within(
            sentence.text, best.candidate.text, pool.evidence[sentence.source].header
        ):
            return True
    return False


def _within(sentence: str, quote: str, header: str) -> bool:
    """Names and numbers of `sentence` all stated by `quote` (names also by its paper's header)."""
    haystack = tx.fold(f"{header} {quote}")
    names_ok = all(tx.has_entity(e, haystack) for e in tx.entities(sentence))
    return names_ok and tx.numbers(sentence) <= tx.numbers(quote)


def _generated_leads(settings: ComposeSettings, found: list[PartAnswer], generated: list[Sentence], pool: Pool) -> bool:
    policy = settings.generated_lead
    if not generated or policy == "never":
        return False
    if policy == "always":
        return True
    return all(_covers(generated, a, pool, settings.cover_share) for a in found) if found else True


def _repeats(sentence: str, quotes: list[str], share: float = 0.6) -> bool:
    """Does a generated sentence only restate a quote (its terms and numbers are all there)?"""
    terms, nums = tx.key_terms(sentence), tx.numbers(sentence)
    for quoted in quotes:
        q_terms = tx.key_terms(quoted)
        if nums <= tx.numbers(quoted) and (not terms or len(terms & q_terms) / len(terms) >= share):
            return True
    return False
