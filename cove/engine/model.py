"""What the answer engine returns and what its stages pass each other, as plain dataclasses.

`Answer` (with its `Citation`s) is the engine's result and `Answer.to_json()` is `cove ask --json`;
the stage results (`Retrieval`, `Coverage`, `Draft`, `VerificationRound`, `Outcome`) are what one
stage hands the next, so each stage can be run and inspected alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cove.checks import Evidence, SentenceCheck
from cove.compose import Composition, Correction, PartAnswer
from cove.question import Question
from cove.retrieve import Hit
from cove.verify import Verification, VerificationQuestion

REFUSAL = "The library does not cover this."


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
    # A part the evidence does not answer: the passages closest to it, offered beside "The library
    # does not say ...", never as the answer (part, quote, title, source, page, n).
    closest: list[dict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def citation_url(meta: dict) -> str:
    """Where a citation opens: a PDF at its page, an HTML page at its section's anchor."""
    url = meta.get("url", "")
    if not url:
        return ""
    if meta.get("kind") == "pdf":
        return f"{url}#page={meta.get('page_start', 1)}"
    anchor = meta.get("anchor")
    return f"{url}#{anchor}" if anchor else url


# --- the stages' results ------------------------------------------------------------------------------


@dataclass
class Retrieval:
    """What a search found, numbered as the model and the checks see it."""

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
    corrections: list[Correction]  # contradicted claims, with the quote that corrects them
    pooled: Retrieval
    quotable: set[int] | None = None  # the pooled numbers the revision may quote (None: all of them)


@dataclass
class Outcome:
    """What a strategy made of the checked draft: the composition, the sources it cites (numbered as
    in `final`), the verification results for the answer JSON, and the prompts it used."""

    composition: Composition
    final: Retrieval
    verification: list[dict] = field(default_factory=list)
    prompts: list[str] = field(default_factory=lambda: ["answer"])


# --- JSON of the sources, as the events and the answer show them ----------------------------------------


def retrieved_json(hits: list[Hit]) -> list[dict]:
    return [
        {"source": h.source, "doc_id": h.doc_id, "page": h.page, "score": round(h.cosine, 4), "title": h.title,
         "chunk_id": h.id}
        for h in hits
    ]  # fmt: skip


def sources_json(hits: list[Hit]) -> list[dict]:
    return [{"title": h.title, "source": h.source, "doc_id": h.doc_id, "page": h.page} for h in hits]


def source_json(retrieval: Retrieval, n: int | None) -> dict | None:
    if n is None or n > len(retrieval.hits):
        return None
    hit = retrieval.hits[n - 1]
    return {"n": n, "title": hit.title or hit.source, "page": hit.page}
