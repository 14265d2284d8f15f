"""`cove serve` under load: N simultaneous OpenAI-client requests vs the same questions in-process.

    python benchmarks/api_bench.py [--home LIB] [--levels 1 4 16] [--pipeline cove] [--json out.json]

One run measures, over the same library and questions (dev-set items a reference pass answers
correctly and cited, as in `benchmarks/load_bench.py`):

- in-process: `load_bench.measure` (N threads ask one process's shared retriever and model at once);
- api:        `cove serve` on 127.0.0.1 in its own process, N threads each sending one
              `client.chat.completions.create(model="cove")` with the official `openai` client.

Per level: answers/min, latency p50/p95 seen by the caller, correct+cited (judged on the answer
JSON the API returns under `cove`, with the eval metrics), and the API overhead per request: the
client's wall time minus the answer's own `timings.total_s` (measured inside the engine, so queueing
for the model is not counted as overhead). A second overhead figure compares a cheap endpoint:
`POST /api/search` round trips vs the same `LibraryService.search` in-process. Target: <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import httpx  # noqa: E402
import load_bench  # noqa: E402
import openai  # noqa: E402
from servers import CoveApiServer  # noqa: E402

from cove.engine import AnswerEngine  # noqa: E402
from cove.retrieve import Retriever  # noqa: E402
from cove.settings import load_settings  # noqa: E402
from evals.dataset import load_dataset  # noqa: E402
from service.library import LibraryService  # noqa: E402

OFF_TOPIC = ["What is the capital of France?", "Who won the 2018 FIFA World Cup?", "How do I bake sourdough bread?"]
SEARCH_QUERIES = ["multi-head attention heads", "LoRA rank of the update matrices", "warmup steps learning rate"]


def ask_over_api(client: openai.OpenAI, engine: AnswerEngine, items: list, pipeline: str) -> list[dict]:
    """Send every item at the same moment, one thread each; outcome, latency and overhead per call."""
    model = "cove" if pipeline == "cove" else "cove-baseline"

    def one(i: int) -> dict:
        t0 = time.perf_counter()
        try:
            response = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": items[i].question}]
            )
            wall = time.perf_counter() - t0
            answer = response.model_extra["cove"]
            verdict = load_bench.judge(engine, items[i], _AsJson(answer))
            return verdict | {"latency_s": wall, "overhead_s": wall - answer["timings"]["total_s"], "error": ""}
        except Exception as err:
            return load_bench.failure(err, t0) | {"overhead_s": 0.0}

    return load_bench.at_once(len(items), one)


class _AsJson:
    """An answer dict where `load_bench.judge` expects an `Answer` (it only calls `to_json`)."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def to_json(self) -> dict:
        return self.data


def measure_api(client, engine, items: list, levels: list[int], pipeline: str) -> list[dict]:
    rows = []
    for n in levels:
        batch = [items[i % len(items)] for i in range(n)]
        t0 = time.perf_counter()
        results = ask_over_api(client, engine, batch, pipeline)
        wall = time.perf_counter() - t0
        latencies = [r["latency_s"] for r in results]
        overheads = [r["overhead_s"] * 1000 for r in results if not r["error"]]
        row = {
            "target": "api",
            "n": n,
            "wall_s": round(wall, 1),
            "answers_per_min": round(60 * n / wall, 1),
            "p50_s": round(statistics.median(latencies), 1),
            "p95_s": round(load_bench.percentile(latencies, 0.95), 1),
            "correct_and_cited": sum(r["correct"] and r["cited"] for r in results),
            "overhead_p50_ms": round(statistics.median(overheads), 1) if overheads else None,
            "overhead_p95_ms": round(load_bench.percentile(overheads, 0.95), 1) if overheads else None,
            "errors": [r["error"] for r in results if r["error"]],
        }
        rows.append(row)
        print(f"      api N={n:<3} {row['answers_per_min']:>5.1f} answers/min  p50 {row['p50_s']:>5.1f}s  "
              f"p95 {row['p95_s']:>5.1f}s  correct+cited {row['correct_and_cited']}/{n}  "
              f"overhead p50 {row['overhead_p50_ms']} ms  errors {len(row['errors'])}", flush=True)  # fmt: skip
    return rows


def search_overhead(url: str, service: LibraryService, repeats: int) -> dict:
    """Median ms of POST /api/search vs the same search in-process (warm, one at a time)."""
    in_process, over_http = [], []
    with httpx.Client(base_url=url, timeout=60) as http:
        for query in SEARCH_QUERIES:  # warm both sides
            service.search(query, 5)
            http.post("/api/search", json={"query": query, "k": 5}).raise_for_status()
        for i in range(repeats):
            query = SEARCH_QUERIES[i % len(SEARCH_QUERIES)]
            t0 = time.perf_counter()
            service.search(query, 5)
            in_process.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            http.post("/api/search", json={"query": query, "k": 5}).raise_for_status()
            over_http.append(time.perf_counter() - t0)
    local, remote = statistics.median(in_process) * 1000, statistics.median(over_http) * 1000
    return {"in_process_ms": round(local, 1), "api_ms": round(remote, 1), "overhead_ms": round(remote - local, 1)}


def refusal_overhead(client: openai.OpenAI, repeats: int) -> dict:
    """The whole chat-completions path on questions Cove refuses after retrieval (no model call, so
    the noise of generation is absent): client wall time minus the answer's own `total_s`, in ms."""
    samples = []
    for i in range(repeats):
        question = OFF_TOPIC[i % len(OFF_TOPIC)]
        t0 = time.perf_counter()
        response = client.chat.completions.create(model="cove", messages=[{"role": "user", "content": question}])
        wall = time.perf_counter() - t0
        answer = response.model_extra["cove"]
        assert answer["refused"], answer["answer"]
        samples.append((wall - answer["timings"]["total_s"]) * 1000)
    return {"p50_ms": round(statistics.median(samples), 1), "p95_ms": round(load_bench.percentile(samples, 0.95), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load_bench.add_common_arguments(parser, candidates=12)
    parser.add_argument("--search-repeats", type=int, default=30)
    parser.add_argument("--overhead-only", action="store_true", help="only the overhead figures (no load levels)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="cove-api-bench-")
    home = load_bench.library_home(args, Path(tmp.name) / "home")
    settings = load_settings({"home": str(home), "store": {"chroma_url": ""}})
    retriever = Retriever(settings)
    items, rows = [], []
    if not args.overhead_only:
        pool = [i for i in load_dataset(load_bench.DEV_SET) if i.answerable and not i.history][: args.candidates]
        items, references = load_bench.reference_pass("in-process", settings, retriever, pool, args.pipeline)
        rows = load_bench.measure("in-process", settings, retriever, items, args.levels, args.pipeline, references)

    engine = AnswerEngine(settings, retriever=retriever)  # judges the API's answers (reads chunk texts)
    with CoveApiServer(home, log=Path(tmp.name) / "serve.log") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0, timeout=3600)
        refusal_overhead(client, 2)  # warm: models loaded, first request paid
        if items:
            rows += measure_api(client, engine, items, args.levels, args.pipeline)
        refusals = refusal_overhead(client, args.search_repeats)
        search = search_overhead(server.url, LibraryService(settings), args.search_repeats)

    print("\ntarget       N   answers/min   p50 s   p95 s   correct+cited   API overhead p50 / p95 ms")
    for r in rows:
        overhead = f"{r['overhead_p50_ms']} / {r['overhead_p95_ms']}" if r["target"] == "api" else ""
        print(f"{r['target']:<10} {r['n']:>3}   {r['answers_per_min']:>11.1f}  {r['p50_s']:>6.1f}  {r['p95_s']:>6.1f}"
              f"   {r['correct_and_cited']:>6}/{r['n']:<7} {overhead}")  # fmt: skip
    print(f"\nPOST /api/search: {search['api_ms']} ms over HTTP vs {search['in_process_ms']} ms in-process "
          f"-> {search['overhead_ms']} ms overhead (target <= 50 ms)")  # fmt: skip
    print(f"chat completion refused after retrieval (no model): overhead p50 {refusals['p50_ms']} ms, "
          f"p95 {refusals['p95_ms']} ms")  # fmt: skip
    api_overheads = [r["overhead_p50_ms"] for r in rows if r["target"] == "api" and r["overhead_p50_ms"] is not None]
    worst = max(api_overheads + [search["overhead_ms"], refusals["p50_ms"]])
    print(f"API overhead per request: worst p50 {worst:.1f} ms -> {'met' if worst <= 50 else 'MISSED'} (<= 50 ms)")
    if args.json:
        summary = {"items": [i.id for i in items], "rows": rows, "search": search, "refusals": refusals}
        args.json.write_text(json.dumps(summary, indent=2))
    retriever.close()


if __name__ == "__main__":
    main()
