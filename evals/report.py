"""Turning results.jsonl rows into summary.json, report.md and PNG plots.

The report puts the variants side by side: overall metrics, targets (and by how much each is
missed), CoVe against single-shot, every metric per question type, tuning vs held-out items, and
the worst failures with their answers, so a reader can see *why* a number moved.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.dataset import ITEM_TYPES
from evals.metrics import summarize
from evals.targets import TARGETS, judge, scored

SHOWN = (  # (summary key, column title) for the tables
    ("n", "n"),
    ("correctness", "correct"),
    ("refusal_accuracy", "refusal acc"),
    ("recall_at_k", "recall@k"),
    ("mrr", "MRR"),
    ("citation_precision", "cite prec"),
    ("citation_recall", "cite recall"),
    ("grounded_numbers", "grounded #"),
    ("model_grounded_numbers", "model grounded #"),
    ("unquotable_quotes", "bad quotes"),
    ("latency_p50_s", "p50 s"),
    ("latency_p95_s", "p95 s"),
    ("prefill_tokens_mean", "prefill tok"),
    ("decode_tokens_mean", "decode tok"),
)
PLOTTED = (
    "correctness",
    "refusal_accuracy",
    "recall_at_k",
    "citation_precision",
    "citation_recall",
    "grounded_numbers",
)


_scored = scored  # an error counts as a failure everywhere in the report


def build_summary(rows: list[dict[str, Any]], variants: list[str], heldout: set[str], meta: dict) -> dict:
    """Everything report.md shows, as data: per variant overall, per type, per split, and targets."""
    summary: dict[str, Any] = {"meta": meta, "variants": {}}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        overall = summarize(_scored(mine))
        summary["variants"][name] = {
            "pipeline": next((r.get("pipeline") for r in mine), name),
            "overall": overall,
            "errors": sum("error" in r for r in mine),
            "by_type": {t: summarize(_scored([r for r in mine if r["type"] == t])) for t in ITEM_TYPES},
            "by_split": {
                "tuning": summarize(_scored([r for r in mine if r["item_id"] not in heldout])),
                "heldout": summarize(_scored([r for r in mine if r["item_id"] in heldout])),
            },
            "heldout_by_type": {
                t: summarize(_scored([r for r in mine if r["type"] == t and r["item_id"] in heldout]))
                for t in ITEM_TYPES
            },
        }
    summary["cove_vs_baseline"] = _cove_vs_baseline(summary["variants"])
    summary["targets"] = judge(rows, heldout)
    return summary


def _cove_vs_baseline(variants: dict[str, dict]) -> dict[str, Any] | None:
    cove = next((v for v in variants.values() if v["pipeline"] == "cove"), None)
    base = next((v for v in variants.values() if v["pipeline"] == "baseline"), None)
    if not cove or not base:
        return None
    out = {}
    metrics = ("correctness", "grounded_numbers", "model_grounded_numbers", "citation_precision", "refusal_accuracy")
    for metric in (*metrics, "latency_p50_s"):
        a, b = cove["overall"].get(metric), base["overall"].get(metric)
        out[metric] = {"cove": a, "baseline": b, "delta": None if a is None or b is None else round(a - b, 4)}
    return out


# --- markdown ------------------------------------------------------------------------------------------


def _verdict(metric: str, delta: float | None) -> str:
    if delta is None:
        return f"{metric}: n/a"
    if delta > 0:
        return f"{metric}: ahead by {delta:.2f}"
    if delta < 0:
        return f"{metric}: NOT ahead, behind by {-delta:.2f}"
    return f"{metric}: NOT ahead, tied"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _table(header: list[str], lines: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _target_text(target: dict[str, Any]) -> str:
    if target["value"] is None:
        return "not measured (**missed**)"
    if target["met"]:
        return "met"
    return f"**missed by {target['gap']:.2f}**"


def render_report(summary: dict, rows: list[dict[str, Any]], plots: list[str], worst: int = 8) -> str:
    meta = summary["meta"]
    names = list(summary["variants"])
    parts = [
        f"# Cove evaluation: {', '.join(names)}",
        "",
        f"- Run: {meta['finished']} on {meta['machine']}",
        f"- Dataset: `{meta['dataset']}` ({meta['items']} items; {meta['heldout']} held out of tuning)",
        f"- Model: {meta['model']}; sources per answer k = {meta['k']}",
        f"- Answers produced in this run: {meta['answered']} ({meta['errors']} errors); "
        f"wall time {meta['wall_s']:.0f} s",
        "",
        "## Targets (held-out items only; an error counts as a failure)",
        "",
        _table(
            ["issue", "target", "measured", "verdict"],
            [[t["issue"], f"{t['name']} {t['op']} {t['target']}", t["value"], _target_text(t)]
             for t in summary["targets"]],
        ),  # fmt: skip
        "",
        "`unquotable_quotes`: share of citation quotes that fall on figure text, an equation, a reference "
        "entry or front matter of the chunk they were taken from (the chunk's `spans` and `block`).",
    ]
    duel = summary.get("cove_vs_baseline")
    if duel:
        parts += ["", "## CoVe against single-shot (baseline)", ""]
        parts.append(
            _table(
                ["metric", "cove", "baseline", "cove - baseline"],
                [[m, d["cove"], d["baseline"], d["delta"]] for m, d in duel.items()],
            )
        )
        verdict = [_verdict(m, duel[m]["delta"]) for m in ("correctness", "grounded_numbers", "model_grounded_numbers")]
        parts += [
            "",
            "CoVe " + "; ".join(verdict) + ".",
            "",
            "`grounded_numbers` scores final answers, which the checks keep grounded in both pipelines; "
            "`model_grounded_numbers` scores the model's own text before the checks (the draft, or CoVe's "
            "revision) against the retrieved passages.",
        ]
    parts += ["", "## Metrics per variant", ""]
    parts.append(
        _table(
            ["variant"] + [title for _, title in SHOWN],
            [[n] + [summary["variants"][n]["overall"].get(key) for key, _ in SHOWN] for n in names],
        )
    )
    parts += ["", "## Per question type", ""]
    for name in names:
        by_type = summary["variants"][name]["by_type"]
        parts += [f"### {name}", ""]
        lines = [[t] + [by_type[t].get(key) for key, _ in SHOWN] for t in ITEM_TYPES if by_type[t].get("n")]
        parts += [_table(["type"] + [title for _, title in SHOWN], lines), ""]
    parts += ["## Held-out items per question type", ""]
    for name in names:
        by_type = summary["variants"][name]["heldout_by_type"]
        parts += [f"### {name} (held out)", ""]
        lines = [[t] + [by_type[t].get(key) for key, _ in SHOWN] for t in ITEM_TYPES if by_type[t].get("n")]
        parts += [_table(["type"] + [title for _, title in SHOWN], lines), ""]
    parts += ["## Tuning items vs held-out items", ""]
    lines = [
        [name, split] + [summary["variants"][name]["by_split"][split].get(key) for key, _ in SHOWN]
        for name in names
        for split in ("tuning", "heldout")
    ]
    parts += [_table(["variant", "split"] + [title for _, title in SHOWN], lines), ""]
    parts += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    parts += ["## Worst failures", ""]
    for name in names:
        parts += [f"### {name}", ""] + _failures([r for r in rows if r["variant"] == name], worst) + [""]
    return "\n".join(parts).rstrip() + "\n"


def _severity(row: dict[str, Any]) -> float:
    """Higher is worse: crashes, then wrong refusals or answers to unanswerable questions, then
    invented numbers, wrong answers, wrong citations."""
    if "error" in row:
        return 100.0
    m = row["metrics"]
    score = 0.0
    if not m["refusal_ok"]:
        score += 10
    score += 5 * (m["numbers"] - m["numbers_grounded"])
    if m["correct"] is False:
        score += 3
    score += 2 * (m["citations"] - m["citations_right"])
    score += 2 * m.get("quotes_unquotable", 0)
    return score


def _failures(rows: list[dict[str, Any]], limit: int) -> list[str]:
    bad = sorted((r for r in rows if _severity(r) > 0), key=_severity, reverse=True)[:limit]
    if not bad:
        return ["No failures."]
    out = []
    for row in bad:
        out.append(f"**{row['item_id']}** ({row['type']}): {row['question']}")
        if "error" in row:
            out += ["", f"- error: `{row['error']}`", ""]
            continue
        m, answer = row["metrics"], row["answer"]
        problems = []
        if not m["refusal_ok"]:
            problems.append("refused an answerable question" if m["refused"] else "answered an unanswerable question")
        if m["missing"] and not m["refused"]:
            problems.append("missing: " + ", ".join(f"`{x}`" for x in m["missing"]))
        if m["ungrounded"]:
            problems.append("numbers not in a cited chunk: " + ", ".join(m["ungrounded"]))
        if m.get("quotes_unquotable"):
            problems.append(
                f"{m['quotes_unquotable']} quote(s) from figure text, an equation, a reference or front matter"
            )
        if m["citations"] - m["citations_right"]:
            problems.append(f"{m['citations'] - m['citations_right']} of {m['citations']} citations off the gold pages")
        cited = ", ".join(f"[{c['n']}] {c['source']} p.{c['page']}" for c in answer.get("citations", []))
        out += [
            "",
            f"- problems: {'; '.join(problems)}",
            f"- reference: {row['reference'] or '(unanswerable)'}",
            f"- answer ({answer.get('mode')}): {_one_line(answer.get('answer', ''))}",
            f"- cited: {cited or 'nothing'}",
            "",
        ]
    return out


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# --- plots ------------------------------------------------------------------------------------------------


def write_plots(summary: dict, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """metrics.png (metrics per variant, targets marked), latency.png (distribution per variant),
    by_type.png (correctness per question type). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or in CI
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary["variants"])
    overall = {n: [summary["variants"][n]["overall"].get(m) or 0 for m in PLOTTED] for n in names}
    baseline_targets = {t.metric: t.value for t in TARGETS if t.pipeline == "baseline" and not t.item_type}
    targets = [baseline_targets.get(m) for m in PLOTTED]
    labels = [m.replace("_", " ") for m in PLOTTED]
    _grouped_bars(plt, labels, overall, "Metrics per variant (dashed: target)", out_dir / "metrics.png", targets)

    types = [t for t in ITEM_TYPES if any(summary["variants"][n]["by_type"][t].get("n") for n in names)]
    # Unanswerable items have no correctness: plot their refusal accuracy instead.
    per_type = {
        n: [
            summary["variants"][n]["by_type"][t].get("refusal_accuracy" if t == "unanswerable" else "correctness") or 0
            for t in types
        ]
        for n in names
    }
    _grouped_bars(
        plt, types, per_type, "Correctness per question type (unanswerable: refused)", out_dir / "by_type.png"
    )

    fig, ax = plt.subplots(figsize=(7, 3.8))
    data = [[r["metrics"]["latency_s"] for r in rows if r["variant"] == n and "metrics" in r] or [0] for n in names]
    ax.boxplot(data, orientation="horizontal", tick_labels=names)
    for i, values in enumerate(data, start=1):
        ax.scatter(values, np.full(len(values), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(values)), s=8)
    ax.set_xlabel("seconds per answer")
    ax.set_title("Latency distribution")
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)
    plt.close(fig)
    return ["metrics.png", "latency.png", "by_type.png"]


def _grouped_bars(plt, labels: list[str], series: dict[str, list[float]], title: str, path: Path, targets=None):
    """One group of bars per label, one bar per variant; dashed target lines where given."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width, values, width, label=name)
    for j, target in enumerate(targets or []):
        if target is not None:
            ax.hlines(target, j - 0.1, j + 0.8, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(x + width * (len(series) - 1) / 2, labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(run_rows: list[dict], variants: list[str], heldout: set[str], meta: dict, out_dir: Path) -> dict:
    """summary.json, the plots and report.md; returns the summary."""
    meta = {
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
        **meta,
    }
    summary = build_summary(run_rows, variants, heldout, meta)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plots = write_plots(summary, run_rows, out_dir)
    (out_dir / "report.md").write_text(render_report(summary, run_rows, plots), encoding="utf-8")
    return summary


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
