"""The fitting script's two fits on synthetic data (fast, no model): the listwise ranker finds the
feature that marks gold candidates and keeps each feature's sign within `SIGNS`; the gate keeps the
signs of `GATE_SIGNS` even where an unbounded fit would trade correlated features against each other."""

from __future__ import annotations

import numpy as np

from cove.quotes import FEATURE_NAMES, GATE_FEATURES
from evals.fit_quotes import GATE_SIGNS, SIGNS, Group, fit_gate, fit_weights


def _groups(rng: np.random.Generator, n: int = 60) -> list[Group]:
    """Groups of 8 candidates where the gold one has more `focus` and is never `cut_off`; `cut_off`
    is otherwise random, and `similarity` is noise."""
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    groups = []
    for g in range(n):
        x = rng.random((8, len(FEATURE_NAMES))) * 0.2
        gold = np.zeros(8, dtype=bool)
        gold[rng.integers(8)] = True
        x[gold, index["focus"]] += 0.8
        x[:, index["cut_off"]] = (rng.random(8) < 0.3).astype(float)
        x[gold, index["cut_off"]] = 0.0
        groups.append(Group(f"item{g}", True, x, gold, np.ones(8, dtype=bool)))
    return groups


def test_the_ranker_finds_the_marking_feature_within_its_signs():
    w = dict(zip(FEATURE_NAMES, fit_weights(_groups(np.random.default_rng(0))), strict=True))
    assert w["focus"] > 1.0 and w["focus"] == max(w.values())
    assert w["cut_off"] < 0  # never a better quote
    for name, (low, high) in SIGNS.items():
        assert (low is None or w[name] >= low - 1e-9) and (high is None or w[name] <= high + 1e-9), name


def test_the_gate_keeps_its_signs_and_separates_answerable_parts():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.6
    x = rng.random((300, len(GATE_FEATURES)))
    score, focus = GATE_FEATURES.index("score"), GATE_FEATURES.index("focus")
    x[:, score] += 2.0 * y
    x[:, focus] = x[:, score] * 0.9 + 0.1 * rng.random(300)  # nearly the same as the score
    number = GATE_FEATURES.index("number_about")
    x[:, number] = 1.0 - 0.5 * y + 0.3 * rng.random(300)  # against its meaning: unbounded, it goes negative
    gate = fit_gate(x, y, max_false_refusals=0.05)
    for name, (low, high) in GATE_SIGNS.items():
        value = gate["weights"][name]
        assert (low is None or value >= low - 1e-9) and (high is None or value <= high + 1e-9), (name, value)
    assert gate["weights"]["number_about"] == 0.0  # held at its bound, not negative
    assert gate["weights"]["score"] + gate["weights"]["focus"] > 0.5
    assert gate["balanced_accuracy_on_tuning"] > 0.85 and 0 < gate["threshold"] < 1
