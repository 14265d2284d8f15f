"""The answer policy and chain-of-verification with a *scripted* model over a real library.

The model is scripted so each path of the policy is tested deterministically (a model that is
right, one that invents a number, one that states a wrong number); retrieval, the checks, the quote
scorer and the store are the real ones. The real bundled model is tested end to end in test_answer.py.
"""

from __future__ import annotations

import re

import pytest

from cove.engine import AnswerEngine
from cove.llm import ChatModel, Completion
from cove.settings import with_overrides

pytestmark = pytest.mark.slow


class ScriptedModel(ChatModel):
    """Replies with `draft(sources_text)` to the answer prompt and `verify(question)` to verify prompts."""

    name = "scripted"
    parameters: int | None = None  # unknown, as for a server's model: taken as capable

    def __init__(self, draft, verify=lambda question, evidence: "Not stated.") -> None:
        self.draft, self.verify, self.calls = draft, verify, []

    def chat(self, messages, max_tokens=256, stop=None, on_token=None, on_wait=None) -> Completion:
        system, user = messages[0]["content"], messages[-1]["content"]
        self.calls.append(user)
        text = self.draft(system) if "numbered sources" in system else self.verify(user, system)
        for piece in text.split(" "):
            if on_token:
                on_token(piece + " ")
        return Completion(text, prefill_tokens=len(system) // 4, decode_tokens=len(text) // 4,
                          prompt_tokens=len(system) // 4, seconds=0.0, finish_reason="stop")  # fmt: skip


def source_number(sources: str, needle: str) -> int:
    """The [n] of the numbered source that contains `needle` (what a capable model would cite)."""
    for line in sources.splitlines():
        found = re.match(r"\[(\d+)\]", line)
        if found and needle in line:
            return int(found.group(1))
    return 1


def engine_with(small_library, model, **answer) -> AnswerEngine:
    settings = with_overrides(small_library, {"answer": answer}) if answer else small_library
    return AnswerEngine(settings, model=model)


HEADS = "How many attention heads does the base Transformer use?"


def test_aliases_name_papers_from_their_own_text(engine):
    named = engine.retriever.named_documents
    assert named("How many attention heads does the Transformer use?") == {"arxiv-1706.03762"}
    assert named("What rank does LoRA use on GPT-3?") == {"arxiv-2106.09685"}
    assert "the Transformer" in engine.retriever.aliases("arxiv-1706.03762")


def test_two_part_question_gets_a_cited_sentence_per_part(small_library):
    model = ScriptedModel(lambda sources: "The sources do not say.")
    answer = engine_with(small_library, model).ask(
        "Which optimizer trained the Transformer, and how many warmup steps did it use?", pipeline="baseline"
    )
    assert [p["found"] for p in answer.parts] == [True, True], answer.parts
    assert "Adam" in answer.answer and "4000" in answer.answer, answer.answer
    assert answer.citations and all(f"[{c.n}]" in answer.answer for c in answer.citations)


def test_a_part_without_evidence_gets_an_explicit_line(small_library):
    model = ScriptedModel(lambda sources: "The sources do not say.")
    answer = engine_with(small_library, model).ask(
        "How many attention heads does the base Transformer use, "
        "and how many tonnes of carbon did training GPT-4 emit?",
        pipeline="baseline",
    )
    assert not answer.refused
    assert [p["found"] for p in answer.parts] == [True, False], answer.parts
    assert "8" in answer.answer and "The library does not say" in answer.answer


def test_a_capable_models_checked_sentences_lead(small_library):
    def capable(sources):
        n = source_number(sources, "h = 8")
        return f"The base Transformer employs h = 8 parallel attention layers, or heads [{n}]."

    answer = engine_with(small_library, ScriptedModel(capable)).ask(HEADS, pipeline="baseline")
    assert answer.mode == "generated", answer.to_json()
    assert answer.answer.startswith("The base Transformer employs h = 8"), answer.answer

    # The same sentence from a model the size of the bundled one: the quote leads, the sentence backs it.
    small = ScriptedModel(capable)
    small.parameters = 135_000_000
    answer = engine_with(small_library, small).ask(HEADS, pipeline="baseline")
    assert answer.mode in ("quoted", "extractive") and answer.answer.startswith("\u201c"), answer.to_json()
    assert "h = 8" in answer.answer


def test_an_unsupported_generated_sentence_is_dropped_and_reported(small_library):
    answer = engine_with(
        small_library, ScriptedModel(lambda s: "The base Transformer uses 64 attention heads [1].")
    ).ask(HEADS, pipeline="baseline")
    assert "64 attention heads" not in answer.answer and "h = 8" in answer.answer
    removed = [c for c in answer.corrections if c["change"] == "removed"]
    assert removed and "64" in removed[0]["claim"]


# --- chain-of-verification (issue 15) ------------------------------------------------------------


@pytest.mark.parametrize("pool_evidence", [True, False])
def test_cove_corrects_a_contradicted_draft_number_and_cites_the_evidence(small_library, pool_evidence):
    """Pooled or not, the quote that corrects a claim is one the answer may quote and cites."""
    model = ScriptedModel(lambda sources: "The base Transformer uses 1 attention head [2].")
    answer = engine_with(small_library, model, cove={"pool_evidence": pool_evidence}).ask(HEADS, pipeline="cove")
    fixes = [c for c in answer.corrections if c["change"] == "contradicted"]
    assert fixes, answer.corrections
    assert "1 attention head" in fixes[0]["claim"] and "h = 8" in fixes[0]["replacement"]
    assert "draft said" in fixes[0]["text"] and f"page {fixes[0]['page']}" in fixes[0]["text"]
    cited = {c.n: c for c in answer.citations}
    assert fixes[0]["source"] in cited and cited[fixes[0]["source"]].page == 5
    assert "1 attention head" not in answer.answer


def test_cove_keeps_a_confirmed_sentence_and_drops_an_unconfirmed_one(small_library):
    def draft(sources):
        n = source_number(sources, "h = 8")
        return (
            f"The base Transformer employs h = 8 parallel attention layers, or heads [{n}]. "
            "It was trained on 42 TPUs for 9 weeks [1]."
        )

    answer = engine_with(small_library, ScriptedModel(draft)).ask(HEADS, pipeline="cove")
    statuses = {v["claim"][:20]: v["status"] for v in answer.verification if v["kind"] == "claim"}
    assert "confirmed" in statuses.values() and "unconfirmed" in statuses.values(), statuses
    assert "h = 8 parallel attention layers" in answer.answer
    assert "42 TPUs" not in answer.answer
    assert any(c["change"] == "removed" and "42 TPUs" in c["claim"] for c in answer.corrections)


def test_cove_verifies_each_part_of_a_two_part_question_from_its_own_search(small_library):
    model = ScriptedModel(lambda sources: "The sources do not say.")
    answer = engine_with(small_library, model).ask(
        "Which optimizer trained the Transformer, and what rank r does LoRA use?", pipeline="cove"
    )
    part_checks = [v for v in answer.verification if v["kind"] == "part"]
    assert len(part_checks) == 2 and all(v["sources"] for v in part_checks)
    assert {s["doc_id"] for s in part_checks[1]["sources"]} == {"arxiv-2106.09685"}
    assert "Adam" in answer.answer


def test_cove_with_every_switch_off_is_single_shot(small_library):
    def draft(sources):
        return "The base Transformer uses 1 attention head [2]."

    off = {"cove": {"decompose": False, "claims": False, "pool_evidence": False, "model_answers": False}}
    single = engine_with(small_library, ScriptedModel(draft)).ask(HEADS, pipeline="baseline")
    cove_off = engine_with(small_library, ScriptedModel(draft), **off).ask(HEADS, pipeline="cove")
    assert cove_off.answer == single.answer and cove_off.verification == []


# --- the engine's stages (issue 21) ------------------------------------------------------------------


def test_cove_says_what_it_drops_of_the_draft_planned_or_not(small_library):
    """A draft sentence with no number or name is never planned: it used to vanish from CoVe's
    answer without a trace. Every draft sentence CoVe does not keep is now a visible correction."""

    def draft(sources: str) -> str:
        n = source_number(sources, "h = 8")
        return f"The base model uses 8 parallel attention heads [{n}]. It works remarkably well in practice [{n}]."

    answer = engine_with(small_library, ScriptedModel(draft)).ask(HEADS, pipeline="cove")
    kept = answer.answer
    removed = [c for c in answer.corrections if c["change"] == "removed"]
    assert "remarkably well" not in kept
    assert any("remarkably well" in c["claim"] and "no verification question" in c["reason"] for c in removed), (
        answer.corrections
    )
    for check in [s for s in ("8 parallel attention heads", "remarkably well") if s not in kept]:
        assert any(check in c["claim"] for c in answer.corrections), (check, answer.corrections)


def test_parts_beyond_max_parts_are_listed_not_dropped_silently(small_library):
    from cove.question import analyze

    question = "What are the learning rate, batch size, warmup, dropout, label smoothing and beam size of the model?"
    asked = len(analyze(question, max_parts=12).parts)
    assert asked > 2
    answer = engine_with(small_library, ScriptedModel(lambda s: "Not stated."), max_parts=2).ask(
        question, pipeline="baseline"
    )
    notes = [c for c in answer.corrections if c["change"] == "note" and "answer.max_parts" in c["reason"]]
    assert len(answer.parts) <= 2 and len(notes) == asked - 2, (answer.parts, answer.corrections)


def test_each_stage_runs_alone(small_library):
    """retrieve -> coverage -> draft -> strategy -> compose, called one by one as `ask()` calls them."""
    from cove.engine.compose import fill
    from cove.engine.coverage import coverage
    from cove.engine.draft import draft
    from cove.engine.model import Answer
    from cove.engine.retrieve import retrieve
    from cove.engine.strategies import STRATEGIES

    def draft_text(sources: str) -> str:
        return f"We employ h = 8 parallel attention layers, or heads [{source_number(sources, 'h = 8')}]."

    engine = engine_with(small_library, ScriptedModel(draft_text))
    ctx = engine.context(HEADS, pipeline="baseline")
    retrieval = retrieve(engine, ctx)
    assert retrieval.hits and set(retrieval.evidence) == set(range(1, len(retrieval.hits) + 1))
    covered = coverage(engine, ctx, retrieval)
    assert covered.covered and ctx.analysed is covered.question
    checked = draft(engine, ctx, retrieval)
    assert checked.checks and checked.checks[0].supported
    outcome = STRATEGIES["baseline"].run(engine, ctx, retrieval, checked)
    answer = Answer(id="", question=HEADS, answer="", refused=False, pipeline="baseline")
    fill(engine, answer, outcome, retrieval, ctx.analysed)
    assert not answer.refused and answer.citations and "8" in answer.answer
    with pytest.raises(ValueError, match="pipeline must be one of"):
        engine.context(HEADS, pipeline="no-such-pipeline")
