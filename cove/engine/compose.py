"""Stage 5, compose: the answer policy (`cove.compose`) over a pool of checked sentences, and the
answer's JSON: its text, its citations (the quoted sentence of each cited source), its parts and
the typed corrections of what the checks changed. A refusal lists the closest sources by title.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cove import text as tx
from cove.checks import best_matching_sentence
from cove.compose import Change, Composition, Correction, Mode, compose, not_found_line
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
    answer.closest = closest_passages(composition, final)
    if answer.refused and composition.parts:  # the evidence was read and does not state it
        answer.answer = " ".join(not_found_line(p.part) for p in composition.parts)
        if answer.closest:
            shown = "; ".join(f"\u201c{c['quote']}\u201d ({c['title']} p.{c['page']})" for c in answer.closest)
            answer.answer += f" Closest passages (not an answer): {shown}."
        return
    if answer.refused:  # nothing in the library is about it
        closest = ", ".join(f"{h.title or h.source} p.{h.page}" for h in first.hits[:3])
        answer.answer = REFUSAL + (f" Closest sources: {closest}." if closest else "")
        return
    answer.answer = composition.text()
    answer.citations = citations(engine, composition, final)


def closest_passages(composition: Composition, retrieval: Retrieval, quote_chars: int = 240) -> list[dict]:
    """For each part not found, its best candidate sentence and where it is: what the library says
    nearest to the asked thing, for the reader to judge (labelled as such, never cited as the answer)."""
    out = []
    for part in composition.parts:
        best = part.best
        if part.found or best is None or best.candidate.n > len(retrieval.hits):
            continue
        hit = retrieval.hits[best.candidate.n - 1]
        out.append({"part": part.part.text, "quote": tx.shorten(best.candidate.text, quote_chars),
                    "title": hit.title or hit.source, "source": hit.source, "page": hit.page,
                    "n": best.candidate.n})  # fmt: skip
    return out


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
