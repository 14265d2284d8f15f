"""Scoring one answer against its dataset item, and summarising many.

Everything is computed from the answer JSON (what ``cove ask --json`` prints) plus the text of the
chunks it retrieved and cited, so a score never depends on the model grading itself:

- retrieval: page-level recall@k and reciprocal rank against the gold (file, page) pairs;
- correctness: every ``must_include`` group has one alternative in the answer (case-insensitive);
- refusals: unanswerable items refused, answerable items not;
- citations: precision (a citation is right when its (file, page) is gold or its chunk contains the
  evidence quote) and recall (share of gold pairs that were cited);
- grounding: share of the numbers an answer states that appear in a chunk it cites; and, before
  the checks, the share of the numbers in the model's own text that appear in a retrieved chunk;
- quote hygiene: share of citation quotes that fall on figure text, an equation, a reference entry
  or front matter of the chunk they come from (its `spans` and `block`, see `cove.docs`);
- cost: latency, prefill and decode tokens.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from cove import text as tx
from cove.docs import quote_is_unquotable
from evals.dataset import EvalItem

_ARXIV_ID = re.compile(r"(\d{4}\.\d{4,5})(v\d+)?")


def source_key(source: str) -> str:
    """A name that is the same for '1706.03762.pdf', 'papers/1706.03762v7.pdf' and
    'https://arxiv.org/abs/1706.03762': the arXiv id when there is one, else the file stem."""
    found = _ARXIV_ID.search(source)
    if found:
        return found.group(1)
    name = PurePosixPath(source.split("?", 1)[0].rstrip("/")).name
    return name.rsplit(".", 1)[0].lower() if "." in name else name.lower()


def normalize(text: str) -> str:
    """For substring matching: ligatures, compatibility forms, control characters and line-break
    hyphens ("probabil- ity", as pypdf gives them) undone; case and whitespace ignored."""
    return tx.match_form(text)


def _gold_keys(item: EvalItem) -> set[tuple[str, int]]:
    return {(source_key(s), p) for s, p in item.gold_pages()}


def _key(entry: dict[str, Any]) -> tuple[str, int]:
    return source_key(str(entry.get("source", ""))), int(entry.get("page", 0))


def missing_groups(answer_text: str, must_include: list[list[str]]) -> list[list[str]]:
    """The must_include groups of which the answer contains no alternative."""
    said = normalize(answer_text)
    return [group for group in must_include if not any(normalize(alt) in said for alt in group)]


def answer_numbers(answer_text: str) -> set[str]:
    """The numbers an answer states (citation markers like [2] are not claims)."""
    return tx.numbers(tx.strip_citations(answer_text))


def item_metrics(
    item: EvalItem,
    answer: dict[str, Any],
    chunk_texts: dict[str, str],
    k: int,
    chunk_metadata: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All per-item measurements; None where a metric does not apply to the item.

    `chunk_texts` and `chunk_metadata` hold the stored chunks the answer retrieved and cited, by id."""
    gold = _gold_keys(item)
    retrieved = [_key(r) for r in answer.get("retrieved", [])][:k]
    refused = bool(answer.get("refused"))
    text = answer.get("answer", "")
    row: dict[str, Any] = {"refused": refused, "refusal_ok": refused != item.answerable}

    if item.answerable:
        found = [pair for pair in gold if pair in retrieved]
        row["recall_at_k"] = len(found) / len(gold)
        first = next((rank for rank, pair in enumerate(retrieved, 1) if pair in gold), None)
        row["reciprocal_rank"] = 1.0 / first if first else 0.0
        missing = missing_groups(text, item.must_include) if not refused else item.must_include
        row["correct"] = not refused and not missing
        row["missing"] = [group[0] for group in missing]
    else:
        row |= {"recall_at_k": None, "reciprocal_rank": None, "correct": None, "missing": []}

    # Citations: right if on a gold page, or if the cited chunk contains an evidence quote.
    quotes = [normalize(q) for q in item.quotes]
    cited = answer.get("citations", []) if not refused else []
    right = 0
    for citation in cited:
        chunk = normalize(chunk_texts.get(citation.get("chunk_id", ""), ""))
        if _key(citation) in gold or any(q and q in chunk for q in quotes):
            right += 1
    row["citations"] = len(cited)
    row["citations_right"] = right
    cited_pairs = {_key(c) for c in cited}
    row["citation_recall"] = len(gold & cited_pairs) / len(gold) if item.answerable else None

    # Grounding: each number the answer states must appear in some chunk it cites.
    stated = answer_numbers(text) if not refused else set()
    in_cited = set()
    for citation in cited:
        in_cited |= tx.numbers(chunk_texts.get(citation.get("chunk_id", ""), ""))
    row["numbers"] = len(stated)
    row["numbers_grounded"] = len(stated & in_cited)
    row["ungrounded"] = sorted(stated - in_cited)

    # The model's own text before the checks: how often does it state numbers its sources lack?
    # (The checks remove those, so final answers are grounded by construction; this shows whether
    # a pipeline makes the model itself more faithful, which is what CoVe claims.)
    model_text = answer.get("generated", "") if not refused else ""
    model_stated = answer_numbers(model_text)
    in_retrieved = set()
    for entry in answer.get("retrieved", []):
        in_retrieved |= tx.numbers(chunk_texts.get(entry.get("chunk_id", ""), ""))
    row["model_numbers"] = len(model_stated)
    row["model_numbers_grounded"] = len(model_stated & in_retrieved)

    # Quote hygiene: a quote must not come from figure text, an equation, a reference or front matter.
    row["quotes"], row["quotes_unquotable"] = quote_counts(cited, chunk_texts, chunk_metadata or {})

    tokens = answer.get("tokens", {})
    row["latency_s"] = float(answer.get("timings", {}).get("total_s", 0.0))
    row["prefill_tokens"] = int(tokens.get("prefill", 0))
    row["decode_tokens"] = int(tokens.get("decode", 0))
    row["mode"] = answer.get("mode", "")
    return row


def quote_counts(
    citations: list[dict[str, Any]], chunk_texts: dict[str, str], chunk_metadata: dict[str, dict[str, Any]]
) -> tuple[int, int]:
    """(quotes checked, quotes on a never-quote span): each citation's quote found in its chunk."""
    checked = bad = 0
    for citation in citations:
        chunk_id, quote = citation.get("chunk_id", ""), citation.get("quote", "")
        if not quote or chunk_id not in chunk_texts:
            continue
        checked += 1
        bad += quote_is_unquotable(quote, chunk_texts[chunk_id], chunk_metadata.get(chunk_id, {}))
    return checked, bad


def _mean(values: list[float | bool | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(sum(present) / len(present), 4) if present else None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate metrics over per-item rows (each as returned by item_metrics, plus 'type')."""
    if not rows:
        return {"n": 0}
    answerable = [r for r in rows if r["type"] != "unanswerable"]
    unanswerable = [r for r in rows if r["type"] == "unanswerable"]
    latencies = np.array([r["latency_s"] for r in rows], dtype=float)
    return {
        "n": len(rows),
        "recall_at_k": _mean([r["recall_at_k"] for r in rows]),
        "mrr": _mean([r["reciprocal_rank"] for r in rows]),
        "correctness": _mean([r["correct"] for r in rows]),
        "refusal_accuracy": _mean([r["refusal_ok"] for r in rows]),
        "unanswerable_refused": _mean([r["refused"] for r in unanswerable]),
        "answerable_refused": _mean([r["refused"] for r in answerable]),
        "citation_precision": _share(sum(r["citations_right"] for r in rows), sum(r["citations"] for r in rows)),
        "citation_recall": _mean([r["citation_recall"] for r in rows]),
        "grounded_numbers": _share(sum(r["numbers_grounded"] for r in rows), sum(r["numbers"] for r in rows)),
        "numbers_stated": sum(r["numbers"] for r in rows),
        "model_grounded_numbers": _share(
            sum(r.get("model_numbers_grounded", 0) for r in rows), sum(r.get("model_numbers", 0) for r in rows)
        ),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 2),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 2),
        "prefill_tokens_mean": round(float(np.mean([r["prefill_tokens"] for r in rows])), 1),
        "decode_tokens_mean": round(float(np.mean([r["decode_tokens"] for r in rows])), 1),
        "extractive_share": _mean([r["mode"] == "extractive" for r in rows]),
        "unquotable_quotes": _share(
            sum(r.get("quotes_unquotable", 0) for r in rows), sum(r.get("quotes", 0) for r in rows)
        ),
    }
