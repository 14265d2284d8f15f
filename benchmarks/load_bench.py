"""Concurrency: N simultaneous `ask` calls against one embedded model and against a model server.

    python benchmarks/load_bench.py [--home LIB] [--levels 1 4 16] [--pipeline cove] [--json out.json]

One process holds one retriever and one chat model, the way the chat app serves all its browser
sessions (an AnswerEngine per question, as the app makes); N threads ask at the same moment (a
barrier). Two model set-ups are measured in the same run, over the same library and questions:

- embedded: the bundled GGUF in-process (llama-cpp-python); calls queue on the model's lock;
- server:   the same GGUF behind `python -m llama_cpp.server --interrupt_requests False` on
            127.0.0.1, through Cove's OpenAI-compatible backend.

Questions are dev-set items (evals/datasets/dev.jsonl) that a reference pass, one question at a
time, answers correctly with every citation right; each answer under load must still be correct
and cited, and is compared with the same set-up's reference text (concurrency should not change
answers). Reported per level: throughput (answers/min), latency p50/p95 seen by the caller,
correct+cited counts, prefill tokens per answer. N=1 on the embedded model is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cove.engine import AnswerEngine  # noqa: E402
from cove.llm import load_chat_model, resolve_model_path  # noqa: E402
from cove.retrieve import Retriever  # noqa: E402
from cove.settings import BUNDLED_CHAT_MODEL, load_settings, with_overrides  # noqa: E402
from evals.dataset import load_dataset  # noqa: E402
from evals.metrics import item_metrics  # noqa: E402

DEV_SET = ROOT / "evals" / "datasets" / "dev.jsonl"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def build_library(corpus: Path, home: Path) -> None:
    files = [a for pdf in sorted(corpus.glob("*.pdf")) for a in ("--from", str(pdf))]
    env = {**os.environ, "COVE_HOME": str(home), "COVE_STORE__CHROMA_URL": ""}
    subprocess.run([sys.executable, "-m", "app.cli", "ingest", *files], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip


def judge(engine: AnswerEngine, item, answer) -> dict:
    """Correct (every must-include group) and cited (every citation right), by the eval metrics."""
    data = answer.to_json()
    ids = sorted({c["chunk_id"] for c in data["citations"]} | {r["chunk_id"] for r in data["retrieved"]})
    texts = {c.id: c.text for c in engine.retriever.store.get(ids)}
    m = item_metrics(item, data, texts, engine.settings.retrieve.k)
    cited = m["citations"] > 0 and m["citations_right"] == m["citations"]
    return {"correct": bool(m["correct"]), "cited": cited, "text": data["answer"],
            "prefill": m["prefill_tokens"], "decode": m["decode_tokens"]}  # fmt: skip


def at_once(count: int, call: Callable[[int], dict]) -> list[dict]:
    """`call(0)` ... `call(count - 1)` in threads released at the same moment; their results in order."""
    barrier = threading.Barrier(count)
    results: list[dict] = [{} for _ in range(count)]

    def one(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def failure(err: Exception, started: float) -> dict:
    """A call that raised: reported, counted as wrong."""
    return {"correct": False, "cited": False, "text": "", "error": str(err), "prefill": 0, "decode": 0,
            "latency_s": time.perf_counter() - started}  # fmt: skip


def ask_all(settings, retriever: Retriever, items: list, pipeline: str) -> list[dict]:
    """Ask every item at the same moment, one thread each; per-call outcome and latency."""
    engines = [AnswerEngine(settings, retriever=retriever) for _ in items]

    def one(i: int) -> dict:
        t0 = time.perf_counter()
        try:
            answer = engines[i].ask(items[i].question, pipeline=pipeline)
            return judge(engines[i], items[i], answer) | {"latency_s": time.perf_counter() - t0, "error": ""}
        except Exception as err:
            return failure(err, t0)

    return at_once(len(items), one)


def reference_pass(name: str, settings, retriever, pool: list, pipeline: str) -> tuple[list, dict]:
    """Answer each item alone, in turn: the items answered correctly and cited, and every text
    (what the same set-up answers under load is compared with)."""
    engine = AnswerEngine(settings, retriever=retriever)
    kept, texts, seconds = [], {}, []
    for item in pool:
        t0 = time.perf_counter()
        verdict = judge(engine, item, engine.ask(item.question, pipeline=pipeline))
        seconds.append(time.perf_counter() - t0)
        texts[item.id] = verdict["text"]
        if verdict["correct"] and verdict["cited"]:
            kept.append(item)
    print(f"{name} reference pass: {len(kept)}/{len(pool)} answered correctly and cited, one at a time; "
          f"p50 {statistics.median(seconds):.1f}s", flush=True)  # fmt: skip
    return kept, texts


def measure(name: str, settings, retriever, items: list, levels: list[int], pipeline: str, reference: dict) -> list:
    rows = []
    for n in levels:
        batch = [items[i % len(items)] for i in range(n)]
        # Start each level with an empty KV state cache: the reference pass asked these very
        # questions, and their saved states would otherwise make answers under load look cheap.
        getattr(load_chat_model(settings.model), "forget", lambda: None)()
        t0 = time.perf_counter()
        results = ask_all(settings, retriever, batch, pipeline)
        wall = time.perf_counter() - t0
        latencies = [r["latency_s"] for r in results]
        row = {
            "target": name,
            "n": n,
            "wall_s": round(wall, 1),
            "answers_per_min": round(60 * n / wall, 1),
            "p50_s": round(statistics.median(latencies), 1),
            "p95_s": round(percentile(latencies, 0.95), 1),
            "correct_and_cited": sum(r["correct"] and r["cited"] for r in results),
            "same_as_alone": sum(r["text"] == reference[item.id] for r, item in zip(results, batch, strict=True)),
            "prefill_per_answer": round(statistics.mean(r["prefill"] for r in results)),
            "decode_per_answer": round(statistics.mean(r["decode"] for r in results)),
            "errors": [r["error"] for r in results if r["error"]],
        }
        rows.append(row)
        print(f"{name:>9} N={n:<3} {row['answers_per_min']:>5.1f} answers/min  p50 {row['p50_s']:>5.1f}s  "
              f"p95 {row['p95_s']:>5.1f}s  correct+cited {row['correct_and_cited']}/{n}  "
              f"same text {row['same_as_alone']}/{n}  prefill/answer {row['prefill_per_answer']}  "
              f"errors {len(row['errors'])}", flush=True)  # fmt: skip
    return rows


def add_common_arguments(parser: argparse.ArgumentParser, candidates: int) -> None:
    """Library, levels, pipeline, question pool and output options (shared with api_bench.py)."""
    parser.add_argument("--home", type=Path, help="an existing library of the corpus (else built now)")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--pipeline", choices=["cove", "baseline"], default="cove")
    parser.add_argument("--candidates", type=int, default=candidates, help="dev items tried in the reference pass")
    parser.add_argument("--json", type=Path)


def library_home(args: argparse.Namespace, scratch: Path) -> Path:
    """--home, or a library of --corpus built now under `scratch`."""
    if args.home is not None:
        return args.home
    print(f"Ingesting {args.corpus} ...", flush=True)
    build_library(args.corpus, scratch)
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, candidates=24)
    parser.add_argument("--targets", nargs="+", default=["embedded", "server"])
    parser.add_argument("--state-cache-mb", type=int, help="embedded model's KV state cache (default: settings)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="cove-load-bench-")
    home = library_home(args, Path(tmp.name))
    settings = load_settings({"home": str(home), "store": {"chroma_url": ""}})
    if args.state_cache_mb is not None:
        settings = with_overrides(settings, {"model": {"state_cache_mb": args.state_cache_mb}})
    retriever = Retriever(settings)

    pool = [i for i in load_dataset(DEV_SET) if i.answerable and not i.history][: args.candidates]
    items, references = reference_pass("embedded", settings, retriever, pool, args.pipeline)

    rows = []
    if "embedded" in args.targets:
        rows += measure("embedded", settings, retriever, items, args.levels, args.pipeline, references)
    if "server" in args.targets:
        from servers import LlamaServer

        with LlamaServer(
            resolve_model_path(BUNDLED_CHAT_MODEL), n_ctx=settings.model.n_ctx,
            extra_args=("--interrupt_requests", "False"),
        ) as server:  # fmt: skip
            on_server = with_overrides(settings, {"model": {"backend": "openai", "openai_url": server.openai_url}})
            # The server renders the chat template itself: its texts are compared with its own.
            server_items, server_refs = reference_pass("server", on_server, retriever, items, args.pipeline)
            rows += measure("server", on_server, retriever, server_items, args.levels, args.pipeline, server_refs)

    base = rows[0]["answers_per_min"]
    print("\ntarget     N   answers/min  x first row   p50 s   p95 s   correct+cited  prefill/answer")
    for r in rows:
        print(f"{r['target']:<9} {r['n']:>3}   {r['answers_per_min']:>11.1f}  {r['answers_per_min'] / base:>11.2f}  "
              f"{r['p50_s']:>6.1f}  {r['p95_s']:>6.1f}   {r['correct_and_cited']:>6}/{r['n']:<6} "
              f"{r['prefill_per_answer']:>14}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"items": [i.id for i in items], "rows": rows}, indent=2))
    retriever.close()


if __name__ == "__main__":
    main()
