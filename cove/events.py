"""What an answer in progress tells its front ends: one typed event per thing that happened.

Every front end (the CLI, the chat app, the HTTP API) draws the same steps from these events, so the
steps a user watches are the steps the engine took. Each event names its stage and carries a short
human message (enough for a plain log line) plus typed data for a richer view.

    retrieve -> coverage -> first quotes -> draft (tokens) -> verify (plan, each check) -> compose -> done
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cove.engine.model import Answer


class Stage(StrEnum):
    RETRIEVE = "retrieve"
    COVERAGE = "coverage"
    DRAFT = "draft"
    VERIFY = "verify"
    COMPOSE = "compose"
    DONE = "done"


@dataclass
class AnswerEvent:
    """Base of every event: its stage and a one-line message."""

    stage: Stage
    message: str = ""


@dataclass
class StageStarted(AnswerEvent):
    """A stage began (its message says what it does)."""


@dataclass
class Retrieved(AnswerEvent):
    query: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)  # title, source, page, score, chunk_id


@dataclass
class CoverageDecided(AnswerEvent):
    covered: bool = True
    parts: list[str] = field(default_factory=list)  # the question's parts


@dataclass
class FirstQuotes(AnswerEvent):
    """The best checked sentences from the first retrieval, before the model has said anything:
    what the user can read within a second. `text` is rendered Markdown-free answer text."""

    text: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DraftToken(AnswerEvent):
    """A piece of the model's draft, which is being checked: never shown as the answer."""

    text: str = ""


@dataclass
class DraftReady(AnswerEvent):
    text: str = ""
    supported: int = 0  # sentences the checks support
    sentences: int = 0


@dataclass
class PlanReady(AnswerEvent):
    questions: list[str] = field(default_factory=list)


@dataclass
class Verified(AnswerEvent):
    """One verification question answered from its own evidence."""

    question: str = ""
    kind: str = ""  # "part" | "claim"
    status: str = ""  # confirmed | contradicted | unconfirmed | answered | not_found
    answer: str = ""
    source: dict[str, Any] | None = None  # title, page of the evidence


@dataclass
class Waiting(AnswerEvent):
    """The model is busy with another question; this one waits its turn."""


@dataclass
class Composed(AnswerEvent):
    text: str = ""
    mode: str = ""
    corrections: list[str] = field(default_factory=list)


@dataclass
class Finished(AnswerEvent):
    answer: Answer | None = None


EventCallback = Callable[[AnswerEvent], None]
