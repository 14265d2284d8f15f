"""`AnswerEngine`: the library's shared parts (retriever, model, prompts, quote scorer) and `ask`,
which reads as its stages: retrieve -> coverage -> draft -> verify (CoVe) -> compose."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from cove.compose import ComposeSettings
from cove.engine.compose import fill, refusal
from cove.engine.context import AskContext, Meter
from cove.engine.coverage import coverage
from cove.engine.draft import bounded_history, draft, first_quotes
from cove.engine.model import Answer, retrieved_json
from cove.engine.retrieve import retrieve
from cove.engine.strategies import STRATEGIES
from cove.events import EventCallback
from cove.llm import ChatModel, load_chat_model
from cove.prompts import load_prompts
from cove.quotes import QuoteScorer, default_weights
from cove.reader.rank import CalibratedReader
from cove.retrieve import Retriever
from cove.settings import CoveSettings


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
        self.scorer.reader = CalibratedReader.from_settings(settings.reader)
        self.compose_settings = ComposeSettings(
            threshold=settings.quotes.threshold,
            max_generated_sentences=settings.answer.max_generated_sentences,
            generated_lead=settings.answer.generated_lead,
            rank_limit=settings.quotes.rank_limit,
            cover_share=settings.answer.generated_cover_share,
            repeat_share=settings.answer.generated_repeat_share,
            evidence_decides=self.scorer.reader is not None and self.scorer.reader.gates,
        )

    @property
    def model(self) -> ChatModel:
        if self._model is None:
            self._model = load_chat_model(self.settings.model, self.settings.models_dir)
        return self._model

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
        ctx = self.context(question, history, pipeline, on_event, cancel)
        answer = Answer(id=id, question=question, answer="", refused=False, pipeline=ctx.pipeline)
        retrieval = retrieve(self, ctx)  # 1
        answer.query, answer.retrieved = retrieval.query, retrieved_json(retrieval.hits)
        covered = coverage(self, ctx, retrieval)  # 2
        if not covered.covered:
            outcome = refusal(covered.reason, retrieval)
        else:
            first_quotes(self, ctx, retrieval)  # before the model is even loaded
            checked = draft(self, ctx, retrieval)  # 3
            answer.model, answer.draft, answer.generated = getattr(self.model, "name", ""), checked.text, checked.text
            outcome = STRATEGIES[ctx.pipeline].run(self, ctx, retrieval, checked)  # 4 (CoVe) and 5
            answer.verification, answer.prompt_versions = outcome.verification, self.prompts.versions(outcome.prompts)
        fill(self, answer, outcome, retrieval, ctx.analysed)
        ctx.finish(answer)
        return answer

    def context(self, question, history=None, pipeline=None, on_event=None, cancel=None) -> AskContext:
        """A fresh `AskContext`: the history bounded like the question (it is the caller's: an API
        client's whole conversation), the deadline started, the pipeline chosen."""
        limits = self.settings.answer
        pipeline = pipeline or limits.pipeline
        if pipeline not in STRATEGIES:
            raise ValueError(f"pipeline must be one of {', '.join(STRATEGIES)}")
        history = bounded_history(history, limits.max_history_turns, limits.max_history_chars)
        meter = Meter(limits.deadline_s, self.clock, cancel)
        return AskContext(question, history, pipeline, meter, on_event or (lambda event: None))

    def lead_settings(self) -> ComposeSettings:
        """The compose settings with `generated_lead='auto'` decided for this model: a small local
        model's sentences never lead (they pass the word checks while changing the meaning)."""
        lead = self.compose_settings.generated_lead
        size = self.model.parameters if lead == "auto" else None
        if size is not None and size < self.settings.answer.capable_model_parameters:
            lead = "never"
        return replace(self.compose_settings, generated_lead=lead)
