"""Stage 3, draft: the model answers from the numbered sources, and every sentence it writes is
checked against the sources it cites (`cove.checks`). The draft streams as a draft, never as the
answer; before it starts, the best checked sentences of the first retrieval go out (`FirstQuotes`).

The model reads each source as an excerpt of `answer.source_chars` characters (prompt tokens are
most of an answer's time); the checks read the whole passage.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING

from cove import text as tx
from cove.checks import Evidence, SentenceCheck, check_sentence, without_instructions
from cove.compose import Composition, compose
from cove.engine.compose import citations, pool_of
from cove.engine.context import AskContext
from cove.engine.model import Draft, Retrieval
from cove.events import DraftReady, FirstQuotes, Stage, StageStarted

if TYPE_CHECKING:
    from cove.engine.engine import AnswerEngine


def first_quotes(engine: AnswerEngine, ctx: AskContext, retrieval: Retrieval) -> Composition:
    """The best checked sentences of the first retrieval, out before the model starts."""
    with ctx.timed(Stage.COMPOSE):
        early = compose(ctx.analysed, pool_of(engine, retrieval), engine.scorer, [], engine.compose_settings)
    if early.sentences:
        cited = [asdict(c) for c in citations(engine, early, retrieval)]
        ctx.emit(FirstQuotes(Stage.COMPOSE, "best checked sentences so far", early.text(), cited))
    return early


def draft(engine: AnswerEngine, ctx: AskContext, retrieval: Retrieval) -> Draft:
    """The model's answer from the sources, each sentence checked."""
    ctx.emit(StageStarted(Stage.DRAFT, "the model drafts an answer from the sources (it is checked next)"))
    prompt = engine.prompts["answer"]
    history = history_text(ctx.history, engine.settings.answer.draft_history_turns,
                           engine.settings.answer.draft_history_chars)  # fmt: skip
    messages = [
        {"role": "system", "content": prompt.render("system", sources=sources_block(engine, retrieval))},
        {"role": "user", "content": prompt.render("user", history=history, question=ctx.question)},
    ]
    limit = engine.settings.answer.max_answer_tokens
    text = ctx.chat(engine.model, Stage.DRAFT, messages, stream=True, max_tokens=limit)
    with ctx.timed(Stage.DRAFT):
        checks = check_text(engine, text, retrieval.evidence, prompt.marker("not_stated"))
    supported = sum(c.supported for c in checks)
    ctx.emit(DraftReady(Stage.DRAFT, f"{supported} of {len(checks)} draft sentences supported", text, supported,
                        len(checks)))  # fmt: skip
    return Draft(text, checks)


def check_text(
    engine: AnswerEngine, text: str, evidence: dict[int, Evidence], not_stated: str = ""
) -> list[SentenceCheck]:
    """Every sentence of a model's text against the sources it cites."""
    sentences = [s for s in tx.split_sentences(text) if tx.strip_citations(s)]
    if not_stated:
        sentences = [s for s in sentences if tx.fold(not_stated).rstrip(".") not in tx.fold(s)]
    if not sentences:
        return []
    vectors = engine.retriever.embedder.embed([tx.strip_citations(s) for s in sentences])
    threshold = engine.settings.answer.support_similarity
    return [check_sentence(s, evidence, v, threshold) for s, v in zip(sentences, vectors, strict=True)]


def sources_block(engine: AnswerEngine, retrieval: Retrieval) -> str:
    """The numbered sources as the model reads them: "[n] (title, p. 5) excerpt"."""
    limit = engine.settings.answer.source_chars
    lines = []
    for n, hit in enumerate(retrieval.hits, start=1):
        where = f"{hit.title or hit.source}, p. {hit.page}"
        text = without_instructions(hit.text, hit.section)
        lines.append(f"[{n}] ({where}) {excerpt(text, retrieval.query, limit)}")
    return "\n".join(lines)


def excerpt(text: str, query: str, limit: int) -> str:
    """At most `limit` characters of `text`: its sentences that share most words with `query`.

    Shorter sources mean fewer prompt tokens (the main cost); the sentences kept are the ones that
    share most words with the query."""
    text = tx.squash(text)
    if len(text) <= limit:
        return text
    sentences = tx.split_sentences(text)
    q = tx.words(query)
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(q & tx.words(sentences[i])), i))
    keep, used = set(), 0
    for i in ranked:
        if used + len(sentences[i]) + 1 > limit and keep:
            continue
        keep.add(i)
        used += len(sentences[i]) + 1
    return " ".join(sentences[i] for i in sorted(keep))[:limit]


def bounded_history(history: list[dict[str, str]] | None, turns: int, chars: int) -> list[dict[str, str]]:
    """The last `turns` turns of a conversation, each cut to `chars` characters."""
    if not history or turns == 0:
        return []
    return [{**turn, "content": str(turn.get("content") or "")[:chars]} for turn in history[-turns:]]


def history_text(history: list[dict[str, str]] | None, turns: int, chars: int) -> str:
    """Recent conversation turns, so the model can resolve 'it' or 'its decoder'."""
    if not history:
        return ""
    recent = history[-turns:]
    lines = [f"{t['role'].capitalize()}: {re.sub(chr(10), ' ', t['content'])[:chars]}"
             for t in recent if t.get("content")]  # fmt: skip
    return "Conversation so far:\n" + "\n".join(lines) + "\n\n" if lines else ""
