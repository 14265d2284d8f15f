"""The answer engine: retrieve -> coverage -> draft -> verify -> compose, each a visible stage.

    engine = AnswerEngine(settings)
    answer = engine.ask("How many attention heads does the base Transformer use?", on_event=print)
    answer.to_json()

Each stage is a method that takes and returns plain dataclasses, so it can be run and tested alone:

1. **retrieve** (`Retrieval`): hybrid search for a stand-alone query (a follow-up is joined to the
   question before it); the hits become numbered `Evidence` for the checks and the quote scorer.
2. **coverage** (`Coverage`): does the library say anything about this? The question is cut into
   its parts (`cove.question`); a question about something no passage mentions is refused here.
   Right after it, the best checked sentences of the first retrieval go out as `FirstQuotes`: what
   a user can read before the model has said a word.
3. **draft** (`Draft`): the model answers from the numbered sources; every sentence is checked
   (`cove.checks`). The draft streams as a draft, never as the answer.
4. **verify** (CoVe only, `VerificationRound`): factored chain-of-verification (`cove.verify`):
   each part of the question and each claim of the draft is checked against its own retrieval.
5. **compose** (`cove.compose`): the answer policy turns parts, evidence and checked sentences into
   what the user reads, with typed corrections of what the checks changed.

Pipelines: ``baseline`` runs 1, 2, 3, 5 (every part answered from the one retrieval); ``cove`` adds 4
(each part answered from its own evidence, the draft's claims confirmed, corrected or dropped).
Progress flows out as typed events (`cove.events`): the CLI, the app and the API draw the same steps.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from cove import text as tx
from cove.checks import Evidence, SentenceCheck, check_sentence, instruction_spans, without_instructions
from cove.compose import Change, ComposeSettings, Composition, Correction, PartAnswer, best_for_part, compose
from cove.docs import unquotable_spans
from cove.events import (
    AnswerEvent,
    Composed,
    CoverageDecided,
    DraftReady,
    DraftToken,
    EventCallback,
    Finished,
    FirstQuotes,
    PlanReady,
    Retrieved,
    Stage,
    StageStarted,
    Verified,
    Waiting,
)
from cove.llm import ChatModel, Completion, ModelError, load_chat_model
from cove.prompts import load_prompts
from cove.question import Question, analyze
from cove.quotes import Pool, QuoteScorer, default_weights
from cove.retrieve import Hit, Retriever, standalone_query
from cove.settings import CoveSettings
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

REFUSAL = "The library does not cover this."


class AnswerDeadline(ModelError):
    """The answer's wall-clock limit (`answer.deadline_s`) passed; the model was stopped."""


class AnswerCancelled(Exception):
    """The caller gave up on the answer (its client hung up): the model was stopped between two
    tokens, or the question left the model's queue, so no core works for nobody."""


@dataclass
class Citation:
    n: int
    title: str
    source: str
    doc_id: str
    page: int
    quote: str
    url: str
    chunk_id: str = ""  # the stored chunk the quote comes from (evaluations check it for the evidence)
    citekey: str = ""  # the document's key in the user's reference manager (BibTeX/Zotero import), if any


@dataclass
class Answer:
    id: str
    question: str
    answer: str
    refused: bool
    pipeline: str
    citations: list[Citation] = field(default_factory=list)
    retrieved: list[dict] = field(default_factory=list)
    verification: list[dict] = field(default_factory=list)
    parts: list[dict] = field(default_factory=list)  # each part of the question: found or not, and by what
    prompt_versions: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    draft: str = ""
    generated: str = ""  # the model's own text before the checks (the draft)
    corrections: list[dict] = field(default_factory=list)  # what the checks removed, corrected or confirmed
    mode: str = "extractive"  # refused | extractive | quoted | generated
    query: str = ""  # the stand-alone retrieval query (differs for follow-ups)
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the stages' results ------------------------------------------------------------------------------


@dataclass
class Retrieval:
    """What the first search found, numbered as the model and the checks see it."""

    query: str
    hits: list[Hit]
    evidence: dict[int, Evidence]
    named: set[str]

    def with_hits(self, extra: list[Hit], make_evidence) -> Retrieval:
        """These sources plus new ones (numbered after them): verification's passages join the pool."""
        hits, evidence = list(self.hits), dict(self.evidence)
        seen = {h.id for h in hits}
        for hit in extra:
            if hit.id in seen or hit.vector is None:
                continue
            seen.add(hit.id)
            hits.append(hit)
            evidence[len(hits)] = make_evidence(len(hits), hit)
        return Retrieval(self.query, hits, evidence, self.named)

    def number_of(self, hit_id: str) -> int | None:
        return next((n for n, h in enumerate(self.hits, 1) if h.id == hit_id), None)


@dataclass
class Coverage:
    covered: bool
    question: Question
    reason: str = ""


@dataclass
class Draft:
    text: str
    checks: list[SentenceCheck]


@dataclass
class VerificationRound:
    """Chain-of-verification's results: each question's verdict, the parts answered from their own
    evidence, the draft claims it confirmed, and the pooled sources the final answer cites."""

    questions: list[VerificationQuestion]
    results: list[Verification]
    parts: list[PartAnswer] | None  # None: parts were not verified separately
    confirmed: list[SentenceCheck]  # draft claims that independent evidence supports
    corrections: list[Correction]
    pooled: Retrieval


class _Meter:
    """Timings and token counts per stage, the answer's deadline, and its caller's cancel signal."""

    def __init__(self, deadline_s: float = float("inf"), clock=time.monotonic, cancel=None) -> None:
        self.deadline_s, self.clock = deadline_s, clock
        self.cancel: threading.Event | None = cancel
        self.deadline = clock() + deadline_s
        self.timings = {f"{s.value}_s": 0.0 for s in Stage if s is not Stage.DONE}
        self.tokens = {"prefill": 0, "decode": 0, "prompt": 0}
        self.steps: dict[str, dict[str, int]] = {}
        # Model time split at each call's first token: the tokens/s Cove really gets (model_bench).
        self.model_seconds = {"prefill": 0.0, "decode": 0.0}
        self.first_token_decodes = 0  # calls whose first token came out of the prefill (not decode time)

    def add(self, step: str, completion: Completion) -> None:
        row = self.steps.setdefault(step, {"prefill": 0, "decode": 0, "prompt": 0})
        for key, value in (("prefill", completion.prefill_tokens), ("decode", completion.decode_tokens),
                           ("prompt", completion.prompt_tokens)):  # fmt: skip
            self.tokens[key] += value
            row[key] += value
        self.model_seconds["prefill"] += completion.prefill_seconds
        self.model_seconds["decode"] += completion.decode_seconds
        self.first_token_decodes += 1 if completion.decode_tokens else 0

    def speeds(self) -> dict[str, float]:
        """Prefill and decode tokens per second over this answer's model calls (0 where none ran)."""
        prefill, decode = self.model_seconds["prefill"], self.model_seconds["decode"]
        decoded = self.tokens["decode"] - self.first_token_decodes
        return {
            "prefill_tokens_per_s": round(self.tokens["prefill"] / prefill, 1) if prefill > 0 else 0.0,
            "decode_tokens_per_s": round(decoded / decode, 1) if decode > 0 else 0.0,
            "prefill_s": round(prefill, 3),
            "decode_s": round(decode, 3),
            "timed_decode_tokens": decoded,  # decode tokens after each call's first (which prefill times)
        }

    def timed(self, stage: Stage, started: float) -> None:
        self.timings[f"{stage.value}_s"] += time.perf_counter() - started

    def check_deadline(self) -> None:
        """Called between steps, between tokens and while queued for the model: past the deadline, or
        once the caller cancelled, the current step ends here."""
        if self.cancel is not None and self.cancel.is_set():
            raise AnswerCancelled("the caller gave up on this answer; the model was stopped")
        if self.clock() > self.deadline:
            raise AnswerDeadline(f"no answer within {self.deadline_s:g} s (answer.deadline_s); the model was stopped")


def excerpt(text: str, query: str, limit: int) -> str:
    """The part of a chunk most about `query`, at most `limit` characters, in the chunk's own order.

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


def citation_url(meta: dict) -> str:
    url = meta.get("url", "")
    if not url:
        return ""
    if meta.get("kind") == "pdf":
        return f"{url}#page={meta.get('page_start', 1)}"
    anchor = meta.get("anchor")
    return f"{url}#{anchor}" if anchor else url


class AnswerEngine:
    """Answers questions from the library under `settings.home`. One per process; share it."""

    def __init__(self, settings: CoveSettings, model: ChatModel | None = None, retriever: Retriever | None = None):
        self.settings = settings
        self.retriever = retriever or Retriever(settings)
        self._model = model
        self.clock = time.monotonic  # what `answer.deadline_s` is measured with (tests step it)
        self.prompts = load_prompts(settings.answer.prompts_dir)
        weights = settings.quotes.weights or default_weights()
        self.scorer = QuoteScorer(weights, self.retriever.embedder.embed, settings.quotes.prefilter)
        self.compose_settings = ComposeSettings(
            threshold=settings.quotes.threshold,
            max_generated_sentences=settings.answer.max_generated_sentences,
            generated_lead=settings.answer.generated_lead,
        )

    @property
    def model(self) -> ChatModel:
        if self._model is None:
            self._model = load_chat_model(self.settings.model, self.settings.models_dir)
        return self._model

    def _lead_settings(self) -> ComposeSettings:
        """The compose settings with `generated_lead='auto'` decided for this model: a small local
        model's sentences never lead (they pass the word checks while changing the meaning)."""
        lead = self.compose_settings.generated_lead
        size = self.model.parameters if lead == "auto" else None
        if size is not None and size < self.settings.answer.capable_model_parameters:
            lead = "never"
        return replace(self.compose_settings, generated_lead=lead)

    # --- the entry point ---------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        history: list[dict[str, str]] | None = None,
        pipeline: str | None = None,
        on_event: EventCallback | None = None,
        id: str = "",
        cancel: threading.Event | None = None,
    ) -> Answer:
        """Answer `question`. Setting `cancel` stops the answer at its next step or token
        (`AnswerCancelled`): what a server does when its client hangs up."""
        emit = on_event or (lambda event: None)
        pipeline = pipeline or self.settings.answer.pipeline
        # The history is the caller's (an API client's whole conversation): bounded like the question.
        limits = self.settings.answer
        history = bounded_history(history, limits.max_history_turns, limits.max_history_chars)
        started = time.perf_counter()
        meter = _Meter(self.settings.answer.deadline_s, self.clock, cancel)
        answer = Answer(id=id, question=question, answer="", refused=False, pipeline=pipeline)

        retrieval = self.retrieve(question, history, meter, emit)
        answer.query, answer.retrieved = retrieval.query, _retrieved_json(retrieval.hits)
        coverage = self.coverage(retrieval, emit)
        if not coverage.covered:
            composition = _refusal(coverage.reason)
            final = retrieval
        else:
            self.first_quotes(coverage.question, retrieval, meter, emit)  # before the model is even loaded
            draft = self.draft(question, history, retrieval, meter, emit)
            answer.model = getattr(self.model, "name", "")
            answer.draft = answer.generated = draft.text
            versions = ["answer"]
            late: Correction | None = None
            if pipeline == "cove":
                try:
                    verification = self.verify(coverage.question, draft, retrieval, meter, emit)
                    answer.verification = [v.to_json() for v in verification.results]
                    composition, final = self.revise(coverage.question, draft, verification, meter, emit)
                    versions += ["verify"] + (["plan"] if self.settings.answer.cove.model_plan else [])
                except AnswerDeadline as err:  # out of time: compose from the checked draft, as single-shot does
                    answer.verification = []
                    late = Correction(Change.NOTE, reason=f"{err}: answered from the checked draft")
            if pipeline != "cove" or late is not None:
                composition, final = self.compose(coverage.question, draft, retrieval, meter, emit), retrieval
                if late is not None:
                    composition.corrections.insert(0, late)
            answer.prompt_versions = self.prompts.versions(versions)

        self._fill(answer, composition, final, retrieval)
        meter.timings["total_s"] = time.perf_counter() - started
        answer.timings = {k: round(v, 3) for k, v in meter.timings.items()}
        answer.tokens = {**meter.tokens, "steps": meter.steps, "speed": meter.speeds()}
        emit(Finished(Stage.DONE, answer.answer, answer))
        return answer

    # --- 1. retrieve -----------------------------------------------------------------------------------
    def retrieve(self, question: str, history, meter: _Meter, emit: EventCallback) -> Retrieval:
        query = standalone_query(question, history)
        emit(StageStarted(Stage.RETRIEVE, f"searching the library for: {query}"))
        t0 = time.perf_counter()
        result = self.retriever.search(query, k=self.settings.retrieve.k)
        meter.timed(Stage.RETRIEVE, t0)
        evidence = {n: self.evidence(n, hit) for n, hit in enumerate(result.hits, start=1)}
        retrieval = Retrieval(query, result.hits, evidence, result.named)
        emit(Retrieved(Stage.RETRIEVE, f"{len(result.hits)} sources", query, _retrieved_json(result.hits)))
        return retrieval

    def evidence(self, n: int, hit: Hit) -> Evidence:
        """A hit as the checks and the quote scorer see it (its paper's aliases in the header)."""
        from cove.lexical import lexical_text

        header = lexical_text("", hit.metadata).strip()
        aliases = self.retriever.aliases(hit.doc_id)
        if aliases:
            header += " (" + ", ".join(aliases) + ")"
        return Evidence(
            n, hit.text, header, np.asarray(hit.vector, dtype=np.float32) if hit.vector is not None else None,
            unquotable=unquotable_spans(hit.metadata, hit.text) + instruction_spans(hit.text),
            block=str(hit.metadata.get("block") or "prose"),
            doc_id=hit.doc_id, label=str(hit.metadata.get("label") or ""), table_header=_header_cells(hit.metadata),
            rank=hit.rank, cosine=hit.cosine,
        )  # fmt: skip

    # --- 2. coverage ------------------------------------------------------------------------------------
    def coverage(self, retrieval: Retrieval, emit: EventCallback) -> Coverage:
        """Does the library say anything about this? The best passage must be close in meaning (or
        from a paper the question names), and every name the question uses must occur in some
        retrieved passage: a question about a paper the library lacks retrieves similar-sounding
        passages of others."""
        question = analyze(retrieval.query, self.retriever.named_documents)
        hits = retrieval.hits
        reason = ""
        if not hits:
            reason = "the library is empty or nothing matched"
        elif max(h.cosine for h in hits) < self.settings.answer.min_relevance and not self._named_match(retrieval):
            reason = "no relevant passage in the library"
        else:
            haystack = tx.fold(" ".join(e.full for e in retrieval.evidence.values()))
            missing = sorted(e for e in tx.entities(retrieval.query) if not tx.has_entity(e, haystack))
            # A question of several parts may still be answered in part: its parts decide.
            some_part = any(not (p.names & set(missing)) for p in question.parts) if question.multi_part else False
            if missing and not some_part:
                reason = f"no retrieved passage mentions {', '.join(missing)}"
        coverage = Coverage(not reason, question, reason)
        emit(CoverageDecided(Stage.COVERAGE, reason or f"{len(question.parts)} part(s)", coverage.covered,
                             [p.text for p in question.parts]))  # fmt: skip
        return coverage

    def _named_match(self, retrieval: Retrieval) -> bool:
        """On topic although MiniLM scores every passage low: the question names a paper whose
        passages were retrieved, or BM25's best passage has nearly all its content words."""
        if retrieval.named & {h.doc_id for h in retrieval.hits}:
            return True
        terms = tx.key_terms(retrieval.query)
        best = next((h for h in retrieval.hits if h.lexical_rank == 1), None)
        if best is None or len(terms) < 3:
            return False
        return len(terms & tx.key_terms(best.text)) >= 0.8 * len(terms)

    def first_quotes(self, question: Question, retrieval: Retrieval, meter: _Meter, emit: EventCallback) -> Composition:
        """The best checked sentences of the first retrieval, out before the model starts."""
        t0 = time.perf_counter()
        early = compose(question, self._pool(retrieval), self.scorer, [], self.compose_settings)
        meter.timed(Stage.COMPOSE, t0)
        if early.sentences:
            citations = [asdict(c) for c in self._citations(early, retrieval)]
            emit(FirstQuotes(Stage.COMPOSE, "best checked sentences so far", early.text(), citations))
        return early

    # --- 3. draft ---------------------------------------------------------------------------------------
    def draft(self, question: str, history, retrieval: Retrieval, meter: _Meter, emit: EventCallback) -> Draft:
        emit(StageStarted(Stage.DRAFT, "the model drafts an answer from the sources (it is checked next)"))
        prompt = self.prompts["answer"]
        sources = self._sources_block(retrieval)
        messages = [
            {"role": "system", "content": prompt.render("system", sources=sources)},
            {"role": "user", "content": prompt.render("user", history=_history_text(history), question=question)},
        ]
        text = self._chat(
            Stage.DRAFT, messages, meter, emit, stream=True, max_tokens=self.settings.answer.max_answer_tokens
        )
        t0 = time.perf_counter()
        checks = self.check(text, retrieval.evidence, prompt.marker("not_stated"))
        meter.timed(Stage.DRAFT, t0)
        supported = sum(c.supported for c in checks)
        emit(DraftReady(Stage.DRAFT, f"{supported} of {len(checks)} draft sentences supported", text, supported,
                        len(checks)))  # fmt: skip
        return Draft(text, checks)

    def check(self, text: str, evidence: dict[int, Evidence], not_stated: str = "") -> list[SentenceCheck]:
        """Every sentence of a model's text against the sources it cites."""
        sentences = [s for s in tx.split_sentences(text) if tx.strip_citations(s)]
        if not_stated:
            sentences = [s for s in sentences if tx.fold(not_stated).rstrip(".") not in tx.fold(s)]
        if not sentences:
            return []
        vectors = self.retriever.embedder.embed([tx.strip_citations(s) for s in sentences])
        threshold = self.settings.answer.support_similarity
        return [check_sentence(s, evidence, v, threshold) for s, v in zip(sentences, vectors, strict=True)]

    def _sources_block(self, retrieval: Retrieval) -> str:
        limit = self.settings.answer.source_chars
        lines = []
        for n, hit in enumerate(retrieval.hits, start=1):
            where = f"{hit.title or hit.source}, p. {hit.page}"
            lines.append(f"[{n}] ({where}) {excerpt(without_instructions(hit.text), retrieval.query, limit)}")
        return "\n".join(lines)

    def _chat(self, stage: Stage, messages, meter: _Meter, emit: EventCallback, stream: bool, max_tokens: int) -> str:
        t0 = time.perf_counter()
        meter.check_deadline()

        def on_token(piece: str) -> None:
            meter.check_deadline()  # raising here stops the model between two tokens
            if stream:
                emit(DraftToken(stage, piece, piece))

        queued: list[bool] = []

        def on_wait() -> None:
            if not queued:
                queued.append(True)
                emit(Waiting(stage, "waiting for the model (another question is being answered)"))
            meter.check_deadline()  # a cancelled or late answer leaves the queue

        completion = self.model.chat(messages, max_tokens=max_tokens, on_token=on_token, on_wait=on_wait)
        meter.timed(stage, t0)
        meter.add(stage.value, completion)
        return completion.text.strip()

    # --- 4. verify (chain-of-verification) ----------------------------------------------------------
    def verify(
        self, question: Question, draft: Draft, retrieval: Retrieval, meter: _Meter, emit: EventCallback
    ) -> VerificationRound:
        cfg = self.settings.answer.cove
        emit(StageStarted(Stage.VERIFY, "planning verification questions"))
        claims = [c.sentence for c in draft.checks]
        questions = plan(question, claims, cfg.decompose, cfg.claims, cfg.max_questions)
        if cfg.model_plan:
            questions += self._model_plan(question.text, draft.text, retrieval, meter, emit, cfg.max_questions)
        emit(PlanReady(Stage.VERIFY, f"{len(questions)} verification questions", [q.text for q in questions]))
        pooled, results, corrections, confirmed = retrieval, [], [], []
        found_hits: dict[int, list[Hit]] = {}
        for vq in questions:
            meter.check_deadline()
            t0 = time.perf_counter()
            hits = self.retriever.search(vq.text, k=cfg.sources).hits
            meter.timed(Stage.VERIFY, t0)
            if cfg.pool_evidence or vq.kind == PART:
                pooled = pooled.with_hits(hits, self.evidence)
            found_hits[id(vq)] = hits
            if vq.kind == CLAIM:
                result, check = self._verify_claim(vq, hits, pooled)
                if check is not None:
                    confirmed.append(check)
                if result.status == CONTRADICTED:
                    corrections.append(_contradiction(result, pooled))
            else:
                result = Verification(vq.text, vq.kind, NOT_FOUND)
            results.append(result)
        parts = None
        if cfg.decompose and question.multi_part:
            parts = self._verify_parts(question, questions, results, found_hits, pooled, retrieval, meter, emit)
        for result in results:
            emit(Verified(Stage.VERIFY, f"{result.status}: {result.question}", result.question, result.kind,
                          result.status, result.answer, _source_json(pooled, result.source)))  # fmt: skip
        return VerificationRound(questions, results, parts, confirmed, corrections, pooled)

    def _verify_claim(self, vq: VerificationQuestion, hits: list[Hit], pooled: Retrieval):
        """A draft claim against the passages its own search found: confirmed, contradicted or not."""
        evidence = [pooled.evidence[n] for n in (pooled.number_of(h.id) for h in hits) if n is not None]
        vector = self.retriever.embedder.embed([vq.claim])[0]
        status, n, sentence = judge_claim(vq.claim, evidence, vector, self.settings.answer.support_similarity)
        result = Verification(vq.text, CLAIM, status, sentence, n, claim=vq.claim, sources=_sources_json(hits))
        check = None
        if status == CONFIRMED:
            check = SentenceCheck(vq.claim, [n], True, supported_by=n)
        return result, check

    def _verify_parts(self, question, questions, results, found_hits, pooled, first, meter, emit) -> list[PartAnswer]:
        """Each part answered from its own evidence (pooled with the first retrieval's if asked)."""
        cfg = self.settings.answer.cove
        answers: list[PartAnswer] = []
        for index, part in enumerate(question.parts):
            vq_index = next((i for i, q in enumerate(questions) if q.kind == PART and q.part == index), None)
            own = found_hits.get(id(questions[vq_index]), []) if vq_index is not None else []
            if cfg.pool_evidence:
                pool = self._pool(pooled)
            else:
                numbers = {pooled.number_of(h.id) for h in own} | set(first.evidence)
                pool = self._pool(pooled, {n for n in numbers if n is not None})
            sub = part_question(question, index)
            answer = best_for_part(part, sub, pool, self.scorer, self.compose_settings.threshold)
            if answer.found and cfg.model_answers and not _held_by(first, answer):
                answer = self._model_part_answer(answer, pooled, meter, emit)
            answers.append(answer)
            if vq_index is not None:
                result = results[vq_index]
                result.status = ANSWERED if answer.found else NOT_FOUND
                result.answer = answer.best.candidate.text if answer.found else answer.why_not
                result.source = answer.best.candidate.n if answer.found else None
                result.sources = _sources_json(own)
        return answers

    def _model_part_answer(self, answer: PartAnswer, pooled: Retrieval, meter: _Meter, emit) -> PartAnswer:
        """Ask the model the part's question from the evidence sentence's passage; keep its reply as
        the part's checked model sentence only if the checks support it against that sentence."""
        prompt = self.prompts["verify"]
        evidence = pooled.evidence[answer.best.candidate.n]
        text = excerpt(evidence.data, answer.part.text, self.settings.answer.cove.evidence_chars)
        messages = [
            {"role": "system", "content": prompt.render("system", evidence=text)},
            {"role": "user", "content": prompt.render("user", question=answer.part.text)},
        ]
        reply = self._chat(Stage.VERIFY, messages, meter, emit, stream=False, max_tokens=40)
        if model_reply_holds(reply, answer.best.candidate.text, evidence, prompt.marker("not_stated")):
            answer.model_reply = reply
        return answer

    def _model_plan(self, question, draft, retrieval, meter, emit, limit) -> list[VerificationQuestion]:
        prompt = self.prompts["plan"]
        messages = [
            {
                "role": "system",
                "content": self.prompts["answer"].render("system", sources=self._sources_block(retrieval)),
            },
            {"role": "user", "content": question},
            {"role": "assistant", "content": draft},
            {"role": "user", "content": prompt.render("user", max_questions=limit)},
        ]
        reply = self._chat(Stage.VERIFY, messages, meter, emit, stream=False, max_tokens=48)
        return [VerificationQuestion(q, MODEL) for q in parse_model_plan(reply, question, limit)]

    def revise(self, question, draft: Draft, verification: VerificationRound, meter, emit):
        """CoVe's final answer, composed from verified facts: each part's answer from its own
        evidence, the draft claims that independent evidence confirmed, contradictions corrected."""
        t0 = time.perf_counter()
        pooled = verification.pooled
        pool = self._pool(pooled)
        checked = list(verification.confirmed)
        if verification.parts is not None:
            for answer in verification.parts:  # the model's checked reply to a part, where it gave one
                if answer.model_reply:
                    n = answer.best.candidate.n
                    checked.append(SentenceCheck(answer.model_reply, [n], True, supported_by=n))
        if not self.settings.answer.cove.claims:  # the draft is then checked as single-shot checks it
            checked += draft.checks
        composition = compose(question, pool, self.scorer, checked, self._lead_settings(), verification.parts)
        composition.corrections = verification.corrections + _dropped_claims(verification) + composition.corrections
        for fix in verification.corrections:  # the verifying quote answers in place of the wrong claim
            if fix.source is not None and not any(s.source == fix.source for s in composition.sentences):
                composition.sentences.insert(0, _quote_sentence(fix))
        meter.timed(Stage.COMPOSE, t0)
        emit(Composed(Stage.COMPOSE, composition.mode.value, composition.text(), composition.mode.value,
                      [str(c) for c in composition.corrections]))  # fmt: skip
        return composition, pooled

    # --- 5. compose -----------------------------------------------------------------------------------
    def compose(self, question: Question, draft: Draft, retrieval: Retrieval, meter, emit) -> Composition:
        t0 = time.perf_counter()
        composition = compose(question, self._pool(retrieval), self.scorer, draft.checks, self._lead_settings())
        meter.timed(Stage.COMPOSE, t0)
        emit(Composed(Stage.COMPOSE, composition.mode.value, composition.text(), composition.mode.value,
                      [str(c) for c in composition.corrections]))  # fmt: skip
        return composition

    def _pool(self, retrieval: Retrieval, only: set[int] | None = None) -> Pool:
        evidence = retrieval.evidence if only is None else {n: e for n, e in retrieval.evidence.items() if n in only}
        return Pool.build(evidence, self.settings.quotes.max_pair_chars)

    # --- the answer JSON -----------------------------------------------------------------------------
    def _fill(self, answer: Answer, composition: Composition, final: Retrieval, first: Retrieval) -> None:
        answer.mode = composition.mode.value
        answer.refused = composition.mode.value == "refused"
        answer.corrections = [c.to_json() for c in composition.corrections]
        answer.parts = [p.to_json() for p in composition.parts]
        if answer.refused:
            closest = ", ".join(f"{h.title or h.source} p.{h.page}" for h in first.hits[:3])
            answer.answer = REFUSAL + (f" Closest sources: {closest}." if closest else "")
            return
        answer.answer = composition.text()
        answer.citations = self._citations(composition, final)

    def _citations(self, composition: Composition, retrieval: Retrieval) -> list[Citation]:
        from cove.checks import best_matching_sentence

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
                quote_text = best[0] if best else tx.shorten(tx.squash(hit.text), 200)
            out.append(
                Citation(n=n, title=hit.title, source=hit.source, doc_id=hit.doc_id, page=hit.page,
                         quote=tx.shorten(quote_text, 400), url=citation_url(hit.metadata), chunk_id=hit.id,
                         citekey=self.retriever.catalog.citekey(hit.doc_id))
            )  # fmt: skip
        return out


# --- helpers -------------------------------------------------------------------------------------------


def _header_cells(metadata: dict) -> list[str]:
    try:
        cells = json.loads(metadata.get("header") or "[]")
    except ValueError:
        return []
    return [str(c) for c in cells] if isinstance(cells, list) else []


def _refusal(reason: str) -> Composition:
    from cove.compose import Mode

    return Composition(Mode.REFUSED, corrections=[Correction(Change.REFUSED, reason=reason)])


def _retrieved_json(hits: list[Hit]) -> list[dict]:
    return [
        {"source": h.source, "doc_id": h.doc_id, "page": h.page, "score": round(h.cosine, 4), "title": h.title,
         "chunk_id": h.id}
        for h in hits
    ]  # fmt: skip


def _sources_json(hits: list[Hit]) -> list[dict]:
    return [{"title": h.title, "source": h.source, "doc_id": h.doc_id, "page": h.page} for h in hits]


def _source_json(retrieval: Retrieval, n: int | None) -> dict | None:
    if n is None or n > len(retrieval.hits):
        return None
    hit = retrieval.hits[n - 1]
    return {"n": n, "title": hit.title or hit.source, "page": hit.page}


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


def _quote_sentence(fix: Correction):
    from cove.compose import Sentence

    return Sentence(fix.replacement, fix.source, quoted=True)


def bounded_history(history: list[dict[str, str]] | None, turns: int, chars: int) -> list[dict[str, str]]:
    """The last `turns` turns of a conversation, each cut to `chars` characters."""
    if not history or turns == 0:
        return []
    return [{**turn, "content": str(turn.get("content") or "")[:chars]} for turn in history[-turns:]]


def _history_text(history: list[dict[str, str]] | None, turns: int = 4) -> str:
    """Recent conversation turns, so the model can resolve 'it' or 'its decoder'."""
    if not history:
        return ""
    recent = history[-turns:]
    lines = [
        f"{t['role'].capitalize()}: {re.sub(chr(10), ' ', t['content'])[:300]}" for t in recent if t.get("content")
    ]
    return "Conversation so far:\n" + "\n".join(lines) + "\n\n" if lines else ""


__all__ = ["AnswerEngine", "Answer", "AnswerEvent", "Citation", "REFUSAL"]
