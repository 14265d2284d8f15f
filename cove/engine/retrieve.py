"""Stage 1, retrieve: the library's passages for a stand-alone query, numbered as `Evidence`.

The numbers are what the model cites ([1], [2]) and what the checks and the quote scorer read:
each passage's text with its paper's title and aliases as a header, and the character ranges that
must never be quoted (equations, figure text, references, sentences addressed to a model).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np

from cove.checks import Evidence, instruction_spans
from cove.docs import unquotable_spans
from cove.engine.context import AskContext
from cove.engine.model import Retrieval, retrieved_json
from cove.events import Retrieved, Stage, StageStarted
from cove.retrieve import Hit, standalone_query

if TYPE_CHECKING:
    from cove.engine.engine import AnswerEngine


def retrieve(engine: AnswerEngine, ctx: AskContext) -> Retrieval:
    """The first search: the question (joined to the conversation for a follow-up), top k."""
    query = standalone_query(ctx.question, ctx.history)
    ctx.emit(StageStarted(Stage.RETRIEVE, f"searching the library for: {query}"))
    t0 = time.perf_counter()
    result = engine.retriever.search(query, k=engine.settings.retrieve.k)
    ctx.meter.timed(Stage.RETRIEVE, t0)
    evidence = {n: make_evidence(engine, n, hit) for n, hit in enumerate(result.hits, start=1)}
    retrieval = Retrieval(query, result.hits, evidence, result.named)
    ctx.emit(Retrieved(Stage.RETRIEVE, f"{len(result.hits)} sources", query, retrieved_json(result.hits)))
    return retrieval


def search_more(engine: AnswerEngine, query: str, k: int) -> list[Hit]:
    """A further search (a verification question, a part of the question): its hits only."""
    return engine.retriever.search(query, k=k).hits


def make_evidence(engine: AnswerEngine, n: int, hit: Hit) -> Evidence:
    """A hit as the checks and the quote scorer see it (its paper's aliases in the header)."""
    from cove.lexical import lexical_text

    header = lexical_text("", hit.metadata).strip()
    aliases = engine.retriever.aliases(hit.doc_id)
    if aliases:
        header += " (" + ", ".join(aliases) + ")"
    return Evidence(
        n, hit.text, header, np.asarray(hit.vector, dtype=np.float32) if hit.vector is not None else None,
        unquotable=unquotable_spans(hit.metadata, hit.text) + instruction_spans(hit.text, hit.section),
        block=str(hit.metadata.get("block") or "prose"),
        doc_id=hit.doc_id, label=str(hit.metadata.get("label") or ""), table_header=_header_cells(hit.metadata),
        rank=hit.rank, cosine=hit.cosine,
    )  # fmt: skip


def _header_cells(metadata: dict) -> list[str]:
    try:
        cells = json.loads(metadata.get("header") or "[]")
    except ValueError:
        return []
    return [str(c) for c in cells] if isinstance(cells, list) else []
