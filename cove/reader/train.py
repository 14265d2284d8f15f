"""Training the reader on a library: pairs from its own text (`cove.reader.pairs`), then a
cross-encoder fine-tuned from the bundled MiniLM, saved as int8 with what it was trained on.

    pairs = library_training_pairs(engine, exclude={"2106.09685.pdf"}, model_questions=200)
    manifest = train_reader(pairs, out_dir, seed=22, progress=True)

Everything is seeded (pair sampling, the shuffle, torch), so one command reproduces a reader: the
manifest records the seed, the sha256 of the training pairs, their counts by origin and the papers
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

from cove.reader.cross import CONFIG, MANIFEST, WEIGHTS, dequantize, quantize
from cove.reader.pairs import Pair, Sentence, library_pairs, library_sentences, model_questions

if TYPE_CHECKING:
    from cove.engine import AnswerEngine


def paper_subjects(engine: AnswerEngine) -> dict[str, str]:
    """How questions name each paper: its first alias ("LLaMA"), else its title's head."""
    out = {}
    for record in engine.retriever.store.document_records():
        doc_id = record.get("doc_id", "")
        aliases = engine.retriever.aliases(doc_id)
        title = str(record.get("title") or "").split(":")[0].strip()
        out[doc_id] = aliases[0] if aliases else (title if 0 < len(title) <= 60 else "the paper")
    return out


def library_evidence(engine: AnswerEngine, exclude_sources: Iterable[str] = ()) -> list[Sentence]:
    """Every quotable sentence of the library's papers, but those whose file is in `exclude_sources`."""
    from cove.engine.retrieve import make_evidence
    from cove.retrieve import Hit

    excluded = set(exclude_sources)
    store = engine.retriever.store
    passages = []
    for record in sorted(store.document_records(), key=lambda r: r.get("doc_id", "")):
        if record.get("source") in excluded or record.get("status", "ok") not in ("ok", "indexed", ""):
            continue
        for n, chunk in enumerate(store.document_chunks(record["doc_id"]), 1):
            hit = Hit(chunk.id, chunk.text, chunk.metadata)
            passages.append((make_evidence(engine, n, hit), hit.page))
    return library_sentences(passages, engine.settings.quotes.max_pair_chars)


def library_training_pairs(
    engine: AnswerEngine,
    exclude_sources: Iterable[str] = (),
    model_question_count: int = 0,
    seed: int = 22,
    log: Callable[[str], None] = print,
    per_paper: int = 400,
) -> list[Pair]:
    """Template (and, if asked, model-written) pairs over the library, papers in `exclude_sources` left out."""
    sentences = library_evidence(engine, exclude_sources)
    subjects = paper_subjects(engine)
    extra = {}
    if model_question_count:
        from tqdm import tqdm

        model = engine.model
        bar = tqdm(total=min(model_question_count, len(sentences)), desc="model questions", unit="q")

        def ask(prompt: str) -> str:
            return model.chat([{"role": "user", "content": prompt}], max_tokens=48).text

        extra = model_questions(sentences, subjects, ask, model_question_count, seed, lambda d, t: bar.update(1))
        bar.close()
        log(f"model questions kept: {len(extra)} of {min(model_question_count, len(sentences))}")
    return library_pairs(sentences, subjects, seed=seed, extra_questions=extra, per_paper=per_paper)


def pairs_sha256(pairs: list[Pair]) -> str:
    rows = sorted(json.dumps([p.question, p.text, p.label], ensure_ascii=False) for p in pairs)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _split(pairs: list[Pair], seed: int, share: float) -> tuple[list[Pair], list[Pair]]:
    """A validation share of the *questions* (all of a question's pairs on one side)."""
    questions = sorted({p.question for p in pairs})
    rng = random.Random(seed)
    held = set(rng.sample(questions, int(len(questions) * share)))
    return [p for p in pairs if p.question not in held], [p for p in pairs if p.question in held]


def train_reader(
    pairs: list[Pair],
    out_dir: Path,
    seed: int = 22,
    epochs: int = 2,
    batch_size: int = 16,
    lr: float = 3e-5,
    validation_share: float = 0.05,
    progress: bool = True,
    record: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fine-tune the bundled MiniLM as a cross-encoder on `pairs`, write it to `out_dir` (int8
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
    train, validation = _split(pairs, seed, validation_share)
    order = list(range(len(train)))
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    model.train()
    bar = tqdm(total=steps, desc="training the reader", unit="batch", disable=not progress)
    rng = random.Random(seed)
    for _epoch in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [train[i] for i in order[start : start + batch_size]]
            encoded = tokenizer([p.question for p in batch], [p.text for p in batch], padding=True,
                                truncation="only_second", max_length=MAX_TOKENS, return_tensors="pt")  # fmt: skip
            logits = model(**encoded).logits[:, 0]
            labels = torch.tensor([p.label for p in batch], dtype=torch.float32)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
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
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    stored = quantize(state)
    np.savez_compressed(out_dir / WEIGHTS, **stored)
    model.config.to_json_file(str(out_dir / CONFIG))
    agreement, accuracy = _int8_check(model, tokenizer, stored, validation)
    manifest = {
        "reader": "cross-encoder",
        "base_model": BUNDLED_EMBED_MODEL,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": lr,
        "max_tokens": MAX_TOKENS,
        "pairs": len(pairs),
        "pairs_sha256": pairs_sha256(pairs),
        "positives_by_origin": dict(sorted(Counter(p.origin for p in pairs if p.label == 1).items())),
        "validation_pairs": len(validation),
        "validation_accuracy": accuracy,
        "int8_agreement": agreement,
        "train_seconds": round(time.time() - started, 1),
        **(record or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"reader written to {out_dir}: validation accuracy {accuracy}, int8 agreement {agreement}")
    return manifest


def _int8_check(model, tokenizer, stored, validation: list[Pair]) -> tuple[float | None, float | None]:
    """(share of validation pairs on which the int8 and float32 readers agree about the label,
    the int8 reader's accuracy) on the validation pairs."""
    import copy

    import torch

    from cove.reader.cross import MAX_TOKENS

    if not validation:
        return None, None
    small = copy.deepcopy(model)
    small.load_state_dict({k: torch.from_numpy(v) for k, v in dequantize(stored).items()})
    same, right = 0, 0
    with torch.inference_mode():
        for start in range(0, len(validation), 32):
            batch = validation[start : start + 32]
            encoded = tokenizer([p.question for p in batch], [p.text for p in batch], padding=True,
                                truncation="only_second", max_length=MAX_TOKENS, return_tensors="pt")  # fmt: skip
            full, int8 = model(**encoded).logits[:, 0] > 0, small(**encoded).logits[:, 0] > 0
            same += int((full == int8).sum())
            right += sum(int(bool(v) == (p.label > 0.5)) for v, p in zip(int8.tolist(), batch, strict=True))
    return round(same / len(validation), 4), round(right / len(validation), 4)


def retrain(
    engine: AnswerEngine,
    out_dir: Path,
    seed: int = 22,
    epochs: int = 1,
    model_question_count: int = 0,
    exclude_sources: Iterable[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
    per_paper: int = 400,
) -> dict:
    """A reader trained on the user's own library (no dev set): its pairs from the library's text,
    its combination weight and calibration carried over from the shipped reader (they map a
    reader's logit to a probability; `evals/reader.py train` refits them where a dev set exists)."""
    from cove.reader.cross import PACKAGED, ReaderMissing, read_manifest

    pairs = library_training_pairs(engine, exclude_sources, model_question_count, seed, log, per_paper)
    if not pairs:
        raise ValueError("the library has no sentences to train on (ingest papers first)")
    log(f"{len(pairs)} training pairs from {len({p.doc_id for p in pairs})} papers")
    record = {"fitted_on": {"library": str(engine.settings.home_dir), "papers_left_out": sorted(exclude_sources),
                            "model_questions": model_question_count}}  # fmt: skip
    manifest = train_reader(pairs, out_dir, seed=seed, epochs=epochs, progress=progress, record=record, log=log)
    try:
        shipped = read_manifest(PACKAGED)
    except ReaderMissing:
        shipped = {}
    for key in ("combination", "calibration"):
        if key in shipped:
            manifest[key] = {**shipped[key], "carried_from": "the shipped reader"}
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
