"""Stage 4, how the checked draft becomes the answer: `SingleShot` or `CoVe`, behind one `run`.

- `SingleShot` composes the answer from the question's parts, the first retrieval and the checked
  draft.
- `CoVe` is factored chain-of-verification (Dhuliawala et al., 2309.11495; helpers in `cove.verify`):
  it plans verification questions (one per part of the question, one per draft claim that states a
  number or a name, and optionally the model's own), answers each from its *own* retrieval, and
  revises: each part answered from its own evidence, the draft claims that independent evidence
  confirmed kept, contradictions corrected with the quote that contradicts them. Every draft
  sentence it does not keep, planned or not, is a `Correction` the user sees. Out of time after the
  draft, it answers from the checked draft as single-shot does, and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cove import text as tx
from cove.checks import SentenceCheck
from cove.compose import Change, Correction, PartAnswer, Sentence, best_for_part, compose
from cove.engine.compose import announce, compose_answer, pool_of
from cove.engine.context import AnswerDeadline, AskContext
from cove.engine.draft import excerpt, sources_block
from cove.engine.model import Draft, Outcome, Retrieval, VerificationRound, source_json, sources_json
from cove.engine.retrieve import make_evidence, search_more
from cove.events import PlanReady, Stage, StageStarted, Verified
from cove.verify import (
    ANSWERED,
    CLAIM,
    CONFIRMED,
    CONTRADICTED,
    MODEL,
    NOT_FOUND,
    PART,
    Verification,
    VerificationQuestion,
    judge_claim,
    model_reply_holds,
    parse_model_plan,
    part_question,
    plan,
)

if TYPE_CHECKING:
    from cove.engine.engine import AnswerEngine


class SingleShot:
    """One answer from the first retrieval and the checked draft."""

    name = "baseline"

    def run(self, engine: AnswerEngine, ctx: AskContext, retrieval: Retrieval, draft: Draft) -> Outcome:
        return Outcome(compose_answer(engine, ctx, retrieval, draft), retrieval)


class CoVe:
    """Chain-of-verification: plan, verify each question alone, revise from what was verified."""

    name = "cove"

    def run(self, engine: AnswerEngine, ctx: AskContext, retrieval: Retrieval, draft: Draft) -> Outcome:
        prompts = ["answer", "verify"] + (["plan"] if engine.settings.answer.cove.model_plan else [])
        try:
            verification = self.verify(engine, ctx, draft, retrieval)
            composition = self.revise(engine, ctx, draft, verification)
            return Outcome(composition, verification.pooled, [v.to_json() for v in verification.results], prompts)
        except AnswerDeadline as err:  # out of time: compose from the checked draft, as single-shot does
            composition = compose_answer(engine, ctx, retrieval, draft)
            late = Correction(Change.NOTE, reason=f"{err}: answered from the checked draft")
            composition.corrections.insert(0, late)
            return Outcome(composition, retrieval, [], ["answer"])

    # --- verify ---------------------------------------------------------------------------------------
    def verify(self, engine: AnswerEngine, ctx: AskContext, draft: Draft, retrieval: Retrieval) -> VerificationRound:
        """Every verification question answered from its own search (claims judged on their own hits)."""
        cfg, question = engine.settings.answer.cove, ctx.analysed
        ctx.emit(StageStarted(Stage.VERIFY, "planning verification questions"))
        claims = [c.sentence for c in draft.checks]
        questions = plan(question, claims, cfg.decompose, cfg.claims, cfg.max_questions)
        if cfg.model_plan:
            questions += self.model_plan(engine, ctx, draft, retrieval)
        ctx.emit(PlanReady(Stage.VERIFY, f"{len(questions)} verification questions", [q.text for q in questions]))
        pooled, results, corrections, confirmed = retrieval, [], [], []
        quotable = set(retrieval.evidence)  # what the revision may quote when evidence is not pooled
        found_hits: dict[int, list] = {}
        for vq in questions:
            ctx.meter.check_deadline()
            with ctx.timed(Stage.VERIFY):
                hits = search_more(engine, vq.text, cfg.sources)
            # Every search's passages are numbered into the pool, so a claim is judged on its own
            # hits whatever `pool_evidence` says; that switch decides what the revision may quote.
            pooled = pooled.with_hits(hits, lambda n, hit: make_evidence(engine, n, hit))
            if cfg.pool_evidence or vq.kind == PART:
                quotable |= {n for n in (pooled.number_of(h.id) for h in hits) if n is not None}
            found_hits[id(vq)] = hits
            if vq.kind == CLAIM:
                result, check = self.verify_claim(engine, vq, hits, pooled)
                if check is not None:
                    confirmed.append(check)
                if result.status == CONTRADICTED:
                    corrections.append(_contradiction(result, pooled))
                    if result.source is not None:  # the revision quotes it in place of the claim
                        quotable.add(result.source)
            else:
                result = Verification(vq.text, vq.kind, NOT_FOUND)
            results.append(result)
        parts = None
        if cfg.decompose and question.multi_part:
            parts = self.verify_parts(engine, ctx, questions, results, found_hits, pooled, retrieval)
        for result in results:
            ctx.emit(Verified(Stage.VERIFY, f"{result.status}: {result.question}", result.question, result.kind,
                              result.status, result.answer, source_json(pooled, result.source)))  # fmt: skip
        return VerificationRound(questions, results, parts, confirmed, corrections, pooled,
                                 None if cfg.pool_evidence else quotable)  # fmt: skip

    def verify_claim(self, engine: AnswerEngine, vq: VerificationQuestion, hits, pooled: Retrieval):
        """A draft claim against the passages its own search found: confirmed, contradicted or not."""
        evidence = [pooled.evidence[n] for n in (pooled.number_of(h.id) for h in hits) if n is not None]
        vector = engine.retriever.embedder.embed([vq.claim])[0]
        limits = engine.settings.answer
        status, n, sentence = judge_claim(vq.claim, evidence, vector, limits.support_similarity,
                                          limits.cove.contradiction_share)  # fmt: skip
        result = Verification(vq.text, CLAIM, status, sentence, n, claim=vq.claim, sources=sources_json(hits))
        check = SentenceCheck(vq.claim, [n], True, supported_by=n) if status == CONFIRMED else None
        return result, check

    def verify_parts(self, engine, ctx, questions, results, found_hits, pooled, first) -> list[PartAnswer]:
        """Each part answered from its own evidence (pooled with the first retrieval's if asked)."""
        cfg, question = engine.settings.answer.cove, ctx.analysed
        answers: list[PartAnswer] = []
        for index, part in enumerate(question.parts):
            vq_index = next((i for i, q in enumerate(questions) if q.kind == PART and q.part == index), None)
            own = found_hits.get(id(questions[vq_index]), []) if vq_index is not None else []
            pool = pool_of(engine, pooled, None if cfg.pool_evidence else _own_and_first(pooled, own, first))
            sub = part_question(question, index)
            limits = engine.compose_settings
            answer = best_for_part(part, sub, pool, engine.scorer, limits.threshold, limits.rank_limit)
            if answer.found and cfg.model_answers and not _held_by(first, answer):
                answer = self.model_part_answer(engine, ctx, answer, pooled)
            answers.append(answer)
            if vq_index is not None:
                result = results[vq_index]
                result.status = ANSWERED if answer.found else NOT_FOUND
                result.answer = answer.best.candidate.text if answer.found else answer.why_not
                result.source = answer.best.candidate.n if answer.found else None
                result.sources = sources_json(own)
        return answers

    def model_part_answer(self, engine: AnswerEngine, ctx: AskContext, answer: PartAnswer, pooled: Retrieval):
        """Ask the model the part's question from the evidence sentence's passage; keep its reply as
        the part's checked model sentence only if the checks support it against that sentence."""
        prompt, cfg = engine.prompts["verify"], engine.settings.answer.cove
        evidence = pooled.evidence[answer.best.candidate.n]
        messages = [
            {"role": "system", "content": prompt.render("system", evidence=excerpt(evidence.data, answer.part.text,
                                                                                      cfg.evidence_chars))},
            {"role": "user", "content": prompt.render("user", question=answer.part.text)},
        ]  # fmt: skip
        reply = ctx.chat(engine.model, Stage.VERIFY, messages, stream=False, max_tokens=cfg.part_answer_tokens)
        if model_reply_holds(reply, answer.best.candidate.text, evidence, prompt.marker("not_stated")):
            answer.model_reply = reply
        return answer

    def model_plan(self, engine: AnswerEngine, ctx: AskContext, draft: Draft, retrieval: Retrieval):
        """The model's own verification questions (kept where they pass the relevance filter)."""
        cfg, question = engine.settings.answer.cove, ctx.analysed.text
        messages = [
            {"role": "system", "content": engine.prompts["answer"].render("system",
                                                                          sources=sources_block(engine, retrieval))},
            {"role": "user", "content": question},
            {"role": "assistant", "content": draft.text},
            {"role": "user", "content": engine.prompts["plan"].render("user", max_questions=cfg.max_questions)},
        ]  # fmt: skip
        reply = ctx.chat(engine.model, Stage.VERIFY, messages, stream=False, max_tokens=cfg.plan_tokens)
        return [VerificationQuestion(q, MODEL) for q in parse_model_plan(reply, question, cfg.max_questions)]

    # --- revise -----------------------------------------------------------------------------------------
    def revise(self, engine: AnswerEngine, ctx: AskContext, draft: Draft, verification: VerificationRound):
        """The final answer, composed from verified facts: each part's answer from its own
        evidence, the draft claims that independent evidence confirmed, contradictions corrected."""
        with ctx.timed(Stage.COMPOSE):
            pooled = verification.pooled
            checked = list(verification.confirmed)
            if verification.parts is not None:
                for answer in verification.parts:  # the model's checked reply to a part, where it gave one
                    if answer.model_reply:
                        n = answer.best.candidate.n
                        checked.append(SentenceCheck(answer.model_reply, [n], True, supported_by=n))
            if not engine.settings.answer.cove.claims:  # the draft is then checked as single-shot checks it
                checked += draft.checks
            pool = pool_of(engine, pooled, verification.quotable)
            composition = compose(ctx.analysed, pool, engine.scorer, checked, engine.lead_settings(),
                                  verification.parts)  # fmt: skip
            dropped = _dropped_claims(verification) + _unplanned_sentences(draft, verification, engine)
            composition.corrections = verification.corrections + dropped + composition.corrections
            for fix in verification.corrections:  # the verifying quote answers in place of the wrong claim
                if fix.source is not None and not any(s.source == fix.source for s in composition.sentences):
                    composition.sentences.insert(0, Sentence(fix.replacement, fix.source, quoted=True))
        announce(ctx, composition)
        return composition


# --- helpers -------------------------------------------------------------------------------------------


def _own_and_first(pooled: Retrieval, own, first: Retrieval) -> set[int]:
    numbers = {pooled.number_of(h.id) for h in own} | set(first.evidence)
    return {n for n in numbers if n is not None}


def _held_by(first: Retrieval, answer: PartAnswer) -> bool:
    """Was the part's evidence already among the first retrieval's sources?"""
    return answer.best is not None and answer.best.candidate.n in first.evidence


def _contradiction(result: Verification, pooled: Retrieval) -> Correction:
    page = pooled.hits[result.source - 1].page if result.source else None
    return Correction(Change.CONTRADICTED, result.claim, result.answer, "independent evidence states otherwise",
                      result.source, page)  # fmt: skip


def _dropped_claims(verification: VerificationRound) -> list[Correction]:
    return [
        Correction(Change.REMOVED, r.claim, reason="no independent evidence confirms it")
        for r in verification.results
        if r.kind == CLAIM and r.status not in (CONFIRMED, CONTRADICTED)
    ]


def _unplanned_sentences(draft: Draft, verification: VerificationRound, engine: AnswerEngine) -> list[Correction]:
    """Draft sentences CoVe asked no question about (they state no number or name to check, or the
    plan was full) are not in its answer: each is said, not dropped silently."""
    if not engine.settings.answer.cove.claims:
        return []  # the draft was composed as single-shot composes it: its own corrections say what went
    planned = {tx.fold(q.claim) for q in verification.questions if q.kind == CLAIM and q.claim}
    return [
        Correction(
            Change.REMOVED,
            tx.strip_citations(check.sentence),
            reason="not verified: no verification question asked about it",
        )
        for check in draft.checks
        if tx.fold(tx.strip_citations(check.sentence)) not in planned
    ]


__all__ = ["CoVe", "SingleShot", "STRATEGIES"]


STRATEGIES = {strategy.name: strategy for strategy in (SingleShot(), CoVe())}
