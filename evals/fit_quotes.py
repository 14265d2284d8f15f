"""Fitting the quote scorer's weights on the dev set's tuning items (never the held-out ones).

For every answerable tuning item, the engine retrieves as it does when answering (the single-shot
retrieval, and for a multi-part question each part's own retrieval as chain-of-verification does),
cuts the question into parts and lists the candidate sentences with their named features
(`cove.quotes.FEATURES`). A candidate is *gold* when it contains one of the item's evidence quotes
(or most of it). The weights maximise, over all (item, part) groups, the probability a softmax over
the group's candidates gives its gold candidates (a listwise logistic ranker, L2-regularised, fitted
with L-BFGS), so they say how much each feature matters for finding the sentence a reader would quote.
Each feature's sign is fixed in advance where its meaning fixes it (`SIGNS`): the fit says how much,
never whether a cut-off sentence is better.

The answerability gate is fitted next: a logistic regression on named features of each part's best
candidate (its score, how much of the asked thing it states, ...: `cove.quotes.GATE_FEATURES`),
answerable items' parts against unanswerable items' parts, with the probability cut chosen for
balanced accuracy with at most `--max-false-refusals` of answerable parts below it.

    COVE_HOME=.eval-home python -m evals.fit_quotes --dataset evals/datasets/dev.jsonl --corpus ../shared/corpus
"""

from __future__ import annotations

import argparse
import datetime
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cove import text as tx
from cove.engine import AnswerEngine
from cove.engine.candidates import PartPool, candidate_pools, scored_candidates
from cove.quotes import FEATURE_NAMES, GATE_FEATURES, WEIGHTS_FILE, missing_qualifiers
from cove.settings import load_settings
from evals.dataset import EvalItem
from evals.split import Split


@dataclass
class Group:
    """One part of one item's question: its candidates' features and which are gold."""

    item: str
    answerable: bool
    features: np.ndarray  # candidates x features
    gold: np.ndarray  # bool per candidate
    qualified: np.ndarray  # bool per candidate: its passage states the part's names and numbers
    primary: bool = True  # from the question's own retrieval (not a verification search)


_TABLE_ROW = re.compile(r"^(?:Table|TABLE)\s+[\w.]+(?: \(.*?\))?: (?=.*\|)")


def is_gold(candidate: str, quotes: list[str]) -> bool:
    """Does the candidate contain an evidence quote (or at least 60% of its words, in a sentence
    that is mostly made of them)? A table row counts by its cells alone (without the table's label
    and header that the runtime quotes it with): it is gold when the quote holds the whole row."""
    text = tx.match_form(candidate)
    words = tx.words(text)
    row = _TABLE_ROW.sub("", candidate, count=1) if _TABLE_ROW.match(candidate) else ""
    cells = tx.match_form(row.replace(" | ", " ")) if row else ""
    for quote in quotes:
        q = tx.match_form(quote)
        if q and (q in text or (len(text) > 20 and text in q) or (len(cells) > 10 and cells in q)):
            return True
        q_words = tx.words(q)
        if q_words and len(q_words & words) >= 0.6 * len(q_words) and len(q_words & words) >= 0.5 * len(words):
            return True
    return False


def collect(engine: AnswerEngine, items: list[EvalItem], log=print) -> list[Group]:
    """Feature groups for every (item, part) and pool the engine answers from, with the features the
    runtime computes (`cove.engine.candidates`: one candidate path for fitting and serving)."""
    groups: list[Group] = []
    for number, item in enumerate(items, 1):
        for entry in candidate_pools(engine, item.question, item.history_dicts()):
            groups.append(group_of(engine, item, entry))
        if number % 10 == 0:
            log(f"  {number}/{len(items)} items")
    return groups


def group_of(engine: AnswerEngine, item: EvalItem, entry: PartPool) -> Group:
    """One part's candidates as the composer sees them: their features, which are gold, which qualify."""
    scored = scored_candidates(engine, entry)
    features = np.array([[s.features.get(name, 0.0) for name in FEATURE_NAMES] for s in scored], dtype=float)
    gold = np.array([is_gold(s.candidate.text, item.quotes) for s in scored], dtype=bool)
    qualified = np.array(
        [not missing_qualifiers(entry.part, entry.pool.evidence[s.candidate.n], entry.pool) for s in scored], dtype=bool
    )
    return Group(item.id, item.answerable, features.reshape(len(scored), len(FEATURE_NAMES)), gold, qualified,
                 entry.primary)  # fmt: skip


def fit_weights(groups: list[Group], l2: float = 0.05) -> np.ndarray:
    """Listwise softmax ranker: maximise the log-probability of each group's gold candidates."""
    from scipy.optimize import minimize

    usable = [g for g in groups if g.gold.any() and len(g.gold) > 1]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        total, grad = l2 * float(w @ w), 2 * l2 * w
        for g in usable:
            scores = g.features @ w
            scores -= scores.max()
            p = np.exp(scores)
            p /= p.sum()
            p_gold = p[g.gold].sum()
            total -= np.log(p_gold + 1e-12)
            # d(-log sum_gold p)/dw = E_p[x] - E_{p|gold}[x]
            grad += p @ g.features - (p[g.gold] / (p_gold + 1e-12)) @ g.features[g.gold]
        return total / len(usable), grad / len(usable)

    start = np.zeros(len(FEATURE_NAMES))
    bounds = [SIGNS.get(name, (None, None)) for name in FEATURE_NAMES]
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return result.x


# What each feature can only do, known before any data: more of what the question asks for never
# makes a sentence a worse answer, and a cut-off sentence, a heading, a question, a run of numbers
# or symbols never makes it a better one. The fit chooses how much, within these signs.
_UP, _DOWN = (0.0, None), (None, 0.0)
SIGNS = {
    **dict.fromkeys(
        ("focus", "focus_all", "new_name", "context", "passage", "similarity", "number_about", "named_paper", "reason"),
        _UP,
    ),
    **dict.fromkeys(
        ("cut_off", "question_mark", "heading", "short", "long", "numeric_density", "symbol_density", "other_paper"),
        _DOWN,
    ),
    "no_number": _DOWN,
}


def best_rows(groups: list[Group], w: np.ndarray) -> list[tuple[Group, np.ndarray | None, float, bool]]:
    """Per group: the best qualified candidate's features, its score, and whether it is gold."""
    out = []
    for g in groups:
        scores = np.where(g.qualified, g.features @ w, -np.inf) if len(g.gold) else np.array([])
        if not len(scores) or not np.isfinite(scores.max()):
            out.append((g, None, -np.inf, False))
            continue
        best = int(np.argmax(scores))
        out.append((g, g.features[best], float(scores[best]), bool(g.gold[best])))
    return out


def gate_matrix(rows) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) for the gate: GATE_FEATURES of each primary group's best candidate; y = answerable."""
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    xs, ys = [], []
    for g, features, score, _ in rows:
        if features is None or not g.primary:
            continue
        xs.append([score if name == "score" else features[index[name]] for name in GATE_FEATURES])
        ys.append(g.answerable)
    return np.array(xs, dtype=float), np.array(ys, dtype=bool)


# The gate's features can only raise the odds that the best sentence answers (its score, how much of
# the asked thing it states, how close it is in meaning, a number about the asked thing, a good
# retrieval rank) or only lower them (no number where one is asked). Unconstrained, correlated
# features trade off against each other and a fit can give "states more of the asked thing" a
# negative weight; the signs keep the gate monotone, which is what lets it be explained.
GATE_SIGNS = {
    **dict.fromkeys(("score", "focus", "context", "similarity", "passage_similarity", "number_about", "rank"), _UP),
    "no_number": _DOWN,
}


def fit_gate(x: np.ndarray, y: np.ndarray, max_false_refusals: float, l2: float = 1.0) -> dict:
    """Logistic regression (balanced classes, L2, signs bounded by `GATE_SIGNS`) on the gate
    features, and the probability cut that best separates answerable from unanswerable parts with
    at most `max_false_refusals` of the answerable ones below it."""
    from scipy.optimize import minimize

    weight = np.where(y, 0.5 / max(1, y.sum()), 0.5 / max(1, (~y).sum()))  # balanced classes
    target = y.astype(float)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = x @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        nll = -np.sum(weight * (target * np.log(p + 1e-12) + (1 - target) * np.log(1 - p + 1e-12)))
        residual = weight * (p - target)
        reg = l2 / len(y)
        grad = np.append(x.T @ residual + 2 * reg * w, residual.sum())
        return nll + reg * float(w @ w), grad

    bounds = [GATE_SIGNS.get(name, (None, None)) for name in GATE_FEATURES] + [(None, None)]
    theta = minimize(loss, np.zeros(len(GATE_FEATURES) + 1), jac=True, method="L-BFGS-B", bounds=bounds).x
    p = 1.0 / (1.0 + np.exp(-(x @ theta[:-1] + theta[-1])))
    best, best_acc = 0.0, -1.0
    for cut in np.unique(p):
        refused = float((p[y] < cut).mean()) if y.any() else 0.0
        caught = float((p[~y] < cut).mean()) if (~y).any() else 1.0
        if refused <= max_false_refusals and (1 - refused + caught) / 2 > best_acc:
            best, best_acc = float(cut), (1 - refused + caught) / 2
    return {
        "weights": {name: round(float(c), 4) for name, c in zip(GATE_FEATURES, theta[:-1], strict=True)},
        "bias": round(float(theta[-1]), 4),
        "threshold": round(best, 4),
        "balanced_accuracy_on_tuning": round(best_acc, 4),
    }


def cache_key(settings, split: Split) -> dict:
    """What the collected features depend on: the feature list, the index, the candidate settings and the
    dataset. A cache made under another key is collected again, never reused with shifted columns."""
    return {
        "feature_names": list(FEATURE_NAMES),
        "index_id": settings.index_id(),
        "retrieve": settings.retrieve.model_dump(mode="json"),
        "quotes": settings.quotes.model_dump(mode="json"),
        "dataset_sha256": split.record()["dataset_sha256"],
    }


def load_cache(path: Path, key: dict) -> list[Group] | None:
    """The cached feature groups at `path` if they were collected under `key` (else None, saying why)."""
    if not path.is_file():
        return None
    cached = pickle.loads(path.read_bytes())  # a file this script wrote for its user, not shared input
    made_under = (cached.get("key") if isinstance(cached, dict) else None) or {}  # an old cache: a bare list
    if made_under != key:
        stale = [k for k in key if made_under.get(k) != key[k]]
        print(f"{path}: collected under other {', '.join(stale)}: collecting again")
        return None
    return cached["groups"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=Path("evals/datasets/dev.jsonl"))
    parser.add_argument("--corpus", type=Path, default=None, help="ingest the dataset's papers from here first")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--l2", type=float, default=0.05)
    parser.add_argument("--max-false-refusals", type=float, default=0.05)
    parser.add_argument("--features", type=Path, default=None, help="cache of the collected features (pickle)")
    args = parser.parse_args()

    split = Split.of(args.dataset)
    items = split.tuning
    settings = load_settings()
    settings.reader.kind = "off"  # the features are fitted on the scorer's own ranking, not the reader's
    if args.corpus is not None:
        from evals.corpus import ingest_corpus

        ingest_corpus(args.corpus, list(split.items), settings)
    key = cache_key(settings, split)
    cached = load_cache(args.features, key) if args.features is not None else None
    if cached is not None:
        groups = split.only_tuning(cached, lambda group: group.item)  # a stale cache cannot bring held-out items
        dropped = len(cached) - len(groups)
        print(f"features of {len(groups)} groups from {args.features} ({dropped} not tuning: dropped)")
    else:
        engine = AnswerEngine(settings)
        print(f"collecting features for {len(items)} tuning items (held out and never used: {len(split.heldout)})")
        groups = collect(engine, items)
        if args.features is not None:
            args.features.write_bytes(pickle.dumps({"key": key, "groups": groups}))
    w = fit_weights(groups, args.l2)
    rows = best_rows(groups, w)
    answerable = [hit for g, _, _, hit in rows if g.answerable and g.gold.any()]
    accuracy = sum(answerable) / max(1, len(answerable))
    gate = fit_gate(*gate_matrix(rows), args.max_false_refusals)
    weights = {name: round(float(v), 4) for name, v in zip(FEATURE_NAMES, w, strict=True)}
    data = {
        "note": "Fitted by evals/fit_quotes.py on the tuning items of the dev set (held-out items never used).",
        "fitted_on": {
            **split.record(),
            "groups": len(groups),
            "groups_with_gold": sum(bool(g.gold.any()) for g in groups),
            "top1_gold_accuracy": round(accuracy, 4),
            "l2": args.l2,
            "date": datetime.date.today().isoformat(),
        },
        "weights": weights,
        "gate": gate,
    }
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
