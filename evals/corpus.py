"""The library an evaluation runs against: the dataset's papers, ingested from a corpus folder.

Only the files the dataset cites are indexed (already indexed ones are skipped), so the library
matches the dataset and nothing else competes for retrieval.
"""

from __future__ import annotations

from pathlib import Path

from cove.settings import CoveSettings
from evals.dataset import EvalItem


def ingest_corpus(corpus: Path, items: list[EvalItem], settings: CoveSettings, progress=None):
    """Index the papers `items` cite from `corpus`. Returns (file names not in the corpus, report)."""
    from ingest import sources as src
    from ingest.pipeline import ingest

    names = sorted({name for item in items for name in item.sources})
    missing = [name for name in names if not (corpus / name).is_file()]
    chosen, bad = src.collect_sources([corpus / n for n in names if n not in missing], [], [], [])
    return missing, ingest(chosen, settings, progress, bad_inputs=bad)
