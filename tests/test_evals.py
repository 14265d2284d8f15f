"""The prompt evaluation suite: the dev set and its evidence checker, the metrics on hand-made
answers, variants, the report, and a smoke run of `cove eval` (real engine, bundled model, both
pipelines) that must finish and write every output. Scores are not asserted in the smoke run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import CORPUS, ROOT

from evals.dataset import (
    ITEM_TYPES,
    DatasetError,
    EvalItem,
    check_evidence,
    describe,
    heldout_ids,
    load_dataset,
)
from evals.freeze import choose_heldout, heldout_hash
from evals.metrics import item_metrics, normalize, source_key, summarize
from evals.report import write_outputs
from evals.targets import TARGETS, judge
from evals.variants import VariantError, parse_variant, unique_names

DEV = ROOT / "evals" / "datasets" / "dev.jsonl"
PNG = b"\x89PNG\r\n\x1a\n"


# --- the dev set ---------------------------------------------------------------------------------------


def test_dev_set_has_the_required_shape():
    items = load_dataset(DEV)
    counts = describe(items)
    assert len(items) >= 150
    assert all(counts[t] > 0 for t in ITEM_TYPES), counts
    assert counts["multi-fact"] >= 40 and counts["table"] >= 15 and counts["follow-up"] >= 15
    assert counts["comparison"] + counts["multi-paper"] >= 15 and counts["unanswerable"] >= 20
    raw_keys = {key for line in DEV.read_text().splitlines() for key in json.loads(line)}
    assert raw_keys <= {"id", "type", "question", "history", "answer", "must_include", "source", "pages", "evidence"}
    for item in items:
        if item.type == "multi-paper":
            assert isinstance(item.source, list) and len(item.source) == 2 == len(item.pages) == len(item.quotes)
        if item.type == "multi-fact":
            assert len(item.must_include) >= 2, item.id
    # Facts deep in the papers: most gold pages are past the first page.
    pages = [p for i in items for _, p in i.gold_pages()]
    assert sum(p > 1 for p in pages) / len(pages) > 0.75


def test_a_third_is_held_out_frozen_by_hash_and_named_in_the_readme():
    items = load_dataset(DEV)
    held = heldout_ids(DEV)
    assert held <= {i.id for i in items}
    assert len(held) >= 50 and 0.32 <= len(held) / len(items) <= 0.35
    assert {"multi-fact", "table", "unanswerable", "follow-up", "comparison", "multi-paper"} <= {
        i.type for i in items if i.id in held
    }
    readme = (DEV.parent / "README.md").read_text()
    assert heldout_hash(DEV) in readme, "the held-out items changed since they were frozen (or the README hash did)"


def test_the_code_quotes_no_dev_question():
    """Rules are about question syntax, not about particular questions: no run of five words of a
    dev question (held-out or tuning) appears in the product's code, its comments or docstrings,
    except inside a paper's title (titles are how users name papers)."""
    import re
    import tomllib

    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def runs(ws: list[str], n: int = 5) -> set[tuple[str, ...]]:
        return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}

    papers = tomllib.loads((ROOT / "ingest" / "reading_list.toml").read_text())["paper"]
    titled = set().union(*(runs(words(p.get("title", ""))) for p in papers))
    asked = {run: item.id for item in load_dataset(DEV) for run in runs(words(item.question)) - titled}
    quoted = []
    for package in ("cove", "ingest", "service", "app", "prompts"):
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix in {".py", ".md", ".toml", ".txt"}:
                found = runs(words(path.read_text())) & asked.keys()
                quoted += [f"{path.relative_to(ROOT)}: '{' '.join(r)}' ({asked[r]})" for r in sorted(found)]
    assert not quoted, "\n".join(quoted)


def test_the_papers_held_out_of_training_are_the_seeded_draw(corpus):
    """The reader's paper-level held-out set is the frozen draw over the corpus, not a choice."""
    from evals.freeze import choose_papers, heldout_papers

    files = [line.split("\t")[0] for line in (corpus / "MANIFEST.tsv").read_text().splitlines()[1:] if line]
    assert len(files) == 11
    assert heldout_papers(DEV) == choose_papers(files, 2, seed=22) == ["2012.14913.pdf", "2106.09685.pdf"]


def test_freeze_draws_by_type_reproducibly():
    types = {f"i{n}": ("table" if n % 3 == 0 else "multi-fact") for n in range(30)}
    first = choose_heldout(types, sorted(types), 10, seed=3)
    assert first == choose_heldout(types, sorted(types), 10, seed=3) and len(first) == 10
    assert sum(types[i] == "table" for i in first) == 3  # a third of the items are tables, a third of the draw


def test_every_evidence_quote_is_on_its_page():
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent: the evidence checker needs the shared corpus beside the repo")
    assert check_evidence(load_dataset(DEV), CORPUS) == []


def test_checker_reports_a_wrong_page_and_an_invented_quote(corpus):
    right = "In this work we employ h = 8 parallel attention layers, or heads."
    moved = _item(source="1706.03762.pdf", pages=[4], evidence=right)
    invented = _item(id="b", source="1706.03762.pdf", pages=[5], evidence="we employ h = 16 parallel attention layers")
    missing = _item(id="c", source="nope.pdf", pages=[1], evidence="x")
    problems = check_evidence([moved, invented, missing], corpus)
    assert len(problems) == 3
    assert "it is on page 5" in problems[0]
    assert problems[1].startswith("b: quote not on 1706.03762.pdf p.5")
    assert "nope.pdf is not in" in problems[2]


def test_invalid_items_are_reported_with_their_line(tmp_path):
    good = _item().model_dump()
    lines = [
        json.dumps(good),
        json.dumps(good | {"id": "x", "extra": 1}),  # unknown field
        json.dumps(good | {"id": "y", "type": "trivia"}),
        json.dumps(good | {"id": "z", "source": ["a.pdf", "b.pdf"], "pages": [1]}),  # pages do not pair up
        json.dumps({**good, "id": "u", "type": "unanswerable"}),  # unanswerable with a source
        json.dumps(good),  # duplicate id
        "{not json",
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    message = str(err.value)
    for line in range(2, 8):
        assert f"line {line}:" in message
    assert "line 1:" not in message


# --- metrics ---------------------------------------------------------------------------------------------


def _item(**fields) -> EvalItem:
    base = {
        "id": "a",
        "type": "numeric",
        "question": "How many heads?",
        "answer": "8",
        "must_include": [["8 heads", "eight heads"]],
        "source": "1706.03762.pdf",
        "pages": [5],
        "evidence": "we employ h = 8 parallel attention layers",
    }
    return EvalItem.model_validate(base | fields)


def _answer(text: str, citations=(), retrieved=(), refused=False) -> dict:
    return {
        "answer": text,
        "refused": refused,
        "citations": [
            {"n": n, "source": s, "page": p, "chunk_id": c} for n, (s, p, c) in enumerate(citations, start=1)
        ],
        "retrieved": [{"source": s, "page": p, "chunk_id": c} for s, p, c in retrieved],
        "timings": {"total_s": 2.5},
        "tokens": {"prefill": 300, "decode": 40},
        "mode": "generated",
    }


CHUNKS = {
    "t:5": "In this work we employ h = 8 parallel attention layers, or heads. dk = dv = 64.",
    "t:9": "Table 3: variations. base 6 512 2048 8 64 64",
    "t:12": "Appendix: we employ h = 8 parallel attention layers in every model.",
}


def test_a_right_answer_scores_on_every_metric():
    retrieved = [("1706.03762v7.pdf", 9, "t:9"), ("https://arxiv.org/abs/1706.03762", 5, "t:5")]
    answer = _answer("The base model uses 8 heads [1].", [("1706.03762.pdf", 5, "t:5")], retrieved)
    m = item_metrics(_item(), answer, CHUNKS, k=5)
    assert m["correct"] is True and m["refusal_ok"] is True and m["missing"] == []
    assert m["recall_at_k"] == 1.0 and m["reciprocal_rank"] == 0.5
    assert (m["citations"], m["citations_right"], m["citation_recall"]) == (1, 1, 1.0)
    assert (m["numbers"], m["numbers_grounded"]) == (1, 1)
    assert (m["latency_s"], m["prefill_tokens"], m["decode_tokens"]) == (2.5, 300, 40)


def test_wrong_numbers_pages_and_refusals_are_caught():
    # An invented number, cited to a page that is not gold and whose chunk lacks the evidence.
    wrong = _answer("The base model uses 64 heads [1].", [("1706.03762.pdf", 9, "t:9")], [("1706.03762.pdf", 9, "t:9")])
    m = item_metrics(_item(), wrong, CHUNKS, k=5)
    assert m["correct"] is False and m["missing"] == ["8 heads"]
    assert m["recall_at_k"] == 0.0 and m["reciprocal_rank"] == 0.0
    assert m["citations_right"] == 0 and m["citation_recall"] == 0.0
    assert (m["numbers"], m["numbers_grounded"]) == (1, 1), "64 is in the cited chunk (grounded, yet wrong)"

    invented = _answer("It uses 12 heads [1].", [("1706.03762.pdf", 5, "t:5")])
    assert item_metrics(_item(), invented, CHUNKS, k=5)["ungrounded"] == ["12"]

    # Off the gold page, but the cited chunk contains the evidence: the citation is right.
    elsewhere = _answer("It uses 8 heads [1].", [("1706.03762.pdf", 12, "t:12")])
    assert item_metrics(_item(), elsewhere, CHUNKS, k=5)["citations_right"] == 1

    refused = _answer("The library does not cover this. Closest sources: Attention p.5.", refused=True)
    m = item_metrics(_item(), refused, CHUNKS, k=5)
    assert m["correct"] is False and m["refusal_ok"] is False and m["numbers"] == 0

    unanswerable = EvalItem(id="u", type="unanswerable", question="Mamba?", answer="", source=[], evidence="")
    m = item_metrics(unanswerable, refused, CHUNKS, k=5)
    assert m["refusal_ok"] is True and m["correct"] is None and m["recall_at_k"] is None
    answered = _answer("Mamba uses 8 heads [1].", [("1706.03762.pdf", 5, "t:5")])
    m = item_metrics(unanswerable, answered, CHUNKS, k=5)
    assert m["refusal_ok"] is False and m["citations"] == 1 and m["citations_right"] == 0


def test_two_paper_items_need_both_pages_and_both_facts():
    item = _item(
        type="multi-paper",
        source=["1706.03762.pdf", "gpt1_language_understanding_paper.pdf"],
        pages=[5, 5],
        evidence=["h = 8 parallel attention layers", "12 attention heads"],
        must_include=[["8 heads"], ["12 heads", "12 attention"]],
    )
    half = _answer("The Transformer uses 8 heads [1].", [("1706.03762.pdf", 5, "t:5")], [("1706.03762.pdf", 5, "t:5")])
    m = item_metrics(item, half, CHUNKS, k=5)
    assert m["correct"] is False and m["missing"] == ["12 heads"]
    assert m["recall_at_k"] == 0.5 and m["citation_recall"] == 0.5


def test_matching_ignores_case_ligatures_and_line_break_hyphens():
    assert normalize("The ﬁrst  probabil- ity") == normalize("the first probability")
    assert normalize("3\x02 speedup") == "3 speedup"
    assert source_key("papers/2106.09685v2.pdf") == source_key("https://arxiv.org/pdf/2106.09685") == "2106.09685"
    assert source_key("gpt1_language_understanding_paper.pdf") == "gpt1_language_understanding_paper"


def test_summary_and_held_out_targets_count_errors_as_failures():
    right = _answer("8 heads [1].", [("1706.03762.pdf", 5, "t:5")])
    wrong = _answer("64 heads [1].", [("1706.03762.pdf", 9, "t:9")])
    rows = [{"type": "numeric", **item_metrics(_item(), a, CHUNKS, 5)} for a in (right, wrong)]
    summary = summarize(rows)
    assert summary["correctness"] == 0.5 and summary["citation_precision"] == 0.5
    assert summary["refusal_accuracy"] == 1.0 and summary["latency_p50_s"] == 2.5

    def row(item_id, variant, text, held=True, error=False):
        base = {"item_id": item_id, "variant": variant, "pipeline": variant, "type": "numeric"}
        if error:
            return base | {"error": "RuntimeError: boom", "elapsed_s": 1.0}
        answer = _answer(text, [("1706.03762.pdf", 5, "t:5")])
        return base | {"answer": answer, "metrics": item_metrics(_item(id=item_id), answer, CHUNKS, 5)}

    results = [row("a", "baseline", "8 heads [1]."), row("b", "baseline", "", error=True),
               row("a", "cove", "8 heads [1]."), row("b", "cove", "8 heads [1]."),
               row("t", "baseline", "64 heads [1].")]  # fmt: skip
    judged = {t["name"]: t for t in judge(results, heldout={"a", "b"})}
    single = judged["single-shot correctness"]
    assert single["value"] == 0.5 and not single["met"], "the error on b counts as a wrong answer; t is not held out"
    assert judged["CoVe correctness"]["value"] == 1.0 and judged["CoVe correctness"]["met"]
    assert judged["share of CoVe answers identical to single-shot's"]["value"] == 1.0
    assert {t.name for t in TARGETS} == set(judged)


def test_quotes_from_figures_equations_references_and_front_matter_are_counted():
    text = "Attention(Q, K, V) = softmax(QK^T / sqrt(dk)) V (1)\nWe call it scaled dot-product attention."
    reference = "Ba, J., Kiros, J. Layer normalization. arXiv:1607.06450, 2016."
    chunks = {"p": text, "r": reference, "f": "0 200 400 Billion of tokens"}
    metadata = {
        "p": {"block": "prose", "spans": json.dumps([[0, text.index("\n"), "equation"]])},
        "r": {"block": "reference", "spans": json.dumps([[0, 62, "reference"]])},
        "f": {"block": "figure", "spans": "[]"},
    }

    def quoted(*pairs):
        answer = _answer("The answer [1].", [("1706.03762.pdf", 4, c) for c, _ in pairs])
        for citation, (_, quote) in zip(answer["citations"], pairs, strict=True):
            citation["quote"] = quote
        return item_metrics(_item(), answer, chunks, k=5, chunk_metadata=metadata)

    clean = quoted(("p", "We call it scaled  dot-product attention."))
    assert (clean["quotes"], clean["quotes_unquotable"]) == (1, 0)
    equation = "Attention(Q, K, V) = softmax(QK^T / sqrt(dk)) V"
    bad = quoted(("p", equation), ("r", "Layer normalization."), ("f", "Billion of tokens"))
    assert (bad["quotes"], bad["quotes_unquotable"]) == (3, 3)
    summary = summarize([{"type": "numeric", **clean}, {"type": "numeric", **bad}])
    assert summary["unquotable_quotes"] == 0.75
    assert summarize([{"type": "numeric", **clean}])["unquotable_quotes"] == 0.0


# --- variants and report -----------------------------------------------------------------------------------


def test_variants_from_names_files_and_inline_specs(tmp_path):
    assert parse_variant("baseline").settings_overrides() == {"answer": {"pipeline": "baseline"}}
    k8 = parse_variant("cove-k8")  # evals/variants/cove-k8.toml
    assert (k8.pipeline, k8.overrides) == ("cove", {"retrieve": {"k": 8}})
    inline = parse_variant("strict=cove,answer.min_relevance=0.5,answer.prompts_dir=prompts-v2")
    assert inline.settings_overrides() == {
        "answer": {"min_relevance": 0.5, "prompts_dir": "prompts-v2", "pipeline": "cove"}
    }
    with pytest.raises(VariantError, match="unknown variant"):
        parse_variant("cvoe")
    with pytest.raises(VariantError, match="pipeline must be"):
        parse_variant("x=sideways")
    with pytest.raises(VariantError, match="must differ"):
        unique_names([parse_variant("cove"), parse_variant("cove")])


def test_report_names_missed_targets_and_draws_plots(tmp_path):
    def row(variant, pipeline, item, text, page, chunk):
        answer = _answer(text, [("1706.03762.pdf", page, chunk)], [("1706.03762.pdf", page, chunk)])
        metrics = item_metrics(item, answer, CHUNKS, 5)
        return {"item_id": item.id, "variant": variant, "pipeline": pipeline, "type": item.type,
                "question": item.question, "reference": item.answer, "answer": answer, "metrics": metrics}  # fmt: skip

    items = [_item(id="a"), _item(id="b", type="factoid")]
    rows = [
        row("cove", "cove", items[0], "It uses 8 heads [1].", 5, "t:5"),
        row("cove", "cove", items[1], "It uses 8 heads [1].", 5, "t:5"),
        row("baseline", "baseline", items[0], "It uses 64 heads [1].", 9, "t:9"),
        row("baseline", "baseline", items[1], "It uses 12 heads [1].", 5, "t:5"),
    ]
    meta = {"dataset": "d.jsonl", "items": 2, "heldout": 1, "model": "m", "k": 5, "answered": 4, "errors": 0,
            "wall_s": 9.0}  # fmt: skip
    summary = write_outputs(rows, ["cove", "baseline"], {"b"}, meta, tmp_path)
    assert summary["cove_vs_baseline"]["correctness"]["delta"] == 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["variants"]["baseline"]["overall"]["n"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "CoVe correctness: ahead by 1.00; grounded_numbers: ahead by 0.50" in report
    assert "| 14 | single-shot correctness >= 0.65 | 0.00 | **missed by 0.65** |" in report  # judged on b only
    assert "numbers not in a cited chunk: 12" in report and "## Per question type" in report
    for name in ("metrics.png", "latency.png", "by_type.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
        assert f"]({name})" in report


# --- a smoke run of the real thing --------------------------------------------------------------------------

SMOKE_IDS = "n01,m02,u-fu1,x03"  # numeric, method, follow-up, unanswerable: all on the small library's papers


@pytest.mark.slow
def test_cove_eval_smoke_run_writes_every_output_and_resumes(small_library, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(small_library.home_dir, home)
    out = tmp_path / "report"
    env = dict(os.environ, COVE_HOME=str(home))
    cmd = [sys.executable, "-m", "app.cli", "eval", "--dataset", str(DEV), "--ids", SMOKE_IDS,
           "--variant", "cove", "--variant", "baseline", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["item_id"], r["variant"]) for r in rows) == sorted(
        (i, v) for i in SMOKE_IDS.split(",") for v in ("cove", "baseline")
    )
    for r in rows:
        assert "error" not in r, r.get("traceback")
        # The answer is what `cove ask --json` prints, plus its metrics.
        assert {"answer", "citations", "retrieved", "prompt_versions", "timings", "tokens"} <= set(r["answer"])
        assert r["metrics"]["latency_s"] > 0
    cove_rows = [r for r in rows if r["variant"] == "cove" and not r["answer"]["refused"]]
    assert all({"answer", "verify"} <= set(r["answer"]["prompt_versions"]) for r in cove_rows)

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == {"cove", "baseline"} and summary["meta"]["answered"] == 8
    assert summary["variants"]["cove"]["overall"]["n"] == 4
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "## Worst failures" in report and "CoVe against single-shot" in report
    for name in ("metrics.png", "latency.png", "by_type.png"):
        assert (out / name).read_bytes()[:8] == PNG

    # An interrupted run leaves a cut-off line; the next run skips it and answers only what is missing.
    kept = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(kept[:-1]) + "\n" + kept[-1][:40])
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["answered"] == 1
    assert len((out / "results.jsonl").read_text().splitlines()) == 8


def test_cove_eval_rejects_unknown_variants_and_ids(tmp_path):
    env = dict(os.environ, COVE_HOME=str(tmp_path))
    base = [sys.executable, "-m", "app.cli", "eval", "--dataset", str(DEV), "--out", str(tmp_path / "o")]
    bad_variant = subprocess.run(base + ["--variant", "cvoe"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert bad_variant.returncode == 2 and "unknown variant" in bad_variant.stderr
    bad_id = subprocess.run(base + ["--ids", "zz9"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert bad_id.returncode == 2 and "zz9" in bad_id.stderr
    no_library = subprocess.run(base + ["--ids", "n01"], env=env, capture_output=True, text=True, cwd=ROOT)
    assert no_library.returncode == 2 and "No library" in no_library.stderr
