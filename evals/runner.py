"""Running an evaluation: every dataset item through every variant, scored, written as it goes.

Results are appended to ``results.jsonl`` one answer at a time, so an interrupted run keeps what
it measured and the next run with the same ``--out`` only answers what is missing. Variants run
one after the other, not interleaved per item: interleaved, the second variant would find the
first one's prompt (same sources, same question) in llama.cpp's cache and look far cheaper than it is.
Progress flows out through a callback (the CLI draws a progress bar from it).
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cove.engine import AnswerEngine
from cove.retrieve import Retriever
from cove.settings import CoveSettings, with_overrides
from evals.dataset import EvalItem
from evals.metrics import item_metrics
from evals.variants import Variant


@dataclass
class EvalProgress:
    done: int
    total: int
    item_id: str = ""
    variant: str = ""
    outcome: str = ""  # "correct", "wrong", "refused", "error", "resumed", ...


ProgressCallback = Callable[[EvalProgress], None]


@dataclass
class EvalRun:
    out_dir: Path
    rows: list[dict[str, Any]]  # every results.jsonl line for the selected items and variants
    answered: int  # answers produced by this run (the rest were resumed from an earlier one)
    errors: int


def _retrieval_key(settings: CoveSettings) -> str:
    """Variants that agree on these share one Retriever (and its loaded index)."""
    parts = {name: getattr(settings, name).model_dump() for name in ("chunk", "embed", "store", "retrieve")}
    return json.dumps({"home": str(settings.home_dir), **parts}, sort_keys=True, default=str)


class Evaluator:
    """Answers items with each variant's engine; engines share retrievers and models where they can."""

    def __init__(self, settings: CoveSettings, variants: list[Variant]):
        self.settings = settings
        self.variants = variants
        self._retrievers: dict[str, Retriever] = {}
        self._engines: dict[str, AnswerEngine] = {}

    def engine(self, variant: Variant) -> AnswerEngine:
        if variant.name not in self._engines:
            settings = with_overrides(self.settings, variant.settings_overrides())
            key = _retrieval_key(settings)
            if key not in self._retrievers:
                self._retrievers[key] = Retriever(settings)
            self._engines[variant.name] = AnswerEngine(settings, retriever=self._retrievers[key])
        return self._engines[variant.name]

    def answer(self, item: EvalItem, variant: Variant) -> dict[str, Any]:
        """One results.jsonl row: the answer JSON (or the error) and its metrics."""
        engine = self.engine(variant)
        row: dict[str, Any] = {
            "item_id": item.id,
            "variant": variant.name,
            "pipeline": variant.pipeline,
            "type": item.type,
            "papers": len(set(item.sources)),  # 2: a two-source item (both papers must be found)
            "question": item.question,
            "reference": item.answer,
        }
        started = time.perf_counter()
        try:
            answer = engine.ask(item.question, item.history_dicts(), pipeline=variant.pipeline, id=item.id)
        except Exception as err:  # one failing question must not end the run; it is reported as an error
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc(limit=8)
            row["elapsed_s"] = round(time.perf_counter() - started, 3)
            return row
        answer_json = answer.to_json()
        chunk_texts, chunk_metadata = _chunks(engine.retriever, answer_json)
        row["answer"] = answer_json
        row["metrics"] = item_metrics(item, answer_json, chunk_texts, engine.settings.retrieve.k, chunk_metadata)
        return row


def _chunks(retriever: Retriever, answer: dict[str, Any]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Text and metadata of the stored chunks the answer retrieved or cited, by chunk id."""
    ids = {c.get("chunk_id") for c in answer.get("citations", [])} | {
        r.get("chunk_id") for r in answer.get("retrieved", [])
    }
    ids.discard(None)
    ids.discard("")
    chunks = retriever.store.get(sorted(ids)) if ids else []
    return {c.id: c.text for c in chunks}, {c.id: dict(c.metadata or {}) for c in chunks}


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.jsonl; a line cut short by an interrupted run is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def run_eval(
    items: list[EvalItem],
    variants: list[Variant],
    settings: CoveSettings,
    out_dir: Path,
    progress: ProgressCallback | None = None,
    fresh: bool = False,
) -> EvalRun:
    """Answer and score every (item, variant) pair not already in ``out_dir/results.jsonl``.

    Rows that ended in an error are retried on the next run."""
    emit = progress or (lambda event: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.jsonl"
    if fresh and results_path.exists():
        results_path.unlink()
    kept = [r for r in read_results(results_path) if "error" not in r]
    results_path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    done = {(r["item_id"], r["variant"]) for r in kept}

    evaluator = Evaluator(settings, variants)
    total = len(items) * len(variants)
    count = answered = errors = 0
    with results_path.open("a", encoding="utf-8") as out:
        for variant in variants:
            for item in items:
                if (item.id, variant.name) in done:
                    count += 1
                    emit(EvalProgress(count, total, item.id, variant.name, "resumed"))
                    continue
                row = evaluator.answer(item, variant)
                out.write(json.dumps(row) + "\n")
                out.flush()
                count += 1
                answered += 1
                errors += "error" in row
                emit(EvalProgress(count, total, item.id, variant.name, _outcome(row)))

    wanted_items = {i.id for i in items}
    wanted_variants = {v.name for v in variants}
    rows = [r for r in read_results(results_path) if r["item_id"] in wanted_items and r["variant"] in wanted_variants]
    return EvalRun(out_dir, rows, answered, errors)


def _outcome(row: dict[str, Any]) -> str:
    if "error" in row:
        return "error"
    metrics = row["metrics"]
    if row["type"] == "unanswerable":
        return "refused (right)" if metrics["refused"] else "answered (should refuse)"
    if metrics["refused"]:
        return "refused (wrong)"
    return "correct" if metrics["correct"] else "incorrect"
