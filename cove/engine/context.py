"""What one answer carries through its stages: the meter, the events sink, the deadline and the
caller's cancel signal, and the question as analysed (`AskContext`), plus the two ways an answer
ends early (`AnswerDeadline`, `AnswerCancelled`).

Before this, the meter and the emit callback were threaded through every stage's arguments; now a
stage takes the context, and the model is called through `AskContext.chat`, which is where the
deadline and the cancel signal are checked between tokens and while queued for the model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from cove.events import DraftToken, EventCallback, Finished, Stage, Waiting
from cove.llm import ChatModel, Completion, ModelError
from cove.question import Question


class AnswerDeadline(ModelError):
    """The answer's wall-clock limit (`answer.deadline_s`) passed; the model was stopped."""


class AnswerCancelled(Exception):
    """The caller gave up on the answer (its client hung up): the model was stopped between two
    tokens, or the question left the model's queue, so no core works for nobody."""


class Meter:
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
        self.started = time.perf_counter()

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


@dataclass
class AskContext:
    """One answer in progress: what it was asked, how far it got, and where its events go."""

    question: str
    history: list[dict[str, str]]
    pipeline: str
    meter: Meter
    emit: EventCallback = field(default=lambda event: None)
    analysed: Question | None = None  # the question cut into its parts (set by the coverage stage)

    def chat(self, model: ChatModel, stage: Stage, messages, stream: bool, max_tokens: int) -> str:
        """One model call for `stage`: its draft tokens streamed as events when `stream`, stopped
        between tokens (or taken out of the model's queue) past the deadline or once cancelled."""
        t0 = time.perf_counter()
        meter = self.meter
        meter.check_deadline()

        def on_token(piece: str) -> None:
            meter.check_deadline()  # raising here stops the model between two tokens
            if stream:
                self.emit(DraftToken(stage, piece, piece))

        queued: list[bool] = []

        def on_wait() -> None:
            if not queued:
                queued.append(True)
                self.emit(Waiting(stage, "waiting for the model (another question is being answered)"))
            meter.check_deadline()  # a cancelled or late answer leaves the queue

        completion = model.chat(messages, max_tokens=max_tokens, on_token=on_token, on_wait=on_wait)
        meter.timed(stage, t0)
        meter.add(stage.value, completion)
        return completion.text.strip()

    def timed(self, stage: Stage) -> _Timer:
        """`with ctx.timed(Stage.COMPOSE): ...` adds the block's wall time to the stage's timing."""
        return _Timer(self.meter, stage)

    def finish(self, answer) -> None:
        """The answer's timings and token counts, then the `Finished` event."""
        self.meter.timings["total_s"] = time.perf_counter() - self.meter.started
        answer.timings = {k: round(v, 3) for k, v in self.meter.timings.items()}
        answer.tokens = {**self.meter.tokens, "steps": self.meter.steps, "speed": self.meter.speeds()}
        self.emit(Finished(Stage.DONE, answer.answer, answer))


class _Timer:
    def __init__(self, meter: Meter, stage: Stage) -> None:
        self.meter, self.stage = meter, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.meter.timed(self.stage, self.t0)


__all__ = ["AnswerCancelled", "AnswerDeadline", "AskContext", "Meter"]
