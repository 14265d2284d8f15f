"""Answer benchmark: single-shot RAG against chain-of-verification, same questions, same run.

    python benchmarks/answer_bench.py [--corpus ../shared/corpus] [--n 8] [--json out.json]

Ingests the corpus into a temporary library (or uses --home), warms the model up, then answers each
question with the ``baseline`` pipeline and with ``cove``, alternating so machine noise hits both.
Prints per-question wall time and prefill/decode tokens, and the CoVe/baseline ratios.
Targets (issue 3, bundled SmolLM2-135M): CoVe wall time <= 2x and prefill tokens <= 1.6x single-shot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cove.engine import AnswerEngine  # noqa: E402
from cove.settings import load_settings  # noqa: E402

QUESTIONS = Path(__file__).with_name("retrieval_questions.jsonl")


def build_library(corpus: Path, home: Path) -> None:
    files = [arg for pdf in sorted(corpus.glob("*.pdf")) for arg in ("--from", str(pdf))]
    env = {**os.environ, "COVE_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "app.cli", "ingest", *files], cwd=ROOT, env=env, check=False,
                   capture_output=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--home", type=Path, help="use this existing library instead of building one")
    parser.add_argument("--n", type=int, default=8, help="questions to answer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()][: args.n]

    with tempfile.TemporaryDirectory(prefix="cove-answer-bench-") as tmp:
        home = args.home
        if home is None:
            if not args.corpus.is_dir():
                sys.exit(f"corpus not found: {args.corpus}")
            home = Path(tmp)
            print(f"Ingesting {args.corpus} ...", flush=True)
            build_library(args.corpus, home)
        engine = AnswerEngine(load_settings({"home": str(home)}))
        engine.ask("warm-up: what is attention?", pipeline="baseline")  # load models, build BM25

        rows = []
        for q in questions:
            row = {"id": q["id"]}
            for pipeline in ("baseline", "cove"):
                # Start cold: otherwise CoVe's draft would reuse the baseline's identical prompt from the KV cache.
                getattr(engine.model, "forget", lambda: None)()
                t0 = time.perf_counter()
                answer = engine.ask(q["question"], pipeline=pipeline)
                row[pipeline] = {
                    "wall_s": time.perf_counter() - t0,
                    "prefill": answer.tokens["prefill"],
                    "decode": answer.tokens["decode"],
                    "prompt": answer.tokens["prompt"],
                    "refused": answer.refused,
                    "mode": answer.mode,
                    "steps": answer.tokens["steps"],
                }
            b, c = row["baseline"], row["cove"]
            print(
                f"{q['id']}: baseline {b['wall_s']:.1f}s prefill {b['prefill']} decode {b['decode']} | "
                f"cove {c['wall_s']:.1f}s prefill {c['prefill']} decode {c['decode']} (prompt {c['prompt']})",
                flush=True,
            )
            rows.append(row)

    def total(pipeline: str, key: str) -> float:
        return sum(r[pipeline][key] for r in rows)

    wall_ratio = total("cove", "wall_s") / total("baseline", "wall_s")
    prefill_ratio = total("cove", "prefill") / total("baseline", "prefill")
    per_q_wall = statistics.median(r["cove"]["wall_s"] / r["baseline"]["wall_s"] for r in rows)
    print(f"\n{len(rows)} questions. Baseline: {total('baseline', 'wall_s'):.1f}s, {total('baseline', 'prefill'):.0f} "
          f"prefill, {total('baseline', 'decode'):.0f} decode tokens. CoVe: {total('cove', 'wall_s'):.1f}s, "
          f"{total('cove', 'prefill'):.0f} prefill, {total('cove', 'decode'):.0f} decode tokens.")  # fmt: skip
    print(f"CoVe/baseline wall time: {wall_ratio:.2f}x (median per question {per_q_wall:.2f}x; target <= 2x) -> "
          f"{'PASS' if wall_ratio <= 2 else 'MISS'}")  # fmt: skip
    print(f"CoVe/baseline prefill tokens: {prefill_ratio:.2f}x (target <= 1.6x) -> "
          f"{'PASS' if prefill_ratio <= 1.6 else 'MISS'}")  # fmt: skip
    print(
        f"CoVe prompt tokens without KV-cache reuse would be {total('cove', 'prompt'):.0f} "
        f"({total('cove', 'prompt') / total('baseline', 'prefill'):.2f}x baseline prefill)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "wall_ratio": wall_ratio, "prefill_ratio": prefill_ratio}, indent=2)
        )


if __name__ == "__main__":
    main()
