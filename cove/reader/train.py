"""Training the reader on a library: groups from its own text (`cove.reader.pairs`), then a
cross-encoder fine-tuned from the bundled MiniLM, saved as int8 with what it was trained on.

    groups = library_training_groups(engine, exclude_sources={"2106.09685.pdf"}, model_question_count=800)
    manifest = train_reader(groups, out_dir, seed=22, progress=True)

The loss is what the reader is used for. *Listwise*: within a group (a question and its candidates)
the softmax over the candidates' logits should put its mass on the ones that state the answer,
which is the ranking the composer takes the top of. *Pointwise*: each candidate's logit, through a
sigmoid, should say whether it states the answer at all, so a group with no positive (the question's
own sentence taken out) pushes every logit down; that is what abstention reads.

Everything is seeded (group sampling, the shuffle, torch), so one command reproduces a reader: the
manifest records the seed, the sha256 of the training pairs, their counts by origin, the papers
left out, and (when the shipped reader is built from the dev set) the held-out items' hash.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cove.reader.cross import CONFIG, MANIFEST, WEIGHTS, bf16_available, dequantize, quantize
from cove.reader.pairs import Group, Pair, Sentence, library_groups, library_sentences, model_questions

if TYPE_CHECKING:
    from cove.engine import AnswerEngine

POINTWISE_WEIGHT = 0.5  # the pointwise loss beside the listwise one (both are means over their items)


def paper_subjects(engine: AnswerEngine) -> dict[str, list[str]]:
    """The names questions call each paper by: its aliases that no other paper shares ("LLaMA", and
    "the LLaMA paper"), and its title's head when short ("Attention Is All You Need")."""
    engine.retriever.refresh()  # the aliases come with the catalog's names
    records = engine.retriever.store.document_records()
    shared = Counter(a for r in records for a in engine.retriever.aliases(r.get("doc_id", "")))
    out = {}
    for record in records:
        doc_id = record.get("doc_id", "")
        aliases = [a for a in engine.retriever.aliases(doc_id) if shared[a] == 1]
        names = aliases + [f"the {a} paper" for a in aliases if not a.lower().startswith("the ")]
        title = str(record.get("title") or "").split(":")[0].strip()
        if 0 < len(title) <= 60:
            names.append(title)
        out[doc_id] = names or ["the paper"]
    return out


def library_evidence(engine: AnswerEngine, exclude_sources: Iterable[str] = ()) -> list[Sentence]:
    """Every quotable sentence of the library's papers, but those whose file is in `exclude_sources`,
    read as the runtime reads them (headers with the papers' aliases)."""
    from cove.engine.retrieve import make_evidence
    from cove.retrieve import Hit

    excluded = set(exclude_sources)
    engine.retriever.refresh()
    store = engine.retriever.store
    passages = []
    for record in sorted(store.document_records(), key=lambda r: r.get("doc_id", "")):
        if record.get("source") in excluded or record.get("status", "ok") not in ("ok", "indexed", ""):
            continue
        for n, chunk in enumerate(store.document_chunks(record["doc_id"]), 1):
            hit = Hit(chunk.id, chunk.text, chunk.metadata)
            passages.append((make_evidence(engine, n, hit), hit.page))
    return library_sentences(passages, engine.settings.quotes.max_pair_chars)


def library_training_groups(
    engine: AnswerEngine,
    exclude_sources: Iterable[str] = (),
    model_question_count: int = 0,
    seed: int = 22,
    log: Callable[[str], None] = print,
    per_paper: int = 600,
) -> list[Group]:
    """Template (and, if asked, model-written) groups over the library, papers in `exclude_sources` left out."""
    sentences = library_evidence(engine, exclude_sources)
    subjects = paper_subjects(engine)
    extra = {}
    if model_question_count and sentences:
        from tqdm import tqdm

        from cove.reader.questions import model_writer

        write = model_writer(engine.model)
        total = min(model_question_count, len(sentences))
        bar = tqdm(total=total, desc="model questions", unit="q")
        extra = model_questions(sentences, subjects, write, model_question_count, seed, lambda d, t: bar.update(1))
        bar.close()
        log(f"model questions kept: {len(extra)} of {total}")
    return library_groups(sentences, subjects, seed=seed, extra_questions=extra, per_paper=per_paper)


def pairs_of(groups: list[Group]) -> list[Pair]:
    return [p for g in groups for p in g.pairs()]


def pairs_sha256(pairs: list[Pair]) -> str:
    rows = sorted(json.dumps([p.question, p.text, p.label], ensure_ascii=False) for p in pairs)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _split(groups: list[Group], seed: int, share: float) -> tuple[list[Group], list[Group]]:
    """A validation share of the *questions* (all of a question's groups on one side)."""
    questions = sorted({g.question for g in groups})
    rng = random.Random(seed)
    held = set(rng.sample(questions, int(len(questions) * share)))
    return [g for g in groups if g.question not in held], [g for g in groups if g.question in held]


def group_loss(logits, labels, sizes):
    """The listwise loss (groups with a positive) plus `POINTWISE_WEIGHT` times the pointwise one."""
    import torch

    listwise, counted, start = logits.new_zeros(()), 0, 0
    for size in sizes:
        z, y = logits[start : start + size], labels[start : start + size]
        start += size
        if y.sum() > 0:
            listwise = listwise - (torch.logsumexp(z[y > 0.5], 0) - torch.logsumexp(z, 0))
            counted += 1
    pointwise = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    return listwise / max(1, counted) + POINTWISE_WEIGHT * pointwise


def train_reader(
    groups: list[Group],
    out_dir: Path,
    seed: int = 22,
    epochs: int = 2,
    groups_per_batch: int = 4,
    lr: float = 4e-5,
    validation_share: float = 0.05,
    progress: bool = True,
    record: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fine-tune the bundled MiniLM as a cross-encoder on `groups`, write it to `out_dir` (int8
    weights, config, manifest) and return the manifest."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cove.embed import resolve_model_path
    from cove.reader.cross import MAX_TOKENS
    from cove.settings import BUNDLED_EMBED_MODEL

    started = time.time()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    base = resolve_model_path(BUNDLED_EMBED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    groups = [g for g in groups if g.texts]
    train, validation = _split(groups, seed, validation_share)
    steps = epochs * ((len(train) + groups_per_batch - 1) // groups_per_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    half = bf16_available()
    model.train()
    bar = tqdm(total=steps, desc="training the reader", unit="batch", disable=not progress)
    rng = random.Random(seed)
    order = list(range(len(train)))
    for _epoch in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), groups_per_batch):
            batch = [train[i] for i in order[start : start + groups_per_batch]]
            encoded = _encode(tokenizer, batch, MAX_TOKENS)
            labels = torch.tensor([y for g in batch for y in g.labels], dtype=torch.float32)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
                logits = model(**encoded).logits[:, 0]
            loss = group_loss(logits.float(), labels, [len(g.texts) for g in batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    stored = quantize(state)
    np.savez_compressed(out_dir / WEIGHTS, **stored)
    model.config.to_json_file(str(out_dir / CONFIG))
    checked = _int8_check(model, tokenizer, stored, validation)
    pairs = pairs_of(groups)
    manifest = {
        "reader": "cross-encoder",
        "base_model": BUNDLED_EMBED_MODEL,
        "seed": seed,
        "epochs": epochs,
        "groups_per_batch": groups_per_batch,
        "learning_rate": lr,
        "loss": f"listwise softmax + {POINTWISE_WEIGHT} x pointwise binary cross-entropy",
        "precision": "bfloat16 autocast" if half else "float32",
        "max_tokens": MAX_TOKENS,
        "groups": len(groups),
        "pairs": len(pairs),
        "pairs_sha256": pairs_sha256(pairs),
        "groups_by_origin": dict(sorted(Counter(g.origin for g in groups).items())),
        "validation_groups": len(validation),
        **checked,
        "train_seconds": round(time.time() - started, 1),
        **(record or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"reader written to {out_dir}: validation top-1 {checked['validation_top1']}, "
        f"int8 agreement {checked['int8_agreement']}")  # fmt: skip
    return manifest


def _encode(tokenizer, groups: list[Group], max_tokens: int):
    questions = [g.question for g in groups for _ in g.texts]
    texts = [t for g in groups for t in g.texts]
    return tokenizer(questions, texts, padding=True, truncation="only_second", max_length=max_tokens,
                     return_tensors="pt")  # fmt: skip


def _int8_check(model, tokenizer, stored, validation: list[Group]) -> dict:
    """On the validation groups: the int8 reader's top-1 (its best candidate states the answer),
    its pair accuracy (logit > 0 iff the candidate states it), and how often the int8 and float32
    readers pick the same best candidate."""
    import copy

    import torch

    from cove.reader.cross import MAX_TOKENS

    if not validation:
        return {"validation_top1": None, "validation_accuracy": None, "int8_agreement": None}
    small = copy.deepcopy(model).float()
    small.load_state_dict({k: torch.from_numpy(v) for k, v in dequantize(stored).items()})
    model = model.float()
    same, top, right, pairs, answerable = 0, 0, 0, 0, 0
    with torch.inference_mode():
        for group in validation:
            if not group.texts:
                continue
            encoded = _encode(tokenizer, [group], MAX_TOKENS)
            full, int8 = model(**encoded).logits[:, 0].numpy(), small(**encoded).logits[:, 0].numpy()
            same += int(np.argmax(full) == np.argmax(int8))
            labels = np.array(group.labels) > 0.5
            right += int(((int8 > 0) == labels).sum())
            pairs += len(labels)
            if labels.any():
                answerable += 1
                top += int(labels[int(np.argmax(int8))])
    return {
        "validation_top1": round(top / max(1, answerable), 4),
        "validation_accuracy": round(right / max(1, pairs), 4),
        "int8_agreement": round(same / len(validation), 4),
    }


def retrain(
    engine: AnswerEngine,
    out_dir: Path,
    seed: int = 22,
    epochs: int = 1,
    model_question_count: int = 0,
    exclude_sources: Iterable[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    per_paper: int = 600,
) -> dict:
    """A reader trained on the user's own library (no dev set): its groups from the library's text,
    its combination weight and calibration carried over from the shipped reader (they map a
    reader's logit to a probability; `evals/reader.py train` refits them where a dev set exists)."""
    from cove.reader.cross import PACKAGED, ReaderMissing, read_manifest

    groups = library_training_groups(engine, exclude_sources, model_question_count, seed, log, per_paper)
    if not groups:
        raise ValueError("the library has no sentences to train on (ingest papers first)")
    log(f"{len(groups)} training questions from {len({g.doc_id for g in groups})} papers")
    record = {"fitted_on": {"library": str(engine.settings.home_dir), "papers_left_out": sorted(exclude_sources),
                            "model_questions": model_question_count}}  # fmt: skip
    manifest = train_reader(groups, out_dir, seed=seed, epochs=epochs, progress=progress, record=record, log=log)
    try:
        shipped = read_manifest(PACKAGED)
    except ReaderMissing:
        shipped = {}
    for key in ("combination", "calibration"):
        if key in shipped:
            manifest[key] = {**shipped[key], "carried_from": "the shipped reader"}
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
