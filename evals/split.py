"""The only source of fitting items: the dev set's tuning items, never its frozen held-out ones.

Every fitter (`evals/fit_quotes.py`, and any that comes after it) takes its items from `Split`, runs
cached features through `only_tuning` (a cache written before an item was held out, or from another
dataset, cannot leak a held-out item into a fit), and writes `record()` into its artefact: the
dataset's hash and the held-out items' hash (`evals.freeze.heldout_hash`), so anyone can check that
an artefact was fitted with the frozen held-out items left out (`tests/test_fit.py` does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from evals.dataset import EvalItem, heldout_ids, load_dataset
from evals.freeze import heldout_hash

T = TypeVar("T")


@dataclass(frozen=True)
class Split:
    """A dataset cut into its tuning items (fit on these) and its frozen held-out items (never)."""

    dataset: Path
    items: tuple[EvalItem, ...]
    heldout: frozenset[str]

    @classmethod
    def of(cls, dataset: str | Path) -> Split:
        path = Path(dataset)
        return cls(path, tuple(load_dataset(path)), frozenset(heldout_ids(path)))

    @property
    def tuning(self) -> list[EvalItem]:
        return [item for item in self.items if item.id not in self.heldout]

    def only_tuning(self, rows: Iterable[T], item_id: Callable[[T], str]) -> list[T]:
        """The rows (cached features, groups) of tuning items only: held-out and unknown ids are dropped."""
        allowed = {item.id for item in self.tuning}
        return [row for row in rows if item_id(row) in allowed]

    def record(self) -> dict[str, object]:
        """What a fitted artefact records of the split it was fitted on."""
        return {
            "dataset": str(self.dataset),
            "dataset_sha256": hashlib.sha256(self.dataset.read_bytes()).hexdigest(),
            "split": "tuning",
            "tuning_items": len(self.tuning),
            "heldout_items": len(self.heldout),
            "heldout_sha256": heldout_hash(self.dataset),
        }
