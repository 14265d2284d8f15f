"""Freezing the held-out part of a dataset, and proving later that it did not change.

A number counts only if it was measured on items frozen before tuning. `freeze` picks the held-out
items at random *by type* (each type is held out in the same proportion), from a given pool of ids
(new items nobody has tuned on), with a fixed seed, and writes `<dataset>.heldout.txt`. The sha256 of
the held-out items' canonical JSON (sorted by id) is recorded in the datasets README; `heldout_hash`
recomputes it, and a test keeps the two equal, so an edit to a held-out item (or to the list) shows.

    python -m evals.freeze evals/datasets/dev.jsonl --pool new-ids.txt --share 0.34 --seed 14
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

from evals.dataset import heldout_ids, load_dataset


def choose_heldout(items_by_id: dict[str, str], pool: list[str], count: int, seed: int) -> list[str]:
    """`count` ids from `pool`, stratified by item type, reproducibly."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for item_id in sorted(pool):
        by_type[items_by_id[item_id]].append(item_id)
    rng = random.Random(seed)
    share = count / len(pool)
    chosen: list[str] = []
    remainders = []
    for item_type in sorted(by_type):
        ids = by_type[item_type]
        rng.shuffle(ids)
        exact = share * len(ids)
        chosen += ids[: int(exact)]
        remainders.append((exact - int(exact), item_type, ids[int(exact) :]))
    for _, _, rest in sorted(remainders, reverse=True):  # round the largest remainders up
        if len(chosen) < count and rest:
            chosen.append(rest[0])
    return sorted(chosen)


def heldout_hash(dataset: str | Path) -> str:
    """sha256 of the held-out items (one canonical JSON object per line, sorted by id)."""
    held = heldout_ids(dataset)
    items = sorted((i for i in load_dataset(dataset) if i.id in held), key=lambda i: i.id)
    blob = "\n".join(json.dumps(i.model_dump(exclude_defaults=True), sort_keys=True, ensure_ascii=False) for i in items)
    return hashlib.sha256(blob.encode()).hexdigest()


def choose_papers(files: list[str], count: int, seed: int) -> list[str]:
    """`count` of the corpus's PDF file names, drawn reproducibly: the papers a trained reader leaves
    out of every step of making its training data, so its score on their items shows whether it
    learned the skill or the papers."""
    return sorted(random.Random(seed).sample(sorted(files), count))


def heldout_papers(dataset: str | Path) -> list[str]:
    """The papers listed in `<dataset>.heldout-papers.txt` (comment lines skipped)."""
    path = Path(dataset).with_name(Path(dataset).stem + ".heldout-papers.txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--pool", type=Path, required=True, help="file of ids that may be held out, one per line")
    parser.add_argument("--count", type=int, required=True, help="how many items to hold out")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    items = {i.id: i.type for i in load_dataset(args.dataset)}
    pool = [line.strip() for line in args.pool.read_text().splitlines() if line.strip()]
    chosen = choose_heldout(items, pool, args.count, args.seed)
    listing = args.dataset.with_name(args.dataset.stem + ".heldout.txt")
    header = (
        "# Held out of tuning (frozen before any tuning; see README.md for their sha256): no weight, threshold\n"
        "# or rule is chosen by looking at results on these items. Targets are judged on them only.\n"
    )
    listing.write_text(header + "\n".join(chosen) + "\n")
    print(f"{len(chosen)} held out -> {listing}\nsha256 {heldout_hash(args.dataset)}")


if __name__ == "__main__":
    main()
