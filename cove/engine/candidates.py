"""The candidate sentences the engine scores for each part of a question, as one path for answering
and for fitting the quote scorer (`evals/fit_quotes.py`), so the weights are fitted on exactly the
features the runtime computes.

For every part: the first retrieval's pool (what single-shot, and CoVe before it verifies, answer
from), and for a question of several parts each part's own search joined to the first retrieval
(what CoVe's part verification searches for). A pool's candidates for a part are
`cove.compose.answer_candidates`: the scorer's top `quotes.rank_limit` (with the MiniLM similarity
for the `quotes.prefilter` best), only the named paper's for a part that names one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cove.compose import answer_candidates
from cove.engine.compose import pool_of
from cove.engine.coverage import coverage
from cove.engine.model import Retrieval
from cove.engine.retrieve import make_evidence, retrieve, search_more
from cove.question import Part, Question
from cove.quotes import Pool, Scored
from cove.verify import part_question

if TYPE_CHECKING:
    from cove.engine.engine import AnswerEngine


@dataclass
class PartPool:
    """One part of a question and the pool it is answered from."""

    question: Question  # the question the part is scored within (a part's own sub-question for its own search)
    part: Part
    pool: Pool
    primary: bool  # the first retrieval's pool (not a part's own search)


def candidate_pools(engine: AnswerEngine, question: str, history: list[dict[str, str]] | None = None) -> list[PartPool]:
    """Every (part, pool) the engine answers `question`'s parts from, first retrieval first."""
    ctx = engine.context(question, history)
    retrieval = retrieve(engine, ctx)
    analysed = coverage(engine, ctx, retrieval).question
    first = pool_of(engine, retrieval)
    pools = [PartPool(analysed, part, first, True) for part in analysed.parts]
    if analysed.multi_part:  # chain-of-verification answers each part from its own search too
        for index, part in enumerate(analysed.parts):
            own = part_retrieval(engine, retrieval, part)
            pools.append(PartPool(part_question(analysed, index), part, pool_of(engine, own), False))
    return pools


def part_retrieval(engine: AnswerEngine, retrieval: Retrieval, part: Part) -> Retrieval:
    """The first retrieval joined by the part's own search (`answer.cove.sources` passages)."""
    hits = search_more(engine, part.text, engine.settings.answer.cove.sources)
    return retrieval.with_hits(hits, lambda n, hit: make_evidence(engine, n, hit))


def scored_candidates(engine: AnswerEngine, entry: PartPool) -> list[Scored]:
    """The candidates the composer considers for the part, best first, with their features."""
    return answer_candidates(entry.part, entry.question, entry.pool, engine.scorer, engine.compose_settings.rank_limit)
