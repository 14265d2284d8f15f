"""The question's parts and the fitted quote scorer, on text that is not from the dev set (fast, no model).

Property tests: whatever the topic, junk never beats a plain sentence stating the asked number:
a cut-off sentence, a numbered heading glued to text, a run of figure labels, an equation, and a
sentence the parser marked as not prose (equation span, figure block) are never the pick."""

from __future__ import annotations

import ast
import json
import random
import re
from difflib import SequenceMatcher
from pathlib import Path

import pytest

from cove.checks import Evidence
from cove.question import analyze
from cove.quotes import FEATURE_NAMES, Pool, QuoteScorer, candidates, default_weights
from evals.dataset import load_dataset

SEEDS = range(24)  # the property test's random cases


def parts(question: str, papers=lambda text: set()):
    return [(sorted(p.focus), p.wants_number) for p in analyze(question, papers).parts]


def test_a_question_is_cut_into_the_facts_it_asks_for():
    assert len(analyze("How many rotor blades does the small turbine use?").parts) == 1
    two = analyze("Which solver and tolerance values were used to fit the model?").parts
    assert [sorted(p.focus) for p in two] == [["solver"], ["toler", "valu"]]
    assert all({"fit", "model"} <= p.context for p in two)
    clauses = analyze("What fabric was it woven from, and how many threads per inch does it have?").parts
    assert len(clauses) == 2 and clauses[1].wants_number and not clauses[0].wants_number
    three = analyze("What are the learning rate, batch size and warmup used for the model?").parts
    assert len(three) == 3
    compared = analyze("Compare the dropout of the small model with the large model").parts
    assert len(compared) == 2 and "small" in compared[0].focus and "larg" in compared[1].focus


def test_a_question_about_two_papers_asks_its_thing_of_each():
    named = {"alpha": "Alpha", "beta": "BetaNet"}

    def papers(text):
        return {d for d, name in named.items() if name.lower() in text.lower()}

    question = analyze("What normalization do Alpha and BetaNet use?", papers)
    assert question.papers == {"alpha", "beta"}
    assert [p.papers for p in question.parts] == [{"alpha"}, {"beta"}]
    assert all(p.focus == {"normal"} or "normal" in "".join(p.focus) for p in question.parts)


TOPICS = [
    ("gears", "the gearbox", "gearbox"),
    ("filters", "the encoder", "encoder"),
    ("epochs", "the tokenizer", "tokenizer"),
    ("shards", "the index", "index"),
    ("experts", "the router", "router"),
    ("buckets", "the hash table", "hash"),
]


def _case(rng: random.Random):
    thing, subject, word = rng.choice(TOPICS)
    n = rng.randint(3, 97)
    question = f"How many {thing} does {subject} use?"
    plain = f"In all our experiments {subject} uses {n} {thing} of equal size."
    junk = [
        f"Since {subject} uses {n} {thing} we could not tell whether the",  # cut off mid-sentence
        f"4.2 {thing.capitalize()} of the {word} {subject.capitalize()} uses {n} {thing}",  # heading glued on
        f"{thing} {n} {n * 2} {n * 3} {n * 4} {word} 0.1 0.2 0.4 0.8 1.6",  # figure labels
        f"{word}({thing}) = softmax(W_{n} x + b) / sqrt(d_{n}) + sum_i x_i^2",  # an equation
        f"How many {thing} should {subject} use?",  # the paper's own question
    ]
    return question, plain, junk


@pytest.mark.parametrize("seed", SEEDS)
def test_junk_never_beats_a_plain_sentence_stating_the_asked_number(seed):
    rng = random.Random(seed)
    question, plain, junk = _case(rng)
    sentences = junk + [plain]
    rng.shuffle(sentences)
    evidence = {
        i + 1: Evidence(i + 1, text + ("" if text.endswith(("?", "the")) else "."), "A paper", rank=i + 1)
        for i, text in enumerate(sentences)
    }
    pool = Pool.build(evidence)
    q = analyze(question)
    best = QuoteScorer(default_weights()).rank(q.parts[0], q, pool)[0]
    assert best.candidate.text.startswith(plain), best.candidate.text


def test_text_marked_as_not_prose_is_never_a_candidate():
    text = "The pump uses 12 valves. E = mc^2 holds for 12 valves in this setup. The end of the passage."
    start = text.index("E = mc^2")
    marked = Evidence(1, text, "A paper", unquotable=[(start, start + 8, "equation")])
    assert not any("mc^2" in c.text for c in candidates(marked))
    assert candidates(Evidence(1, text, "A paper", block="figure")) == []
    assert candidates(Evidence(1, text, "A paper", block="reference")) == []


def test_table_rows_are_quoted_with_their_header():
    table = "Table 3: Turbine variants.\nturbine | blades | rotors\nsmall | 3 | 1\nlarge | 5 | 2"
    header = ["turbine", "blades", "rotors"]
    evidence = Evidence(1, table, "A paper", block="table", label="Table 3", table_header=header)
    rows = candidates(evidence)
    assert [r.text for r in rows] == [
        "Table 3 (turbine | blades | rotors): small | 3 | 1",
        "Table 3 (turbine | blades | rotors): large | 5 | 2",
    ]


def test_explain_names_each_features_contribution_and_weights_are_fitted_data():
    evidence = {1: Evidence(1, "The hash table uses 64 buckets of equal size.", "A paper", rank=1)}
    q = analyze("How many buckets does the hash table use?")
    scorer = QuoteScorer(default_weights())
    best = scorer.rank(q.parts[0], q, Pool.build(evidence))[0]
    explained = scorer.explain(best)
    assert explained and set(explained) <= set(FEATURE_NAMES) | {"bias"}
    assert abs(sum(explained.values()) - best.score) < 1e-3
    shipped = json.loads((FEATURE_NAMES and __import__("cove.quotes").quotes.WEIGHTS_FILE).read_text())
    assert set(shipped["weights"]) <= set(FEATURE_NAMES) | {"bias"} and "threshold" in shipped["gate"]
    with pytest.raises(ValueError, match="unknown quote features"):
        QuoteScorer({"number_bonus": 1.0})


# --- this file's text stays out of the dev set ---------------------------------------------------------

DEV_SET = Path(__file__).resolve().parents[1] / "evals" / "datasets" / "dev.jsonl"
NEAR = 0.75  # word-level similarity from which two texts are one question reworded (f02 vs its copy: 0.91)


def _words(text: str) -> list[str]:
    """Normalised text: case-folded words, punctuation and spacing dropped."""
    return re.findall(r"\w+", text.casefold())


def _this_files_text() -> list[str]:
    """Every question and sentence this file gives the analyser and the scorer: its string literals of
    four words or more, and the property test's generated cases for every seed it runs."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for seed in SEEDS:
        question, plain, junk = _case(random.Random(seed))
        texts += [question, plain, *junk]
    return [t for t in texts if len(_words(t)) >= 4]


def _dev_set_text() -> list[tuple[str, str]]:
    """(item id, text) for every question, conversation turn, gold quote and reference answer of the dev set."""
    texts = []
    for item in load_dataset(DEV_SET):
        own = [item.question, item.answer, *item.quotes, *(turn.content for turn in item.history)]
        texts += [(item.id, text) for text in own if text]
    return texts


def _same_text(a: list[str], b: list[str]) -> bool:
    """Exact, one inside the other (five words or more), or near-exact (a reworded copy)."""
    joined_a, joined_b = f" {' '.join(a)} ", f" {' '.join(b)} "
    if joined_a == joined_b:
        return True
    if (len(a) >= 5 and joined_a in joined_b) or (len(b) >= 5 and joined_b in joined_a):
        return True
    return SequenceMatcher(None, a, b, autojunk=False).ratio() >= NEAR


def test_no_question_or_sentence_here_is_from_the_dev_set():
    """The scorer's weights are fitted on the dev set: a test on its items would test what was fitted,
    not what generalises (the module docstring's promise, kept by checking it)."""
    dev = [(item_id, text, _words(text)) for item_id, text in _dev_set_text()]
    found = [
        f"{ours!r} ~ {item_id}: {theirs!r}"
        for ours in _this_files_text()
        for item_id, theirs, words in dev
        if _same_text(_words(ours), words)
    ]
    assert not found, "\n".join(found)
