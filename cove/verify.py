"""Chain-of-verification's pieces: planning verification questions and judging answers against evidence.

The strategy that runs them is `cove.engine.strategies.CoVe`; this module holds what it is built
from, each a plain function testable alone.

Dhuliawala et al. (2309.11495) draft an answer, plan questions that would check it, answer each
question *independently* (the "factored" variant: without the draft in context, so its mistakes
cannot leak in), then revise. Cove does the same with one change the small model needs: a
verification answer is not believed, it is *checked* against evidence.

- **Plan** (`plan`): one question per part of the user's question (each asked fact, each named
  paper), and one per claim of the draft that states a number or a name. Deterministic; the model's
  own plan can be added (`answer.cove.model_plan`) where it passes a relevance filter.
- **Execute** (`CoVe.verify`): each question gets its own retrieval. A part's answer is
  the composer's best checked sentence from that evidence; a claim is confirmed when the evidence
  supports it, *contradicted* when the evidence states another number for the same thing, and
  unconfirmed otherwise. The model may answer a part from its evidence too (one short reply, kept
  only if the checks support it against the best sentence); that is skipped where the first
  retrieval already held the evidence, to keep CoVe's cost near single-shot's.
- **Revise** (`CoVe.revise`, with `cove.compose`): the answer is written from the verified facts.

Every step is switchable (`answer.cove.*`); with all switches off the pipeline is single-shot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cove import text as tx
from cove.checks import Evidence, check_sentence, contradicts, support_problems
from cove.question import Part, Question

PART, CLAIM, MODEL = "part", "claim", "model"
CONFIRMED, CONTRADICTED, UNCONFIRMED = "confirmed", "contradicted", "unconfirmed"
ANSWERED, NOT_FOUND = "answered", "not_found"


@dataclass
class VerificationQuestion:
    """One question to check, alone: a part of the user's question, or a claim of the draft."""

    text: str  # what is searched for and asked
    kind: str  # PART | CLAIM | MODEL
    part: int | None = None  # index of the question part it verifies
    claim: str = ""  # the draft sentence it checks (claims)


@dataclass
class Verification:
    """The answer to one verification question, as checked against its own evidence."""

    question: str
    kind: str
    status: str  # confirmed | contradicted | unconfirmed (claims); answered | not_found (parts)
    answer: str = ""  # the evidence sentence (or the model's checked reply)
    source: int | None = None  # the evidence number in the answer's pooled sources
    claim: str = ""
    model_reply: str = ""  # what the model replied, when it was asked
    sources: list[dict] = field(default_factory=list)  # title, source, page of the passages it searched

    @property
    def supported(self) -> bool:
        return self.status in (CONFIRMED, ANSWERED)

    def to_json(self) -> dict:
        return {
            "question": self.question, "kind": self.kind, "status": self.status, "answer": self.answer,
            "supported": self.supported, "source": self.source, "claim": self.claim, "model_reply": self.model_reply,
            "sources": self.sources,
        }  # fmt: skip


_CLAIM_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*%?")


def plan(
    question: Question, draft_claims: list[str], decompose: bool, claims: bool, limit: int
) -> list[VerificationQuestion]:
    """Verification questions: the question's parts first (they are what the answer must cover),
    then the draft's checkable claims (a number or a name), at most `limit`."""
    planned: list[VerificationQuestion] = []
    if decompose and len(question.parts) > 1:
        planned += [VerificationQuestion(p.text, PART, i) for i, p in enumerate(question.parts)]
    if claims:
        for claim in draft_claims:
            bare = tx.strip_citations(claim)
            if tx.numbers(bare) or tx.entities(bare):
                # Searching for the claim without its numbers finds what the sources state instead.
                planned.append(VerificationQuestion(_CLAIM_NUMBER.sub(" ", bare).strip(), CLAIM, claim=bare))
    seen: set[str] = set()
    unique = []
    for vq in planned:
        key = tx.fold(vq.text)
        if key and key not in seen:
            seen.add(key)
            unique.append(vq)
    return unique[:limit]


def parse_model_plan(reply: str, question: str, limit: int) -> list[str]:
    """Questions from the model's plan, one per line, kept only if they are about the question
    (share a key term with it) and are real questions."""
    terms = tx.key_terms(question)
    found = []
    for line in reply.splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*\u2022]|Q\d*[:.])\s*", "", line).strip()
        if len(line) > 8 and line.endswith("?") and line not in found and (not terms or terms & tx.key_terms(line)):
            found.append(line)
    return found[:limit]


def judge_claim(
    claim: str, evidence: list[Evidence], sentence_vector, min_similarity: float, contradiction_share: float = 0.5
):
    """(status, evidence number, the evidence sentence) for a draft claim against independent evidence."""
    from cove.checks import best_matching_sentence, contradicting_sentence

    sources = {e.n: e for e in evidence}
    check = check_sentence(claim, sources, sentence_vector, min_similarity)
    best = best_matching_sentence(claim, evidence, ignore_numbers=True)
    if check.supported:
        n = check.supported_by
        sentence = best_matching_sentence(claim, [sources[n]])
        return CONFIRMED, n, sentence[0] if sentence else ""
    if best is not None and best[2] >= contradiction_share and contradicts(claim, best[0]):
        return CONTRADICTED, best[1], best[0]
    # The sentence about the same count need not be the closest.
    other = contradicting_sentence(claim, evidence, contradiction_share)
    if other is not None:
        return CONTRADICTED, other[1], other[0]
    return UNCONFIRMED, None, ""


def model_reply_holds(reply: str, sentence: str, evidence: Evidence, not_stated: str) -> bool:
    """Is the model's short reply backed by the evidence sentence it was meant to find?"""
    if not reply or tx.fold(not_stated).rstrip(".") in tx.fold(reply):
        return False
    probe = Evidence(evidence.n, sentence, evidence.header)
    return not support_problems(reply, probe, min_term_share=0.5)


def part_question(question: Question, index: int) -> Question:
    """The user's question reduced to one part, for answering that part from its own evidence."""
    part: Part = question.parts[index]
    return Question(part.text, [part], question.why, part.papers or question.papers)
