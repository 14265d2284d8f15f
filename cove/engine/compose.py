"""Stage 5, compose: the answer policy (`cove.compose`) over a pool of checked sentences, and the
answer's JSON: its text, its citations (the quoted sentence of each cited source), its parts and
the typed corrections of what the checks changed. A refusal lists the closest sources by title.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cove import text as tx
from cove.checks import best_matching_sentence
from cove.compose import Change, Composition, Correction, Mode, compose
from cove.engine.context import AskContext
from cove.engine.model import REFUSAL, Answer, Citation, Draft, Outcome, Retrieval, citation_url
from cove.events import Composed, Stage
from cove.quotes import Pool

if TYPE_CHECKING:
    from cove.engine.engine import AnswerEngine


def compose_answer(engine: AnswerEngine, ctx: AskContext, retrieval: Retrieval, draft: Draft) -> Composition:
    """Single-shot's answer: the question's parts and the checked draft over the first retrieval."""
    with ctx.timed(Stage.COMPOSE):
        composition = compose(ctx.analysed, pool_of(engine, retrieval), engine.scorer, draft.checks,
                              engine.lead_settings())  # fmt: skip
    announce(ctx, composition)
    return composition


def announce(ctx: AskContext, composition: Composition) -> None:
    ctx.emit(Composed(Stage.COMPOSE, composition.mode.value, composition.text(), composition.mode.value,
                      [str(c) for c in composition.corrections]))  # fmt: skip


def pool_of(engine: AnswerEngine, retrieval: Retrieval, only: set[int] | None = None) -> Pool:
    """The candidate sentences of a retrieval's sources (of the numbers in `only`, when given)."""
    evidence = retrieval.evidence if only is None else {n: e for n, e in retrieval.evidence.items() if n in only}
    return Pool.build(evidence, engine.settings.quotes.max_pair_chars)


def refusal(reason: str, retrieval: Retrieval) -> Outcome:
    """The outcome of a question the library does not cover."""
    return Outcome(Composition(Mode.REFUSED, corrections=[Correction(Change.REFUSED, reason=reason)]), retrieval)


def fill(engine: AnswerEngine, answer: Answer, outcome: Outcome, first: Retrieval, question=None) -> None:
    """The answer JSON from the outcome: text, mode, parts, corrections (the parts beyond
    `answer.max_parts` among them) and citations."""
    composition, final = outcome.composition, outcome.final
    answer.mode = composition.mode.value
    answer.refused = composition.mode.value == "refused"
    dropped = [Correction(Change.NOTE, part, reason=f"not answered: a question's first {len(question.parts)} parts "
                          "are (answer.max_parts)") for part in (question.dropped if question else [])]  # fmt: skip
    answer.corrections = [c.to_json() for c in dropped + composition.corrections]
    answer.parts = [p.to_json() for p in composition.parts]
    if answer.refused:
        closest = ", ".join(f"{h.title or h.source} p.{h.page}" for h in first.hits[:3])
        answer.answer = REFUSAL + (f" Closest sources: {closest}." if closest else "")
        return
    answer.answer = composition.text()
    answer.citations = citations(engine, composition, final)


def citations(engine: AnswerEngine, composition: Composition, retrieval: Retrieval) -> list[Citation]:
    """One citation per cited source: the sentence quoted from it (or the best match of the
    sentence that cites it), its page and its link."""
    limits = engine.settings.answer
    out: list[Citation] = []
    for sentence, n in composition.cited:
        if any(c.n == n for c in out) or n not in retrieval.evidence:
            continue
        hit = retrieval.hits[n - 1]
        quoted = next((s for s in composition.sentences if s.source == n and s.quoted), None)
        if quoted is not None:
            quote_text = quoted.text
        else:
            best = best_matching_sentence(sentence, [retrieval.evidence[n]])
            quote_text = best[0] if best else tx.shorten(tx.squash(hit.text), limits.fallback_quote_chars)
        out.append(
            Citation(n=n, title=hit.title, source=hit.source, doc_id=hit.doc_id, page=hit.page,
                     quote=tx.shorten(quote_text, limits.quote_chars), url=citation_url(hit.metadata), chunk_id=hit.id,
                     citekey=engine.retriever.catalog.citekey(hit.doc_id))
        )  # fmt: skip
    return out
