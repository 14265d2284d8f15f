"""The fitting script's two fits on synthetic data (fast, no model): the listwise ranker finds the
feature that marks gold candidates and keeps each feature's sign within `SIGNS`; the gate keeps the
signs of `GATE_SIGNS` even where an unbounded fit would trade correlated features against each other."""

from __future__ import annotations

import numpy as np
import pytest

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


# --- one split, one candidate path (issue 21) ---------------------------------------------------------


def test_the_shipped_weights_record_the_frozen_heldout_split():
    """Every fitted artefact names the split it was fitted on: its held-out hash is the frozen one."""
    import json

    from cove.settings import QUOTE_WEIGHTS_FILE
    from evals.freeze import heldout_hash
    from evals.split import Split

    fitted = json.loads(QUOTE_WEIGHTS_FILE.read_text())["fitted_on"]
    split = Split.of("evals/datasets/dev.jsonl")
    assert fitted["split"] == "tuning" and fitted["heldout_sha256"] == heldout_hash(split.dataset)
    assert fitted["dataset_sha256"] == split.record()["dataset_sha256"]
    assert fitted["tuning_items"] == len(split.tuning) and fitted["heldout_items"] == len(split.heldout)


def test_cached_features_of_heldout_items_never_reach_a_fit():
    from evals.split import Split

    split = Split.of("evals/datasets/dev.jsonl")
    held, tuning = sorted(split.heldout)[0], split.tuning[0].id
    rows = [Group(held, True, None, None, None), Group(tuning, True, None, None, None),
            Group("not-in-the-dataset", True, None, None, None)]  # fmt: skip
    assert [g.item for g in split.only_tuning(rows, lambda g: g.item)] == [tuning]
    assert not split.heldout & {item.id for item in split.tuning}


@pytest.mark.slow
def test_the_fitter_sees_the_features_the_runtime_scores(small_library, monkeypatch):
    """The features the fitter collects for an item's parts are the very ones the composer ranks when
    the engine answers it: same candidates, same order, same values (no extra similarity, no candidate
    the runtime would not consider)."""
    import cove.compose
    from cove.engine import AnswerEngine
    from evals.fit_quotes import collect

    seen: list[tuple[str, list[tuple[str, dict]]]] = []
    original = cove.compose.answer_candidates

    def recording(part, question, pool, scorer, limit):
        ranked = original(part, question, pool, scorer, limit)
        seen.append((part.text, [(s.candidate.text, dict(s.features)) for s in ranked]))
        return ranked

    class Scripted:
        name, parameters = "scripted", None

        def chat(self, messages, max_tokens=256, stop=None, on_token=None, on_wait=None):
            from cove.llm import Completion

            return Completion("Not stated.", prefill_tokens=1, decode_tokens=1, prompt_tokens=1, seconds=0.0,
                              finish_reason="stop")  # fmt: skip

    from cove.question import analyze
    from evals.split import Split

    # A tuning item of several parts about a paper the small library holds (LoRA or the Transformer).
    item = next(i for i in Split.of("evals/datasets/dev.jsonl").tuning
                if i.answerable and not i.history and set(i.sources) <= {"2106.09685.pdf", "1706.03762.pdf"}
                and len(analyze(i.question).parts) > 1)  # fmt: skip
    question = item.question
    engine = AnswerEngine(small_library, model=Scripted())
    monkeypatch.setattr(cove.compose, "answer_candidates", recording)
    engine.ask(question, pipeline="baseline")
    runtime = dict(seen)  # the final composition's calls (first quotes made the same ones)
    monkeypatch.setattr(cove.compose, "answer_candidates", original)
    groups = [g for g in collect(engine, [item], log=lambda *a: None) if g.primary]
    assert runtime and len(groups) == len(runtime)
    from cove.quotes import FEATURE_NAMES

    for group, (part_text, candidates) in zip(groups, runtime.items(), strict=True):
        expected = np.array([[features.get(name, 0.0) for name in FEATURE_NAMES] for _, features in candidates])
        assert group.features.shape == expected.reshape(len(candidates), len(FEATURE_NAMES)).shape, part_text
        assert np.allclose(group.features, expected.reshape(group.features.shape)), part_text


def test_a_feature_cache_is_reused_only_under_the_key_it_was_collected_under(tmp_path, capsys):
    """A cache from another feature list, index or dataset would give the fit shifted or stale
    columns: it is collected again, and the message names what changed."""
    import pickle

    from evals.fit_quotes import load_cache

    groups = _groups(np.random.default_rng(0), n=3)
    key = {"feature_names": list(FEATURE_NAMES), "index_id": "abc", "dataset_sha256": "d1"}
    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps({"key": key, "groups": groups}))
    assert [g.item for g in load_cache(path, key)] == [g.item for g in groups]
    assert load_cache(path, {**key, "feature_names": [*FEATURE_NAMES, "new_feature"]}) is None
    assert "feature_names" in capsys.readouterr().out
    path.write_bytes(pickle.dumps(groups))  # the old format: a bare list with no key
    assert load_cache(path, key) is None
    assert load_cache(tmp_path / "absent.pkl", key) is None
