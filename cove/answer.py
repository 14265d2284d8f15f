"""The answer engine: retrieve, answer with chain-of-verification, check every sentence, cite pages.

    engine = AnswerEngine(settings)
    answer = engine.ask("How many attention heads does the base Transformer use?", on_event=print)
    answer.to_json()

Pipelines:
- ``baseline``: one retrieval-augmented answer (the `answer` prompt), then the checks.
- ``cove``: the "factor + revise" chain-of-verification of Dhuliawala et al. (2309.11495):
  1. draft from numbered sources (`answer` prompt; same as the baseline),
  2. plan verification questions for the draft's claims (`plan`, a follow-up turn after the draft),
  3. answer each question on its own, from evidence retrieved for it, without the draft (`verify`),
  4. revise the draft given those answers (`revise`, a follow-up turn after the draft);
  then the same checks as the baseline.

Steps 1, 2 and 4 start with the same messages (sources + question + draft), so llama.cpp computes
that prefix once (see `cove.llm`). The checks (`cove.checks`) decide what is shown, not the model:
unsupported sentences are corrected from the evidence or removed, an answer with nothing supported
becomes extractive quotes, and a question the library does not cover is refused.

Progress flows out through `on_event` (`AnswerEvent`): the CLI prints it, the app shows the CoVe
steps live, from the same code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cove import checks
from cove.checks import Evidence
from cove.llm import ChatModel, Completion, load_chat_model
from cove.prompts import load_prompts
from cove.retrieve import Hit, Retriever, standalone_query, words
from cove.settings import CoveSettings

REFUSAL = "The library does not cover this."
STEPS = ("retrieve", "draft", "plan", "verify", "revise", "check")


@dataclass
class AnswerEvent:
    stage: str  # one of STEPS, "token" or "done"
    message: str = ""
    data: Any = None


EventCallback = Callable[[AnswerEvent], None]


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


@dataclass
class Verification:
    question: str
    answer: str
    supported: bool
    sources: list[dict] = field(default_factory=list)


@dataclass
class Answer:
    id: str
    question: str
    answer: str
    refused: bool
    pipeline: str
    citations: list[Citation] = field(default_factory=list)
    retrieved: list[dict] = field(default_factory=list)
    verification: list[Verification] = field(default_factory=list)
    prompt_versions: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    draft: str = ""
    generated: str = ""  # the model's final text before the checks (the draft, or CoVe's revision)
    corrections: list[str] = field(default_factory=list)  # what the checks removed or corrected
    mode: str = "generated"  # "generated" | "quoted" (quotes + checked sentences) | "extractive" | "refused"
    query: str = ""  # the stand-alone retrieval query (differs for follow-ups)
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Meter:
    """Timings and token counts per step."""

    def __init__(self) -> None:
        self.timings = {f"{s}_s": 0.0 for s in ("retrieve", "draft", "plan", "verify", "revise", "check")}
        self.tokens = {"prefill": 0, "decode": 0, "prompt": 0}
        self.steps: dict[str, dict[str, int]] = {}

    def add(self, step: str, completion: Completion) -> None:
        self.tokens["prefill"] += completion.prefill_tokens
        self.tokens["decode"] += completion.decode_tokens
        self.tokens["prompt"] += completion.prompt_tokens
        row = self.steps.setdefault(step, {"prefill": 0, "decode": 0, "prompt": 0})
        row["prefill"] += completion.prefill_tokens
        row["decode"] += completion.decode_tokens
        row["prompt"] += completion.prompt_tokens


def excerpt(text: str, query: str, limit: int) -> str:
    """The part of a chunk most about `query`, at most `limit` characters, in the chunk's own order.

    Shorter sources mean fewer prompt tokens (the main cost); the sentences kept are the ones that
    share most words with the query, plus the chunk's opening for context."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= limit:
        return text
    sentences = re.split(r"(?<=[.!?])\s+", text)
    q = words(query)
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(q & words(sentences[i])), i))
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


def parse_questions(text: str, limit: int) -> list[str]:
    """Verification questions from the plan step: one per line, numbering and bullets removed."""
    found = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*•]|Q\d*[:.])\s*", "", line).strip()
        if len(line) > 8 and line.endswith("?") and line not in found:
            found.append(line)
    return found[:limit]


class AnswerEngine:
    """Answers questions from the library under `settings.home`. One per process; share it."""

    def __init__(self, settings: CoveSettings, model: ChatModel | None = None, retriever: Retriever | None = None):
        self.settings = settings
        self.retriever = retriever or Retriever(settings)
        self._model = model
        self.prompts = load_prompts(settings.answer.prompts_dir)

    @property
    def model(self) -> ChatModel:
        if self._model is None:
            self._model = load_chat_model(self.settings.model)
        return self._model

    # --- the entry point ---------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        history: list[dict[str, str]] | None = None,
        pipeline: str | None = None,
        on_event: EventCallback | None = None,
        id: str = "",
    ) -> Answer:
        emit = on_event or (lambda event: None)
        pipeline = pipeline or self.settings.answer.pipeline
        started = time.perf_counter()
        meter = _Meter()
        answer = Answer(id=id, question=question, answer="", refused=False, pipeline=pipeline, model="")

        query = standalone_query(question, history)
        answer.query = query
        emit(AnswerEvent("retrieve", f"searching the library for: {query}"))
        t0 = time.perf_counter()
        hits = self.retriever.search(query, k=self.settings.retrieve.k).hits
        meter.timings["retrieve_s"] = time.perf_counter() - t0
        answer.retrieved = [
            {
                "source": h.source,
                "doc_id": h.doc_id,
                "page": h.page,
                "score": round(h.cosine, 4),
                "title": h.title,
                "chunk_id": h.id,
            }
            for h in hits
        ]
        emit(AnswerEvent("retrieve", f"{len(hits)} sources", answer.retrieved))

        if not self.covers(query, hits):
            self._refuse(answer, hits, "no relevant passage in the library")
        else:
            answer.model = getattr(self.model, "name", "")
            self._generate(answer, question, query, history, hits, pipeline, meter, emit)

        meter.timings["total_s"] = time.perf_counter() - started
        answer.timings = {k: round(v, 3) for k, v in meter.timings.items()}
        answer.tokens = {**meter.tokens, "steps": meter.steps}
        emit(AnswerEvent("done", answer.answer, answer))
        return answer

    # --- coverage and refusal ------------------------------------------------------------------------
    def covers(self, query: str, hits: list[Hit]) -> bool:
        """Does the library say anything about this? The best passage must be close in meaning, and
        every name the question uses (GPT-4, BitNet, Mamba) must occur in some retrieved passage:
        a question about a paper the library lacks retrieves similar-sounding passages of others."""
        if not hits:
            return False
        if max(h.cosine for h in hits) < self.settings.answer.min_relevance and not self._named_match(query, hits):
            return False
        haystack = " ".join(_header(h) + " " + h.text for h in hits).lower()
        return all(checks.has_entity(e, haystack) for e in checks.entities(query))

    def _named_match(self, query: str, hits: list[Hit]) -> bool:
        """On topic although MiniLM scores every passage low. Either the question names a paper in
        the library and passages of it were retrieved ("What activation function did GPT-1 use?"
        against GPT-1's hyper-parameter paragraph; the names check in `covers` still refuses
        "FlashAttention-3"), or BM25's best passage has nearly all the question's content words."""
        named = self.retriever.named_documents(query)
        if named & {h.doc_id for h in hits}:
            return True
        # Or BM25's best passage holds nearly every content word of a specific question.
        terms = checks.key_terms(query)
        best = next((h for h in hits if h.lexical_rank == 1), None)
        if best is None or len(terms) < 3:
            return False
        return len(terms & checks.key_terms(best.text)) >= 0.8 * len(terms)

    def _refuse(self, answer: Answer, hits: list[Hit], why: str) -> None:
        closest = ", ".join(f"{h.title or h.source} p.{h.page}" for h in hits[:3])
        answer.refused = True
        answer.mode = "refused"
        answer.answer = REFUSAL + (f" Closest sources: {closest}." if closest else "")
        answer.corrections.append(f"refused: {why}")

    # --- generation ------------------------------------------------------------------------------------
    def _sources_block(self, hits: list[Hit], query: str) -> tuple[str, dict[int, Evidence]]:
        limit = self.settings.answer.source_chars
        lines, evidence = [], {}
        for n, hit in enumerate(hits, start=1):
            # Sentences a document addresses to a model are not shown to it (nor accepted as evidence).
            text = excerpt(checks.without_instructions(hit.text), query, limit)
            where = f"{hit.title or hit.source}, p. {hit.page}"
            lines.append(f"[{n}] ({where}) {text}")
            evidence[n] = Evidence(n, hit.text, _header(hit), np.asarray(hit.vector, dtype=np.float32))
        return "\n".join(lines), evidence

    def _chat(self, step: str, messages, meter: _Meter, emit: EventCallback, stream: bool, max_tokens: int) -> str:
        t0 = time.perf_counter()
        on_token = (lambda piece: emit(AnswerEvent("token", piece, step))) if stream else None
        completion = self.model.chat(
            messages,
            max_tokens=max_tokens,
            on_token=on_token,
            on_wait=lambda: emit(AnswerEvent(step, "waiting for the model (another question is being answered)")),
        )
        meter.timings[f"{step}_s"] += time.perf_counter() - t0
        meter.add(step, completion)
        return completion.text.strip()

    def _generate(self, answer, question, query, history, hits, pipeline, meter, emit) -> None:
        cfg = self.settings.answer
        sources_text, evidence = self._sources_block(hits, query)
        base = [
            {"role": "system", "content": self.prompts["answer"].render("system", sources=sources_text)},
            {
                "role": "user",
                "content": self.prompts["answer"].render("user", history=_history_text(history), question=question),
            },
        ]
        versions = ["answer"]
        verify_hits: list[Hit] = []  # passages CoVe's verification questions retrieved
        emit(AnswerEvent("draft", "drafting an answer from the sources"))
        draft = self._chat("draft", base, meter, emit, stream=pipeline == "baseline", max_tokens=cfg.max_answer_tokens)
        answer.draft = draft
        emit(AnswerEvent("draft", draft, draft))
        final = draft
        if pipeline == "cove":
            versions += ["plan", "verify", "revise"]
            final = self._verify_and_revise(answer, base, draft, meter, emit, verify_hits)
        answer.prompt_versions = self.prompts.versions(versions)
        answer.generated = final

        emit(AnswerEvent("check", "checking every sentence against the source it cites"))
        t0 = time.perf_counter()
        # CoVe's factored verification retrieved passages of its own: they may hold the answer the
        # first retrieval missed, so they join the evidence that quotes are drawn from.
        hits, evidence = _with_verification_evidence(hits, evidence, verify_hits)
        self._check_and_cite(answer, final, question, evidence, hits)
        meter.timings["check_s"] = time.perf_counter() - t0
        emit(AnswerEvent("check", "; ".join(answer.corrections) or "every sentence is supported", answer.corrections))

    def _verify_and_revise(
        self, answer: Answer, base: list[dict], draft: str, meter: _Meter, emit, verify_hits: list[Hit]
    ) -> str:
        cfg = self.settings.answer
        with_draft = base + [{"role": "assistant", "content": draft}]
        emit(AnswerEvent("plan", "planning verification questions"))
        plan_prompt = self.prompts["plan"].render("user", max_questions=cfg.max_questions)
        plan = self._chat("plan", with_draft + [{"role": "user", "content": plan_prompt}], meter, emit, False, 48)
        questions = parse_questions(plan, cfg.max_questions)
        emit(AnswerEvent("plan", f"{len(questions)} verification questions", questions))

        for vq in questions:
            verification, hits = self._verify(vq, meter, emit)
            answer.verification.append(verification)
            verify_hits.extend(hits)
        if not answer.verification:
            return draft
        # Only the answers, as plain lines: given "Q:/A:" pairs, small models echo them back.
        lines = "\n".join(f"- {v.answer}" for v in answer.verification if v.supported) or "- (nothing confirmed)"
        emit(AnswerEvent("revise", "revising the draft with the verification answers"))
        revise_prompt = self.prompts["revise"].render("user", verifications=lines)
        revised = self._chat(
            "revise",
            with_draft + [{"role": "user", "content": revise_prompt}],
            meter,
            emit,
            stream=True,
            max_tokens=cfg.max_answer_tokens,
        )
        emit(AnswerEvent("revise", revised, revised))
        return revised or draft

    def _verify(self, question: str, meter: _Meter, emit) -> tuple[Verification, list[Hit]]:
        """One factored verification: fresh retrieval, the question alone, no draft in context."""
        cfg = self.settings.answer
        t0 = time.perf_counter()
        hits = self.retriever.search(question, k=cfg.verify_sources).hits
        meter.timings["verify_s"] += time.perf_counter() - t0
        evidence_text = "\n".join(
            excerpt(checks.without_instructions(h.text), question, cfg.verify_chars) for h in hits
        )
        messages = [
            {"role": "system", "content": self.prompts["verify"].render("system", evidence=evidence_text)},
            {"role": "user", "content": self.prompts["verify"].render("user", question=question)},
        ]
        reply = self._chat("verify", messages, meter, emit, False, 40)
        # Supported = says something, and its numbers and names are in the evidence it was given.
        said = reply and "not stated" not in reply.lower()
        problems = checks.support_problems(reply, Evidence(0, evidence_text), min_term_share=0.0) if said else ["-"]
        verification = Verification(
            question,
            reply,
            bool(said and not problems),
            [{"source": h.source, "doc_id": h.doc_id, "page": h.page} for h in hits],
        )
        emit(AnswerEvent("verify", question, verification))
        return verification, hits

    # --- checks and citations --------------------------------------------------------------------------
    def _check_and_cite(self, answer: Answer, text: str, question: str, evidence: dict[int, Evidence], hits) -> None:
        cfg = self.settings.answer
        sentences = [s for s in checks.split_sentences(text) if checks.strip_citations(s)]
        vectors = self.retriever.embedder.embed([checks.strip_citations(s) for s in sentences]) if sentences else []
        kept: list[tuple[str, int]] = []  # (sentence text without citations, source number)
        for sentence, vector in zip(sentences, vectors, strict=True):
            result = checks.check_sentence(sentence, evidence, vector, cfg.support_similarity)
            if result.supported:
                kept.append((checks.strip_citations(sentence), result.supported_by))
                continue
            fixed = self._correct(sentence, result, evidence)
            shown = checks.strip_citations(sentence)
            if fixed:
                kept.append(fixed)
                answer.corrections.append(f"corrected \u201c{shown}\u201d ({'; '.join(result.reasons)})")
            else:
                answer.corrections.append(f"removed \u201c{shown}\u201d ({'; '.join(result.reasons)})")

        if kept and checks.wants_number(question) and not any(checks.states_number_about(s, question) for s, _ in kept):
            # "How many ...?" answered without a supported number is no answer: quote the evidence.
            answer.corrections.append("the answer gave no supported number: quoting the evidence instead")
            kept = []
        # The sources' own words lead: a 135M model's sentence can pass every check and still miss
        # the point, while the best-matching source sentence usually states it. Checked generated
        # sentences follow when they add something the quotes do not say.
        picked = checks.extractive_answer(question, list(evidence.values()), self.retriever.embedder.embed)
        quotes = [(checks.quote(s, n).rsplit(" [", 1)[0], n) for s, n in picked] if picked else []
        if quotes and not self._relevant(question, picked):
            quotes = []
        # With quotes, a generated sentence stays only if a quoted source backs it: a sentence
        # "supported" by some other passage is one more citation to check, for little gain.
        quoted_sources = {n for _, n in quotes}
        added = [
            (s, n) for s, n in kept if (not quotes or n in quoted_sources) and not _repeats(s, [q for q, _ in quotes])
        ][: cfg.max_generated_sentences]
        if not quotes and not added:
            self._refuse(answer, hits, "no supported answer in the retrieved passages")
            return
        answer.mode = "quoted" if quotes and added else "extractive" if quotes else "generated"
        if quotes and not added:
            answer.corrections.append("no generated sentence added to the quoted passages")
        final = quotes + added
        answer.answer = " ".join(_with_citation(s, n) for s, n in final)
        answer.citations = self._citations(final, evidence, hits)

    def _correct(self, sentence: str, result: checks.SentenceCheck, evidence: dict[int, Evidence]):
        """Replace an unsupported sentence by the source sentence that best matches it, quoted; or None."""
        terms = checks.key_terms(sentence) | {checks._stem(e) for e in checks.entities(sentence)}
        cited = [evidence[n] for n in result.cited if n in evidence] or list(evidence.values())
        # A number the checks found unsupported is likely invented: match the quote on the terms only,
        # or "2 heads" would be "corrected" to a sentence about "two sub-layers".
        wrong_number = any(reason.startswith("number") for reason in result.reasons)
        best = checks.best_evidence_sentence(terms, set() if wrong_number else checks.numbers(sentence), cited)
        if best is None or best[2] < 0.5:
            return None
        return checks.quote(best[0], best[1]).rsplit(" [", 1)[0], best[1]

    def _relevant(self, question: str, picked: list[tuple[str, int]]) -> bool:
        """Quotes answer the question only if they share its terms (and give a number when asked for one)."""
        terms = checks.key_terms(question)
        if terms and not any(terms & checks.key_terms(s) for s, _ in picked):
            return False
        return not checks.wants_number(question) or any(checks.states_number_about(s, question) for s, _ in picked)

    def _citations(self, kept: list[tuple[str, int]], evidence: dict[int, Evidence], hits: list[Hit]):
        out: list[Citation] = []
        for sentence, n in kept:
            if any(c.n == n for c in out):
                continue
            hit = hits[n - 1]
            best = checks.best_evidence_sentence(checks.key_terms(sentence), checks.numbers(sentence), [evidence[n]])
            quote_text = best[0] if best else checks.evidence_sentences(evidence[n])[:1] or [hit.text[:200]]
            quote_text = quote_text if isinstance(quote_text, str) else quote_text[0]
            out.append(
                Citation(
                    n=n,
                    title=hit.title,
                    source=hit.source,
                    doc_id=hit.doc_id,
                    page=hit.page,
                    quote=_shorten(quote_text, 240),
                    url=citation_url(hit.metadata),
                    chunk_id=hit.id,
                )
            )
        return out


def _with_verification_evidence(hits: list[Hit], evidence: dict[int, Evidence], extra: list[Hit]):
    """The answer's sources plus new passages found by verification (numbered after them)."""
    seen = {h.id for h in hits}
    hits, evidence = list(hits), dict(evidence)
    for hit in extra:
        if hit.id in seen or hit.vector is None:
            continue
        seen.add(hit.id)
        hits.append(hit)
        n = len(hits)
        evidence[n] = Evidence(n, hit.text, _header(hit), np.asarray(hit.vector, dtype=np.float32))
    return hits, evidence


def _repeats(sentence: str, quotes: list[str]) -> bool:
    """Does a generated sentence only restate a quote (its terms and numbers are all there)?"""
    terms, nums = checks.key_terms(sentence), checks.numbers(sentence)
    for quoted in quotes:
        q_terms = checks.key_terms(quoted)
        if nums <= checks.numbers(quoted) and (not terms or len(terms & q_terms) / len(terms) >= 0.6):
            return True
    return False


def _header(hit: Hit) -> str:
    """Title, section and file name: a passage may be cited for the paper it is in (e.g. 'GPT-1')."""
    from cove.lexical import lexical_text

    return lexical_text("", hit.metadata).strip()


def _with_citation(sentence: str, n: int) -> str:
    sentence = sentence.rstrip()
    end = sentence[-1] if sentence and sentence[-1] in ".!?" else "."
    body = sentence[:-1] if sentence and sentence[-1] in ".!?" else sentence
    return f"{body} [{n}]{end}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "\u2026"


def _history_text(history: list[dict[str, str]] | None, turns: int = 4) -> str:
    """Recent conversation turns, so the model can resolve 'it' or 'its decoder'."""
    if not history:
        return ""
    recent = history[-turns:]
    lines = [
        f"{t['role'].capitalize()}: {re.sub(chr(10), ' ', t['content'])[:300]}" for t in recent if t.get("content")
    ]
    return "Conversation so far:\n" + "\n".join(lines) + "\n\n" if lines else ""
