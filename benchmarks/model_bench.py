"""Model benchmark: raw llama.cpp against Cove's own model calls, in one run on one machine.

    python benchmarks/model_bench.py                      # the grid below, then Cove inside ask()
    python benchmarks/model_bench.py --threads 1,2 --batch 64,256,512 --flash 0,1
    python benchmarks/model_bench.py --wheel ~/.cache/cove/wheels/llama-cpp-python-0.3.36-<key>
    python benchmarks/model_bench.py --questions 20 --json docs/bench/model.json

1. **Raw llama.cpp**, for each build (the installed one, and every `--wheel` folder made by
   `scripts/llama-build.sh`), each thread count, batch size and flash-attention setting: a fresh
   child process loads the bundled model, prefills a prompt of `--prompt-tokens` tokens (text from
   the shared corpus, as long as a draft prompt) and decodes `--decode-tokens` greedy tokens, with
   llama-cpp-python's thin `eval()` / `sample()` loop: no chat template, no cache, no Python
   around it. Best of `--repeat` runs.
2. **Cove inside `ask()`**: a library of ../shared/corpus, then `--questions` held-out questions of
   the frozen dev set through both pipelines with Cove's default settings. Each model call's time is
   split at its first token (`Completion.prefill_seconds` / `decode_seconds`), so prefill and decode
   tokens/s are what Cove really got, state-cache restores and sampling included.

The ratio Cove / raw is taken against the raw row with Cove's own settings (threads, n_batch, flash
attention) and the installed build. It also prints answer time p50 per pipeline and the time to the
first checked content (the FirstQuotes event).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPUS = ROOT.parent / "shared" / "corpus"


def prompt_text(corpus: Path) -> str:
    """Plain text from the corpus's first PDF (what a draft prompt is made of), or filler without it."""
    try:
        from pypdf import PdfReader

        pdf = sorted(corpus.glob("*.pdf"))[0]
        return " ".join((page.extract_text() or "") for page in PdfReader(pdf).pages[2:6])
    except (IndexError, OSError, ImportError):
        return "The Transformer uses multi-head attention with eight heads in each layer. " * 200


def raw_child(config: dict) -> dict:
    """In a child: load the model with `config`, time prefill and decode, return tokens/s."""
    from llama_cpp import Llama

    from cove.llm import resolve_model_path
    from cove.settings import BUNDLED_CHAT_MODEL

    threads, batch = config["threads"], config["batch"]
    llm = Llama(
        config.get("model") or resolve_model_path(BUNDLED_CHAT_MODEL),
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=batch,
        n_ubatch=batch,
        flash_attn=bool(config["flash"]),
        verbose=False,
    )
    tokens = llm.tokenize(config["text"].encode())[: config["prompt_tokens"]]
    prefill, decode = [], []
    for _ in range(config["repeat"]):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        token = llm.sample(temp=0.0)
        prefill.append(len(tokens) / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(config["decode_tokens"]):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        decode.append(config["decode_tokens"] / (time.perf_counter() - started))
    return {"prefill_tokens_per_s": round(max(prefill), 1), "decode_tokens_per_s": round(max(decode), 1)}


def run_raw(build: str, site: Path | None, config: dict) -> dict:
    env = dict(os.environ)
    if site is not None:  # another build: its extracted wheel goes first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    child = subprocess.run(
        [sys.executable, __file__, "--raw-child", json.dumps(config)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    if child.returncode != 0:
        return {"error": (child.stderr.strip().splitlines() or [f"exit {child.returncode}"])[-1][:300]}
    return json.loads(child.stdout.strip().splitlines()[-1])


def extract_wheel(folder: Path, into: Path) -> Path:
    wheel = next(folder.glob("llama_cpp_python-*.whl"))
    target = into / folder.name
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def as_run(settings, models_dir: Path) -> str:
    """The file Cove runs for the bundled model (its Q8_0 copy where converted), made as Cove makes it."""
    from cove.llm import LlamaCppModel

    model = LlamaCppModel(settings.model, models_dir)
    model.check()
    return model.path


def build_library(corpus: Path, home: Path) -> None:
    env = {**os.environ, "COVE_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "app.cli", "ingest", "--from", str(corpus)], cwd=ROOT, env=env,
                   check=False, capture_output=True)  # fmt: skip


def heldout_questions(n: int) -> list[dict]:
    """The first `n` held-out items of the frozen dev set (speed only: nothing is tuned on them here)."""
    from evals.dataset import heldout_ids, load_dataset, select_items

    dataset = ROOT / "evals" / "datasets" / "dev.jsonl"
    items = select_items(load_dataset(dataset), None, "heldout", n or None, heldout_ids(dataset))
    return [{"id": i.id, "question": i.question, "history": i.history_dicts() or None} for i in items]


def run_cove(home: Path, questions: list[dict]) -> dict:
    """Both pipelines over `questions` with the default settings; speeds and answer times."""
    from cove.engine import AnswerEngine
    from cove.events import FirstQuotes
    from cove.settings import load_settings

    engine = AnswerEngine(load_settings({"home": str(home)}))
    engine.ask("warm-up: what is attention?", pipeline="baseline")  # load the models, build BM25
    totals = {p: {"prefill": 0, "decoded": 0, "prefill_s": 0.0, "decode_s": 0.0} for p in ("baseline", "cove")}
    walls: dict[str, list[float]] = {"baseline": [], "cove": []}
    first: list[float] = []
    for item in questions:
        for pipeline in ("baseline", "cove"):
            getattr(engine.model, "forget", lambda: None)()  # each answer starts cold
            started = time.perf_counter()
            seen: list[float] = []

            def on_event(event, started=started, seen=seen) -> None:
                if isinstance(event, FirstQuotes) and not seen:
                    seen.append(time.perf_counter() - started)

            answer = engine.ask(item["question"], item.get("history"), pipeline, on_event)
            walls[pipeline].append(time.perf_counter() - started)
            first.extend(seen)
            speed, row = answer.tokens.get("speed", {}), totals[pipeline]
            row["prefill"] += answer.tokens["prefill"]
            row["decoded"] += speed.get("timed_decode_tokens", 0)  # each call's first token is prefill's
            row["prefill_s"] += speed.get("prefill_s", 0.0)
            row["decode_s"] += speed.get("decode_s", 0.0)
            print(f"  {item['id']} {pipeline}: {walls[pipeline][-1]:.2f} s, prefill {answer.tokens['prefill']}, "
                  f"decode {answer.tokens['decode']}", flush=True)  # fmt: skip
    result = {"settings": engine.settings.model.model_dump(include={"threads", "n_batch", "flash_attn"})}
    for pipeline, row in totals.items():
        result[pipeline] = {
            "prefill_tokens_per_s": round(row["prefill"] / row["prefill_s"], 1) if row["prefill_s"] else 0.0,
            "decode_tokens_per_s": round(row["decoded"] / row["decode_s"], 1) if row["decode_s"] else 0.0,
            "answer_p50_s": round(statistics.median(walls[pipeline]), 2),
            "answer_p95_s": round(sorted(walls[pipeline])[max(0, int(len(walls[pipeline]) * 0.95) - 1)], 2),
        }
    result["first_content_p50_s"] = round(statistics.median(first), 2) if first else None
    result["first_content_max_s"] = round(max(first), 2) if first else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw-child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", default="64,256,512")
    parser.add_argument("--flash", default="0,1")
    parser.add_argument("--wheel", type=Path, action="append", default=[], help="another build's wheel folder")
    parser.add_argument("--prompt-tokens", type=int, default=800)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--questions", type=int, default=12, help="held-out questions through ask() (0: skip)")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--home", type=Path, help="an existing library instead of one built from --corpus")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.raw_child:
        print(json.dumps(raw_child(json.loads(args.raw_child))))
        return

    from cove.llm import llama_kwargs, resolve_model_path
    from cove.model_check import build_identity
    from cove.settings import BUNDLED_CHAT_MODEL, load_settings

    settings = load_settings({"home": str(args.home)} if args.home else {})
    defaults = llama_kwargs(settings.model)
    own = {"threads": defaults["n_threads"], "batch": defaults["n_batch"], "flash": int(defaults["flash_attn"])}
    text = prompt_text(args.corpus)
    report: dict = {"raw": [], "installed_build": build_identity()}
    with tempfile.TemporaryDirectory(prefix="cove-model-bench-") as tmp:
        models_dir = settings.models_dir if args.home else Path(tmp) / "models"
        models = {"shipped": resolve_model_path(BUNDLED_CHAT_MODEL), "as-run": as_run(settings, models_dir)}
        builds: list[tuple[str, Path | None]] = [("installed", None)]
        builds += [(folder.name.rsplit("-", 1)[-1], extract_wheel(folder, Path(tmp))) for folder in args.wheel]
        grid = list(itertools.product(
            [int(t) for t in args.threads.split(",")],
            [int(b) for b in args.batch.split(",")],
            [int(f) for f in args.flash.split(",")],
        ))  # fmt: skip
        # The whole grid for the installed build and the file Cove runs; Cove's own settings for the rest.
        runs = [("installed", None, "as-run", g) for g in grid]
        runs += [(b, site, m, (own["threads"], own["batch"], own["flash"])) for b, site in builds for m in models
                 if (b, m) != ("installed", "as-run")]  # fmt: skip
        print(f"Raw llama.cpp (bundled SmolLM2-135M; shipped = {Path(models['shipped']).name}, as-run = what "
              f"Cove runs, {Path(models['as-run']).name}):")  # fmt: skip
        for build, site, model, (threads, batch, flash) in runs:
            config = {"threads": threads, "batch": batch, "flash": flash, "text": text, "repeat": args.repeat,
                      "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
                      "model": models[model]}  # fmt: skip
            speeds = run_raw(build, site, config)
            row = {"build": build, "model": model, "threads": threads, "batch": batch, "flash": flash, **speeds}
            report["raw"].append(row)
            prefill, decode = speeds.get("prefill_tokens_per_s", "-"), speeds.get("decode_tokens_per_s", "-")
            print(f"  {build:>16} {model:>8} threads={threads} batch={batch:>4} flash={flash}: prefill {prefill} "
                  f"t/s, decode {decode} t/s {speeds.get('error', '')}", flush=True)  # fmt: skip

        ok = [r for r in report["raw"] if "error" not in r]
        if ok:
            report["best_prefill"] = max(ok, key=lambda r: r["prefill_tokens_per_s"])
            report["best_decode"] = max(ok, key=lambda r: r["decode_tokens_per_s"])
            print(f"Best prefill: {report['best_prefill']}\nBest decode: {report['best_decode']}")
        if args.questions:
            home = args.home
            if home is None:
                home = Path(tmp) / "home"
                print(f"Ingesting {args.corpus} ...", flush=True)
                build_library(args.corpus, home)
            print(f"Cove inside ask() ({args.questions} held-out questions, both pipelines):")
            cove = run_cove(home, heldout_questions(args.questions))
            report["cove"] = cove
            same = [r for r in ok if r["build"] == "installed" and r["model"] == "as-run"]
            raw = next((r for r in same if all(r[k] == v for k, v in own.items())), None)
            if raw is None:  # Cove's own settings were not in the grid: measure them now
                config = {**own, "text": text, "repeat": args.repeat, "prompt_tokens": args.prompt_tokens,
                          "decode_tokens": args.decode_tokens, "model": models["as-run"]}  # fmt: skip
                raw = {"build": "installed", "model": "as-run", **own, **run_raw("installed", None, config)}
                report["raw"].append(raw)
            report["raw_at_cove_settings"] = raw
            if "error" in raw:
                sys.exit(f"raw llama.cpp failed at Cove's settings: {raw['error']}")
            for pipeline in ("baseline", "cove"):
                c = cove[pipeline]
                ratio_p = c["prefill_tokens_per_s"] / raw["prefill_tokens_per_s"]
                ratio_d = c["decode_tokens_per_s"] / raw["decode_tokens_per_s"]
                c["ratio_prefill"], c["ratio_decode"] = round(ratio_p, 2), round(ratio_d, 2)
                print(f"  {pipeline}: prefill {c['prefill_tokens_per_s']} t/s ({ratio_p:.2f}x raw "
                      f"{raw['prefill_tokens_per_s']}), decode {c['decode_tokens_per_s']} t/s ({ratio_d:.2f}x raw "
                      f"{raw['decode_tokens_per_s']}); answer p50 {c['answer_p50_s']} s, "
                      f"p95 {c['answer_p95_s']} s")  # fmt: skip
            print(f"  first checked content p50: {cove['first_content_p50_s']} s, max {cove['first_content_max_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
