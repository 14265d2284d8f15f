"""Retrieval at scale: a synthetic library of 100k / 1M chunks in Chroma, searched the way Cove does.

    python benchmarks/scale_bench.py [--sizes 100000 1000000] [--store embedded|server] [--seed-home DIR]
                                     [--lexical embedded|postgres [--compare-embedded]] [--queries 40]
                                     [--json out.json]

The synthetic chunks are built from a real library (the seed: the corpus, ingested first unless
--seed-home points at one): each text is sentences drawn from real chunks (so BM25 sees real term
statistics), each vector a mix of two real chunk vectors plus noise, normalised (so the dense
index sees realistic clusters, not uniform noise). 50 chunks make one synthetic document.

For each size it reports, against the seed library measured in the same run as the baseline:
- ingest rate into Chroma (chunks/s, per stage of growth: it slows as the HNSW graph grows),
- index size on disk (Chroma, and the BM25 copy every Cove home keeps),
- the BM25 rebuild a reader does after any change (read all chunks back + tokenize + index),
- hybrid query p50/p95 (embedding the question, Chroma top-30, BM25 top-30, fusion, MMR), and the
  dense and lexical sides alone, measured in a fresh child process (a Cove process that opens the
  home), with that process's peak memory: with `--lexical postgres` the BM25 side runs in PostgreSQL
  (`scripts/postgres.sh`) and the process holds no copy of it;
- page recall@5 of benchmarks/retrieval_questions.jsonl: the seed library's real chunks are written
  first, so the synthetic ones are distractors around them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cove.lexical import lexical_dir, sync_lexical_index  # noqa: E402
from cove.settings import load_settings  # noqa: E402
from cove.store import ChunkStore  # noqa: E402

DEV_SET = ROOT / "evals" / "datasets" / "dev.jsonl"
CHUNKS_PER_DOC = 50
BATCH = 5000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def own_peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: reset at exec, unlike ru_maxrss, which a spawned child
    inherits from its parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return peak_rss_mb()


def release_freed_memory() -> None:
    """Give the heap this process freed back to the OS (glibc keeps it otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6 if path.exists() else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def seed_library(args) -> Path:
    """A real library to draw texts and vectors from: --seed-home, or the corpus ingested now."""
    if args.seed_home:
        return args.seed_home
    home = Path(tempfile.mkdtemp(prefix="cove-seed-"))
    files = [a for pdf in sorted(args.corpus.glob("*.pdf")) for a in ("--from", str(pdf))]
    print(f"ingesting the seed library from {args.corpus} ...", flush=True)
    subprocess.run([sys.executable, "-m", "app.cli", "ingest", *files], cwd=ROOT,
                   env={**os.environ, "COVE_HOME": str(home), "COVE_STORE__CHROMA_URL": ""},
                   check=True, capture_output=True)  # fmt: skip
    return home


def load_seed(home: Path):
    import numpy as np

    settings = load_settings({"home": str(home), "store": {"chroma_url": ""}})
    store = ChunkStore(settings)
    got = store.collection.get(include=["documents", "embeddings"])
    sentences = [s.strip() + "." for text in got["documents"] for s in text.split(". ") if len(s.strip()) > 30]
    return settings, np.asarray(got["embeddings"], dtype=np.float32), sentences


def seed_settings_chunks(settings) -> dict:
    """The seed library's own chunks (texts, vectors, metadata) to write into a synthetic library."""
    got = ChunkStore(settings).collection.get(include=["documents", "embeddings", "metadatas"])
    return {"ids": got["ids"], "documents": got["documents"], "embeddings": got["embeddings"],
            "metadatas": got["metadatas"]}  # fmt: skip


def synthetic_batch(start: int, count: int, vectors, sentences, rng: random.Random):
    """Chunks start..start+count: real sentences, mixed real vectors (deterministic per seed)."""
    import numpy as np

    ids, texts, metas = [], [], []
    n = len(vectors)
    a = np.array([rng.randrange(n) for _ in range(count)])
    b = np.array([rng.randrange(n) for _ in range(count)])
    w = np.array([rng.uniform(0.5, 1.0) for _ in range(count)], dtype=np.float32)[:, None]
    noise = np.random.default_rng(start).normal(0, 0.02, size=(count, vectors.shape[1])).astype(np.float32)
    mixed = w * vectors[a] + (1 - w) * vectors[b] + noise
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    for i in range(start, start + count):
        doc = i // CHUNKS_PER_DOC
        text = ""
        while len(text) < 900:
            text += rng.choice(sentences) + " "
        ids.append(f"synth-{doc}:{i % CHUNKS_PER_DOC}")
        texts.append(text.strip())
        metas.append({"doc_id": f"synth-{doc}", "title": f"Synthetic paper {doc}", "source": f"synth-{doc}.pdf",
                      "page_start": 1 + (i % CHUNKS_PER_DOC) // 4, "page_end": 1 + (i % CHUNKS_PER_DOC) // 4,
                      "section": "", "url": "", "kind": "pdf"})  # fmt: skip
    return ids, texts, mixed, metas


def questions(limit: int) -> list[str]:
    rows = [json.loads(line) for line in DEV_SET.read_text().splitlines() if line.strip()]
    return [r["question"] for r in rows][:limit]


def page_recall(retriever, k: int = 5) -> float:
    """Page recall@k of the benchmark questions, as benchmarks/ingest_bench.py counts it."""
    from ingest_bench import QUESTIONS, load_questions, recall_at_k

    pages = lambda q: [(h.source, h.page) for h in retriever.search(q, k=k).hits]  # noqa: E731
    return round(recall_at_k(load_questions(QUESTIONS), pages), 3)


def _child_queries(settings_json: str, qs: list[str], out) -> None:
    """In a fresh process: the queries' timings, the recall and this process's peak RSS."""
    from cove.settings import CoveSettings

    settings = CoveSettings.model_validate_json(settings_json)
    result = time_queries(settings, qs, recall=True)
    result["process_peak_rss_mb"] = round(own_peak_rss_mb())
    out.put(result)


def queries_in_child(settings, qs: list[str]) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_child_queries, args=(settings.model_dump_json(), qs, out))
    child.start()
    while True:  # a child killed by the OOM killer sends nothing: report that instead of waiting forever
        try:
            result = out.get(timeout=10)
            break
        except Exception:
            if not child.is_alive():
                return {"error": f"the querying process died (exit code {child.exitcode})"}
    child.join()
    return result


def time_queries(settings, qs: list[str], recall: bool = False) -> dict:
    from cove.retrieve import Retriever

    retriever = Retriever(settings)
    t0 = time.perf_counter()
    retriever.search(qs[0])  # loads the embedding model and, if stale, rebuilds BM25
    cold = time.perf_counter() - t0
    result = {"first_query_s": round(cold, 2)}
    for mode in ("hybrid", "dense", "lexical"):
        seconds = []
        for q in qs:
            t0 = time.perf_counter()
            retriever.search(q, mode=mode)
            seconds.append(time.perf_counter() - t0)
        result[mode] = {"p50_ms": round(1000 * statistics.median(seconds), 1),
                        "p95_ms": round(1000 * percentile(seconds, 0.95), 1)}  # fmt: skip
    if recall:
        result["page_recall_at_5"] = page_recall(retriever)
    retriever.close()
    return result


def run_size(size: int, args, seed) -> dict:
    seed_settings, vectors, sentences = seed
    home = Path(tempfile.mkdtemp(prefix=f"cove-scale-{size}-", dir=args.workdir))
    server = None
    store_cfg: dict = {"chroma_url": ""}
    if args.store == "server":
        from servers import ChromaServer

        server = ChromaServer(home / "chroma-server", log=home / "chroma.log").start()
        store_cfg = {"chroma_url": server.url, "timeout_s": 600}
    postgres, lexical_cfg = None, {}
    if args.lexical == "postgres":
        from servers import PostgresServer

        postgres = PostgresServer().start()
        lexical_cfg = {"postgres_url": postgres.url}
    settings = load_settings({"home": str(home), "store": store_cfg, "lexical": lexical_cfg})
    store = ChunkStore(settings)
    rng = random.Random(size)
    print(f"\n== {size:,} chunks ({args.store} Chroma, {args.lexical} lexical index) ==", flush=True)
    real = seed_settings_chunks(seed_settings)
    store.collection.upsert(**real)  # the real chunks the recall questions are about, among the synthetic
    stages, written, t_all = [], 0, time.perf_counter()
    step = max(size // 5, BATCH)
    t_stage = time.perf_counter()
    while written < size:
        count = min(BATCH, size - written)
        ids, texts, mixed, metas = synthetic_batch(written, count, vectors, sentences, rng)
        store.collection.upsert(ids=ids, documents=texts, embeddings=mixed, metadatas=metas)
        written += count
        if written % step == 0 or written == size:
            rate = step / (time.perf_counter() - t_stage) if written % step == 0 else 0
            stages.append({"up_to": written, "chunks_per_s": round(rate)})
            print(f"  {written:>9,} written, {rate:,.0f} chunks/s in the last {step:,}", flush=True)
            t_stage = time.perf_counter()
    ingest_s = time.perf_counter() - t_all
    store.mark_changed()
    chroma_path = server.path if server else settings.chroma_dir

    t0 = time.perf_counter()
    all_ids, all_texts, _ = store.all_chunks()
    read_s = time.perf_counter() - t0
    del all_ids, all_texts
    t0 = time.perf_counter()
    sync_lexical_index(settings, store)
    bm25_s = time.perf_counter() - t0
    release_freed_memory()  # the chunks read back (~15 GB at 1M) must not crowd the querying children
    result = {
        "chunks": size,
        "store": args.store,
        "ingest_s": round(ingest_s, 1),
        "ingest_chunks_per_s": round(size / ingest_s),
        "ingest_stages": stages,
        "lexical": args.lexical,
        "chroma_disk_mb": round(dir_mb(chroma_path)),
        "bm25_disk_mb": round(dir_mb(lexical_dir(settings)) if not postgres else dir_mb(postgres.data)),
        "read_all_chunks_s": round(read_s, 1),
        "bm25_rebuild_s": round(bm25_s, 1),  # includes reading every chunk back
        "queries": queries_in_child(settings, questions(args.queries)),
        "peak_rss_mb": round(peak_rss_mb()),  # this (writing) process
    }
    if postgres and args.compare_embedded:
        # The same library searched with the embedded BM25 instead (the child builds its own copy,
        # as a Cove process would): the recall to match, and the memory the server saves each process.
        embedded = load_settings({"home": str(home), "store": store_cfg})
        result["queries_embedded_lexical"] = queries_in_child(embedded, questions(args.queries))
    print(json.dumps(result, indent=2), flush=True)
    if server:
        server.stop()
    if postgres:
        postgres.remove()
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--store", choices=["embedded", "server"], default="embedded")
    parser.add_argument("--lexical", choices=["embedded", "postgres"], default="embedded",
                        help="BM25 in every process (embedded) or in PostgreSQL (scripts/postgres.sh).")
    parser.add_argument("--compare-embedded", action="store_true",
                        help="With --lexical postgres: also search the same library with the embedded BM25.")
    parser.add_argument("--seed-home", type=Path, help="A Cove library to draw texts and vectors from.")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None, help="Where the synthetic libraries go (temp).")
    parser.add_argument("--keep", action="store_true", help="Keep the synthetic libraries.")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args()

    seed = load_seed(seed_library(args))
    seed_settings = seed[0]
    print(f"seed library: {len(seed[1])} real chunks, {len(seed[2])} sentences", flush=True)
    baseline = {"chunks": len(seed[1]), "queries": time_queries(seed_settings, questions(args.queries), recall=True)}
    print("baseline (the real seed library):", json.dumps(baseline), flush=True)

    results = [run_size(size, args, seed) for size in args.sizes]
    base = baseline["queries"]["hybrid"]["p50_ms"]
    print("\nsize        ingest/s  chroma MB  bm25 MB  rebuild s  hybrid p50/p95 ms  x baseline p50  "
          "query RSS MB  recall@5")
    print(f"{baseline['chunks']:>9,}  {'-':>8}  {'-':>9}  {'-':>7}  {'-':>9}  "
          f"{base:>7.0f}/{baseline['queries']['hybrid']['p95_ms']:<9.0f} {1.0:>14.1f}")  # fmt: skip
    for r in results:
        q = r["queries"]["hybrid"]
        print(f"{r['chunks']:>9,}  {r['ingest_chunks_per_s']:>8,}  {r['chroma_disk_mb']:>9,}  {r['bm25_disk_mb']:>7,}  "
              f"{r['bm25_rebuild_s']:>9.1f}  {q['p50_ms']:>7.0f}/{q['p95_ms']:<9.0f} "
              f"{q['p50_ms'] / base:>14.1f}  {r['queries']['process_peak_rss_mb']:>12,}  "
              f"{r['queries']['page_recall_at_5']:.3f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"baseline": baseline, "results": results}, indent=2))


if __name__ == "__main__":
    main()
