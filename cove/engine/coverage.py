"""Stage 2, coverage: does the library say anything about this question?

The question is cut into its parts (`cove.question.analyze`). It is refused here when nothing was
retrieved, when the best passage is far in meaning and no paper it names was found, or when a name
it uses occurs in no retrieved passage (a question about a paper the library lacks retrieves
similar-sounding passages of others). A question of several parts is kept when some part is covered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cove import text as tx
from cove.engine.context import AskContext
from cove.engine.model import Coverage, Retrieval
from cove.events import CoverageDecided, Stage
from cove.question import analyze

if TYPE_CHECKING:
    from cove.engine.engine import AnswerEngine


def coverage(engine: AnswerEngine, ctx: AskContext, retrieval: Retrieval) -> Coverage:
    """Covered or not, with the reason; sets `ctx.analysed` to the question's parts."""
    question = analyze(retrieval.query, engine.retriever.named_documents, engine.settings.answer.max_parts)
    ctx.analysed = question
    hits = retrieval.hits
    reason = ""
    if not hits:
        reason = "the library is empty or nothing matched"
    elif max(h.cosine for h in hits) < engine.settings.answer.min_relevance and not named_match(engine, retrieval):
        reason = "no relevant passage in the library"
    else:
        haystack = tx.fold(" ".join(e.full for e in retrieval.evidence.values()))
        missing = sorted(e for e in tx.entities(retrieval.query) if not tx.has_entity(e, haystack))
        # A question of several parts may still be answered in part: its parts decide.
        some_part = any(not (p.names & set(missing)) for p in question.parts) if question.multi_part else False
        if missing and not some_part:
            reason = f"no retrieved passage mentions {', '.join(missing)}"
    result = Coverage(not reason, question, reason)
    ctx.emit(CoverageDecided(Stage.COVERAGE, reason or f"{len(question.parts)} part(s)", result.covered,
                             [p.text for p in question.parts]))  # fmt: skip
    return result


def named_match(engine: AnswerEngine, retrieval: Retrieval) -> bool:
    """On topic although MiniLM scores every passage low: the question names a paper whose
    passages were retrieved, or BM25's best passage has nearly all its content words
    (`answer.named_match_share` of at least `answer.named_match_min_terms`)."""
    if retrieval.named & {h.doc_id for h in retrieval.hits}:
        return True
    limits = engine.settings.answer
    terms = tx.key_terms(retrieval.query)
    best = next((h for h in retrieval.hits if h.lexical_rank == 1), None)
    if best is None or len(terms) < limits.named_match_min_terms:
        return False
    return len(terms & tx.key_terms(best.text)) >= limits.named_match_share * len(terms)
