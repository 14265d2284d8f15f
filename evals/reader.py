"""The reader on the dev set: the shipped reader's training command, its calibration, and the
comparison of readers on the frozen held-out items.

    # train the shipped reader (library pairs + the dev set's training fold), calibrate it on the
    # calibration fold, write cove/reader_model/:
    COVE_HOME=.eval-home python -m evals.reader train --corpus ../shared/corpus
    # reader top-1 per part on the held-out items, each reader on the same candidates:
    COVE_HOME=.eval-home python -m evals.reader compare --readers scorer,cross,upr

What is trained on what (`fitted_on` in the manifest records it):
- the papers in `dev.heldout-papers.txt` are left out of everything: no template or model question,
  negative or dev item of theirs is trained on, and their items are scored apart;
- the dev set's held-out items are never used (`evals.split.Split`);
- the other tuning items are cut with a seed into a *training fold* (their parts' gold sentences
  and the other candidates become pairs) and a *calibration fold* (never trained on: the reader's
  logit is mapped to a probability and the answer threshold chosen there, so the reader's
  confidence on its own training items cannot set them).

A *case* is one part of one item with the candidates the runtime hands the reader for it
(`cove.engine.candidates`: the quote scorer's best `reader.candidates`, the same path as serving).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cove import text as tx
from cove.engine import AnswerEngine
from cove.engine.candidates import candidate_pools
from cove.quotes import missing_qualifiers
from cove.reader.pairs import Group, reader_text
from cove.settings import load_settings
from evals.dataset import EvalItem
from evals.fit_quotes import is_gold
from evals.freeze import heldout_papers
from evals.split import Split

CASE_CANDIDATES = 16  # candidates per part the reader sees (settings: reader.candidates)


@dataclass
class Case:
    """One part of one item, with the candidates the reader ranks for it."""

    item: str
    answerable: bool
    papers: tuple[str, ...]  # the item's source files
    question: str  # the part as asked
    primary: bool
    texts: list[str]  # candidates as the reader reads them
    scorer: np.ndarray  # the quote scorer's score of each
    gold: np.ndarray  # bool: states one of the part's evidence quotes
    qualified: np.ndarray  # bool: its paper states what the part names
    gate: np.ndarray | None = None  # the quote scorer's fitted gate confidence of each (its abstention)


def part_quotes(part_text: str, focus: set[str], quotes: list[str]) -> list[str]:
    """The item's evidence quotes this part asks for: the ones sharing most of its focus terms
    (a multi-fact item has one quote per fact); all of them when none shares any."""
    if len(quotes) <= 1:
        return quotes
    overlap = [len(focus & (tx.stems(q) | tx.key_terms(q, min_len=3))) for q in quotes]
    best = max(overlap)
    return [q for q, o in zip(quotes, overlap, strict=True) if o == best] if best else quotes


def collect_cases(engine: AnswerEngine, items: list[EvalItem], limit: int = CASE_CANDIDATES, log=print) -> list[Case]:
    cases = []
    for number, item in enumerate(items, 1):
        for entry in candidate_pools(engine, item.question, item.history_dicts()):
            ranked = engine.scorer.rank(entry.part, entry.question, entry.pool, limit=limit)
            if entry.part.papers:
                ranked = [s for s in ranked if entry.pool.evidence[s.candidate.n].doc_id in entry.part.papers]
            quotes = part_quotes(entry.part.text, entry.part.focus, item.quotes)
            cases.append(Case(
                item.id, item.answerable, tuple(item.sources), entry.part.text, entry.primary,
                [reader_text(s.candidate.text, entry.pool.evidence[s.candidate.n].header) for s in ranked],
                np.array([s.score for s in ranked], dtype=float),
                np.array([is_gold(s.candidate.text, quotes) for s in ranked], dtype=bool),
                np.array([not missing_qualifiers(entry.part, entry.pool.evidence[s.candidate.n], entry.pool)
                          for s in ranked], dtype=bool),
                np.array([engine.scorer.confidence(s) for s in ranked], dtype=float),
            ))  # fmt: skip
        if number % 20 == 0:
            log(f"  {number}/{len(items)} items")
    return cases


def dev_groups(cases: list[Case], negatives: int = 11) -> list[Group]:
    """Groups from cases: a part's gold candidates positive, its first `negatives` others (in the
    quote scorer's order: the hardest) negative; an unanswerable item's part is a group with no
    positive. Answerable parts with no gold candidate are skipped (their labels are unknown)."""
    groups = []
    for case in cases:
        if case.answerable and not case.gold.any():
            continue
        texts, labels, kept = [], [], 0
        for text, gold in zip(case.texts, case.gold, strict=True):
            if not gold and kept >= negatives:
                continue
            kept += not gold
            texts.append(text)
            labels.append(float(gold))
        origin = "dev" if case.answerable else "dev:unanswerable"
        groups.append(Group(case.question, texts, labels, case.papers[0] if case.papers else "", origin))
    return groups


def folds(items: list[EvalItem], seed: int = 22, calibration_share: float = 1 / 3) -> tuple[list, list]:
    """(training fold, calibration fold) of the tuning items, drawn with `seed`, by type."""
    rng = random.Random(seed)
    by_type: dict[str, list[EvalItem]] = {}
    for item in sorted(items, key=lambda i: i.id):
        by_type.setdefault(item.type, []).append(item)
    train, calibrate = [], []
    for kind in sorted(by_type):
        group = by_type[kind]
        rng.shuffle(group)
        cut = round(len(group) * calibration_share)
        calibrate += group[:cut]
        train += group[cut:]
    return train, calibrate


def of_papers(items: list[EvalItem], papers: set[str]) -> list[EvalItem]:
    """Items that use any of `papers`."""
    return [i for i in items if set(i.sources) & papers]


# --- scoring cases -------------------------------------------------------------------------------------


def case_logits(reader, cases: list[Case]) -> list[np.ndarray]:
    if reader == "scorer":
        return [c.scorer for c in cases]
    return [reader.logits(c.question, c.texts) if c.texts else np.zeros(0) for c in cases]


def top1(cases: list[Case], logits: list[np.ndarray]) -> tuple[float, int]:
    """Share of answerable cases with a gold candidate whose best qualified candidate is gold."""
    hits, n = 0, 0
    for case, scores in zip(cases, logits, strict=True):
        if not case.answerable or not case.gold.any():
            continue
        n += 1
        masked = np.where(case.qualified, scores, -np.inf)
        if np.isfinite(masked.max()):
            hits += bool(case.gold[int(np.argmax(masked))])
    return (hits / n if n else float("nan")), n


def best_logit(case: Case, scores: np.ndarray) -> float:
    masked = np.where(case.qualified, scores, -np.inf) if len(scores) else np.array([-np.inf])
    return float(masked.max())


def fit_calibration(cases: list[Case], logits: list[np.ndarray], max_false_refusals: float = 0.08) -> dict:
    """Platt scaling of the best candidate's logit (answerable part vs unanswerable item's part) and
    the probability threshold with the best balanced accuracy among those refusing at most
    `max_false_refusals` of answerable parts."""
    from scipy.optimize import minimize

    xs = np.array([best_logit(c, s) for c, s in zip(cases, logits, strict=True)])
    ys = np.array([c.answerable for c in cases], dtype=float)
    keep = np.isfinite(xs)
    xs, ys = xs[keep], ys[keep]

    def loss(theta):
        z = theta[0] * xs + theta[1]
        p = 1 / (1 + np.exp(-z))
        eps = 1e-9
        return -np.mean(ys * np.log(p + eps) + (1 - ys) * np.log(1 - p + eps)) + 1e-3 * theta[0] ** 2

    a, b = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead").x
    probs = 1 / (1 + np.exp(-(a * xs + b)))
    best, threshold = -1.0, 0.5
    for cut in sorted(set(np.round(probs, 4))):
        refused_answerable = np.mean(probs[ys == 1] < cut) if (ys == 1).any() else 0.0
        refused_unanswerable = np.mean(probs[ys == 0] < cut) if (ys == 0).any() else 1.0
        if refused_answerable > max_false_refusals:
            break
        balanced = 0.5 * ((1 - refused_answerable) + refused_unanswerable)
        if balanced > best:
            best, threshold = balanced, float(cut)
    return {"a": round(float(a), 5), "b": round(float(b), 5), "threshold": round(threshold, 4),
            "cases": int(len(xs)), "balanced_accuracy": round(best, 4),
            "max_false_refusals": max_false_refusals}  # fmt: skip


READER_WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def combined(cases: list[Case], logits: list[np.ndarray], weight: float) -> list[np.ndarray]:
    """The runtime's ranking score: the quote scorer's score plus `weight` times the reader's logit."""
    return [c.scorer + weight * logit for c, logit in zip(cases, logits, strict=True)]


def calibrate(cases: list[Case], logits: list[np.ndarray]) -> dict:
    """What the calibration fold decides: the reader's weight beside the quote scorer (best top-1;
    the smaller weight on a tie), then whether the combined score abstains better than the quote
    scorer's gate (balanced accuracy, answerable parts against unanswerable items' parts, with at most
    8% of answerable parts refused). The reader gates only if it does."""
    top = {w: top1(cases, combined(cases, logits, w))[0] for w in READER_WEIGHTS}
    weight = max(READER_WEIGHTS, key=lambda w: (round(top[w], 6), -w))
    scores = combined(cases, logits, weight)
    primary = [(c, s) for c, s in zip(cases, scores, strict=True) if c.primary]
    fitted = fit_calibration([c for c, _ in primary], [s for _, s in primary])
    gate = gate_balanced_accuracy([c for c, _ in primary], [s for _, s in primary])
    fitted |= {"gate_balanced_accuracy": float(gate), "gates": bool(fitted["balanced_accuracy"] > gate)}
    return {"combination": {"scorer_weight": 1.0, "reader_weight": weight,
                            "top1_by_weight": {str(w): round(v, 4) for w, v in top.items()}},
            "calibration": fitted}  # fmt: skip


def gate_balanced_accuracy(cases: list[Case], scores: list[np.ndarray]) -> float:
    """The quote scorer's fitted gate on the best qualified candidate of each case."""
    from cove.quotes import default_gate

    cut = default_gate().get("threshold", 0.5)
    answered = {True: [], False: []}
    for case, score in zip(cases, scores, strict=True):
        masked = np.where(case.qualified, score, -np.inf) if len(score) else np.array([-np.inf])
        ok = np.isfinite(masked.max()) and case.gate is not None and case.gate[int(np.argmax(masked))] >= cut
        answered[case.answerable].append(bool(ok))
    if not answered[True] or not answered[False]:
        return float("nan")
    return round(0.5 * (np.mean(answered[True]) + 1 - np.mean(answered[False])), 4)


# --- commands ------------------------------------------------------------------------------------------


def _cases(engine, items, cache: Path | None, name: str) -> list[Case]:
    path = cache / f"{name}.pkl" if cache else None
    key = (engine.retriever.store.generation(), sorted(i.id for i in items), CASE_CANDIDATES)
    if path and path.exists():
        data = pickle.loads(path.read_bytes())
        if data.get("key") == key and all(row.get("gate") is not None for row in data["cases"]):
            return [Case(**row) for row in data["cases"]]
    print(f"collecting candidates for {len(items)} items ({name})")
    cases = collect_cases(engine, items)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            pickle.dumps({"key": key, "cases": [vars(c) for c in cases]})
        )  # plain rows: any module reads them
    return cases


def train_command(args) -> None:
    from cove.reader.cross import PACKAGED, CrossReader
    from cove.reader.train import train_reader

    split = Split.of(args.dataset)
    held_papers = set(heldout_papers(args.dataset))
    settings = load_settings()
    if args.corpus is not None:
        from evals.corpus import ingest_corpus

        ingest_corpus(args.corpus, list(split.items), settings)
    engine = AnswerEngine(settings)
    usable = [i for i in split.tuning if not set(i.sources) & held_papers]
    train_items, calibration_items = folds(usable, args.seed)
    library = _library_groups(engine, held_papers, args)
    dev = dev_groups(_cases(engine, train_items, args.cache, "train-fold"))
    groups = library + dev * args.dev_repeat
    print(f"groups: {len(library)} from the library, {len(dev)} from {len(train_items)} dev items (x{args.dev_repeat})")
    record = {
        "fitted_on": {
            **split.record(),
            "papers_left_out": sorted(held_papers),
            "training_fold": sorted(i.id for i in train_items),
            "calibration_fold": sorted(i.id for i in calibration_items),
            "fold_seed": args.seed,
            "model_questions": args.model_questions,
            "dev_repeat": args.dev_repeat,
            "date": datetime.date.today().isoformat(),
        }
    }
    manifest = train_reader(groups, args.out, seed=args.seed, epochs=args.epochs, lr=args.lr, record=record)
    reader = CrossReader(args.out)
    calibration_cases = _cases(engine, calibration_items, args.cache, "calibration-fold")
    manifest |= calibrate(calibration_cases, case_logits(reader, calibration_cases))
    (Path(args.out) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: manifest[k] for k in ("combination", "calibration")}, indent=2))
    if Path(args.out).resolve() != PACKAGED.resolve():
        print(f"(not the shipped reader: {PACKAGED})")


def _library_groups(engine, held_papers: set[str], args) -> list[Group]:
    """The library's groups (papers held out left out), cached by their arguments: the model's
    questions take a while and are the same for the same seed and count."""
    from cove.reader.train import library_training_groups

    key = (engine.retriever.store.generation(), sorted(held_papers), args.model_questions, args.seed, args.per_paper)
    path = args.cache / "library-groups.pkl" if args.cache else None
    if path and path.exists():
        data = pickle.loads(path.read_bytes())
        if data.get("key") == key:
            return [Group(**row) for row in data["groups"]]
    groups = library_training_groups(engine, held_papers, args.model_questions, args.seed, per_paper=args.per_paper)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"key": key, "groups": [vars(g) for g in groups]}))
    return groups


def calibrate_command(args) -> None:
    """Refit a trained reader's combination weight and calibration on the calibration fold."""
    from cove.reader.cross import MANIFEST, CrossReader

    split = Split.of(args.dataset)
    held_papers = set(heldout_papers(args.dataset))
    engine = AnswerEngine(load_settings())
    reader = CrossReader(args.reader)
    _, calibration_items = folds([i for i in split.tuning if not set(i.sources) & held_papers], args.seed)
    recorded = sorted(reader.manifest.get("fitted_on", {}).get("calibration_fold", []))
    if recorded and recorded != sorted(i.id for i in calibration_items):
        raise SystemExit("this reader was trained with another fold: calibrating on its training items would lie")
    cases = _cases(engine, calibration_items, args.cache, "calibration-fold")
    manifest = reader.manifest | calibrate(cases, case_logits(reader, cases))
    (Path(args.reader) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: manifest[k] for k in ("combination", "calibration")}, indent=2))


def make_reader(name: str, engine: AnswerEngine, folder: Path | None):
    if name == "scorer":
        return "scorer"
    if name == "cross":
        from cove.reader.cross import PACKAGED, CrossReader

        return CrossReader(folder or PACKAGED)
    if name == "upr":
        from cove.reader.upr import QueryLikelihoodReader

        model = engine.model
        model.check()
        return QueryLikelihoodReader(model.path)
    raise SystemExit(f"unknown reader {name!r}: scorer, cross, upr")


def compare_command(args) -> None:
    split = Split.of(args.dataset)
    held_papers = set(heldout_papers(args.dataset))
    engine = AnswerEngine(load_settings())
    if args.split == "heldout":
        items = [i for i in split.items if i.id in split.heldout]
    else:  # the calibration fold: tuning items no reader was trained on, for choosing between variants
        items = folds([i for i in split.tuning if not set(i.sources) & held_papers], args.seed)[1]
    cases = _cases(engine, items, args.cache, args.split)
    groups = {
        "held-out items": cases,
        "of the papers left out of training": [c for c in cases if set(c.papers) & held_papers],
        "of the other papers": [c for c in cases if not set(c.papers) & held_papers],
    }
    rows = {}
    for name in args.readers.split(","):
        reader = make_reader(name, engine, args.reader)
        logits = case_logits(reader, cases)
        by_case = {id(c): s for c, s in zip(cases, logits, strict=True)}
        rows[name] = {g: top1(cs, [by_case[id(c)] for c in cs]) for g, cs in groups.items()}
        weight = (getattr(reader, "manifest", {}).get("combination") or {}).get("reader_weight")
        if weight:  # what the runtime ranks by: the scorer's score plus the fitted weight times the logit
            mixed = {id(c): v for c, v in zip(cases, combined(cases, logits, weight), strict=True)}
            rows[f"{name}+scorer"] = {g: top1(cs, [mixed[id(c)] for c in cs]) for g, cs in groups.items()}
    print("\nreader top-1 gold sentence per part (answerable parts with a gold candidate)")
    for name, row in rows.items():
        print(f"  {name:13s} " + "  ".join(f"{g}: {v:.3f} (n={n})" for g, (v, n) in row.items()))
    recall = [c.gold.any() for c in cases if c.answerable]
    print(f"  (a gold sentence among the {CASE_CANDIDATES} candidates: {np.mean(recall):.3f} of answerable parts)")
    if args.json:
        args.json.write_text(json.dumps({k: {g: list(v) for g, v in r.items()} for k, r in rows.items()}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train and calibrate the shipped reader")
    train.add_argument("--out", type=Path, default=None, help="where to write it (default: the package's reader)")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument(
        "--model-questions", type=int, default=200, help="sentences the local model writes a question for"
    )
    train.add_argument("--dev-repeat", type=int, default=2, help="how many times the dev groups count")
    train.add_argument("--lr", type=float, default=4e-5, help="peak learning rate")
    train.add_argument("--per-paper", type=int, default=600, help="most template questions per paper")
    recal = sub.add_parser("calibrate", help="refit a trained reader's weight and calibration")
    recal.add_argument("--reader", type=Path, required=True)
    compare = sub.add_parser("compare", help="reader top-1 per part on the held-out items")
    compare.add_argument("--readers", default="scorer,cross")
    compare.add_argument("--reader", type=Path, default=None, help="a trained reader's folder (default: shipped)")
    compare.add_argument("--json", type=Path, default=None)
    compare.add_argument(
        "--split",
        choices=("heldout", "calibration"),
        default="heldout",
        help="held-out items (the report), or the calibration fold (choosing variants)",
    )
    for p in (train, recal, compare):
        p.add_argument("--dataset", type=Path, default=Path("evals/datasets/dev.jsonl"))
        p.add_argument("--corpus", type=Path, default=None, help="ingest the dataset's papers from here first")
        p.add_argument("--cache", type=Path, default=None, help="folder caching the collected candidates")
        p.add_argument("--seed", type=int, default=22)
    args = parser.parse_args()
    if args.command == "train":
        from cove.reader.cross import PACKAGED

        args.out = args.out or PACKAGED
        train_command(args)
    elif args.command == "calibrate":
        calibrate_command(args)
    else:
        compare_command(args)


if __name__ == "__main__":
    main()
