"""How long hostile PDFs cost under the bounded parser, against unbounded pypdf in the same run.

    python benchmarks/hostile_bench.py                 # every generated hostile PDF, default limits
    python benchmarks/hostile_bench.py --baseline-pages 10   # a shorter unbounded baseline

For each PDF of `tests/hostile.py` (the issue's 3 KB file whose 60 pages share one 0.7 MB content
stream, a decompression bomb, page-tree bombs, deep nesting, a page-tree loop) it prints how the
bounded parser (`ingest.workers`, the settings' defaults) ends it and how long that took. Then the
baseline: plain pypdf text extraction of the shared-stream PDF, as Cove did before its parsing was
bounded, over `--baseline-pages` pages, and the ratio. No targets are asserted: machines are noisy.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile import (  # noqa: E402
    deep_array_pdf,
    flate_bomb_pdf,
    page_count_bomb_pdf,
    page_tree_loop_pdf,
    shared_stream_pdf,
)

from cove.settings import load_settings  # noqa: E402
from ingest.parse import ParseLimits  # noqa: E402
from ingest.workers import ParseJob, ParseSupervisor, WorkerLimits  # noqa: E402

INPUTS = {
    "shared-content-stream.pdf": shared_stream_pdf,
    "flate-bomb.pdf": flate_bomb_pdf,
    "page-count-bomb.pdf": page_count_bomb_pdf,
    "page-count-liar.pdf": lambda: page_count_bomb_pdf(declared=1),
    "deep-array.pdf": deep_array_pdf,
    "page-tree-loop.pdf": page_tree_loop_pdf,
}


def bounded(folder: Path) -> dict[str, float]:
    cfg = load_settings().parse
    limits = WorkerLimits(ParseLimits.from_settings(cfg), cfg.timeout_s, cfg.max_memory_mb)
    seconds = {}
    with ParseSupervisor(limits, workers=1) as supervisor:
        for name, make in INPUTS.items():
            path = folder / name
            path.write_bytes(make())
            t0 = time.perf_counter()
            (outcome,) = supervisor.run([ParseJob(str(path), "pdf")])
            seconds[name] = time.perf_counter() - t0
            result = "parsed" if outcome.document else outcome.error
            print(f"{name:28} {path.stat().st_size:>9,} B  {seconds[name]:7.2f} s  {result}")
    return seconds


def unbounded(pages: int) -> float:
    """pypdf's text extraction of the shared-stream PDF's first `pages` pages, in this process."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(shared_stream_pdf()))
    t0 = time.perf_counter()
    for page in reader.pages[:pages]:
        page.extract_text()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-pages", type=int, default=60, help="pages of the unbounded baseline (of 60)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seconds = bounded(Path(tmp))
    pages = max(1, min(60, args.baseline_pages))
    base = unbounded(pages)
    whole = base * 60 / pages
    print(f"\nunbounded pypdf, shared-stream PDF: {base:.1f} s for {pages} pages (~{whole:.0f} s for all 60)")
    print(f"bounded / unbounded: {seconds['shared-content-stream.pdf'] / whole:.4f}")


if __name__ == "__main__":
    main()
