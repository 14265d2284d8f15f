"""Evaluation datasets: load and validate the JSON Lines format, and check every evidence quote.

One item per line, with exactly these fields (see evals/datasets/README.md):
``id``, ``type``, ``question``, optional ``history``, ``answer``, ``must_include``, ``source``,
``pages``, ``evidence``. Two-paper items give lists for ``source`` and ``evidence``, and
``pages[i]`` belongs to ``source[i]``; unanswerable items have ``source == []`` and ``evidence == ""``.

The evidence checker opens each cited PDF with pypdf (the same extractor ingest uses) and looks for
the quote on the named page, so a dataset cannot silently drift from the papers it is about.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ItemType = Literal[
    "factoid", "numeric", "method", "multi-fact", "table", "comparison", "multi-paper", "follow-up", "unanswerable"
]
ITEM_TYPES: tuple[str, ...] = ItemType.__args__


class DatasetError(ValueError):
    """The dataset file cannot be used as it is (the message names the line and the problem)."""


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class EvalItem(BaseModel):
    """One question with its reference answer and the page(s) that answer it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    type: ItemType
    question: str = Field(min_length=3)
    history: list[Turn] = Field(default_factory=list)
    answer: str
    must_include: list[list[str]] = Field(default_factory=list)
    source: str | list[str]
    pages: list[int] = Field(default_factory=list)
    evidence: str | list[str]

    @model_validator(mode="after")
    def _consistent(self) -> EvalItem:
        sources, quotes = self.sources, self.quotes
        if self.type == "unanswerable":
            if sources or self.pages or quotes or self.must_include:
                raise ValueError("an unanswerable item has source [], pages [], evidence '' and must_include []")
            return self
        if not sources or not self.pages:
            raise ValueError("an answerable item needs a source and its pages")
        if isinstance(self.source, list) and len(self.pages) != len(self.source):
            raise ValueError("pages[i] belongs to source[i]: give one page per source")
        single = isinstance(self.source, str)
        if not single and len(quotes) != len(sources):
            raise ValueError("give one evidence quote per source")
        if single and len(quotes) != 1 and len(quotes) != len(self.pages):
            raise ValueError("one source: give one evidence quote, or one quote per entry of pages")
        if not self.must_include or any(not group for group in self.must_include):
            raise ValueError("must_include needs at least one non-empty group of alternatives")
        if any(p < 1 for p in self.pages):
            raise ValueError("pages are 1-based")
        if self.type == "follow-up" and not self.history:
            raise ValueError("a follow-up item needs the conversation before it in history")
        return self

    @property
    def answerable(self) -> bool:
        return self.type != "unanswerable"

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) and self.source else list(self.source or [])

    @property
    def quotes(self) -> list[str]:
        if isinstance(self.evidence, str):
            return [self.evidence] if self.evidence else []
        return [q for q in self.evidence if q]

    def gold_pages(self) -> list[tuple[str, int]]:
        """The (file name, page) pairs that answer the question.

        A single-source item may name several pages (all of the same file)."""
        sources = self.sources
        if len(sources) == 1:
            return list(dict.fromkeys((sources[0], page) for page in self.pages))
        return list(zip(sources, self.pages, strict=True))

    def evidence_pairs(self) -> list[tuple[str, int, str]]:
        """(file name, page, quote) triples, for the checker: each quote is on the page it goes with."""
        quotes = self.quotes
        if len(self.sources) == 1:
            if len(quotes) == 1:
                return [(self.sources[0], self.pages[0], quotes[0])]
            return [(self.sources[0], p, q) for p, q in zip(self.pages, quotes, strict=True)]
        return [(s, p, q) for s, p, q in zip(self.sources, self.pages, quotes, strict=True)]

    def history_dicts(self) -> list[dict[str, str]]:
        return [turn.model_dump() for turn in self.history]


def load_dataset(path: str | Path) -> list[EvalItem]:
    """Every item of a JSON Lines dataset, validated; a DatasetError names each bad line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no dataset at {path}")
    items, problems, seen = [], [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = EvalItem.model_validate(json.loads(line))
        except json.JSONDecodeError as err:
            problems.append(f"line {number}: not JSON ({err.msg})")
            continue
        except ValidationError as err:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in err.errors())
            problems.append(f"line {number}: {reasons}")
            continue
        if item.id in seen:
            problems.append(f"line {number}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if problems:
        raise DatasetError(f"{path}: {len(problems)} invalid item(s):\n" + "\n".join(problems))
    if not items:
        raise DatasetError(f"{path} has no items")
    return items


def select_items(
    items: list[EvalItem], ids: str | None, split: str, limit: int | None, heldout: set[str]
) -> list[EvalItem]:
    """The items an evaluation runs: by id (comma-separated), by split (all | tuning | heldout), the
    first `limit`. Raises ValueError for an unknown split or id."""
    if split not in ("all", "tuning", "heldout"):
        raise ValueError("--split must be all, tuning or heldout")
    if ids:
        wanted = {i.strip() for i in ids.split(",") if i.strip()}
        unknown = wanted - {i.id for i in items}
        if unknown:
            raise ValueError(f"no items with ids {', '.join(sorted(unknown))}")
        items = [i for i in items if i.id in wanted]
    if split != "all":
        items = [i for i in items if (i.id in heldout) == (split == "heldout")]
    return items[:limit] if limit else items


def heldout_ids(dataset_path: str | Path) -> set[str]:
    """Ids held out of tuning, from ``<dataset>.heldout.txt`` next to the dataset (one id per line)."""
    path = Path(dataset_path)
    listing = path.with_name(path.stem + ".heldout.txt")
    if not listing.is_file():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in listing.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line}


# --- the evidence checker ----------------------------------------------------------------------------


def squash(text: str) -> str:
    """Whitespace collapsed: pypdf's line breaks are not part of a quote."""
    return " ".join(text.split())


@lru_cache(maxsize=32)
def _page_texts(pdf_path: str) -> tuple[str, ...]:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(pdf_path)
    return tuple(squash(page.extract_text() or "") for page in reader.pages)


def page_text(corpus_dir: str | Path, file_name: str, page: int) -> str:
    """pypdf's text of one page (1-based), whitespace collapsed."""
    texts = _page_texts(str(Path(corpus_dir) / file_name))
    if not 1 <= page <= len(texts):
        raise IndexError(f"{file_name} has {len(texts)} pages, not {page}")
    return texts[page - 1]


def check_evidence(items: list[EvalItem], corpus_dir: str | Path) -> list[str]:
    """Problems with evidence quotes: a missing file, a page out of range, a quote not on its page.

    A quote found on another page is reported with the page it is on, to make fixing easy."""
    corpus_dir = Path(corpus_dir)
    problems = []
    for item in items:
        for file_name, page, quote in item.evidence_pairs():
            if not (corpus_dir / file_name).is_file():
                problems.append(f"{item.id}: {file_name} is not in {corpus_dir}")
                continue
            try:
                text = page_text(corpus_dir, file_name, page)
            except IndexError as err:
                problems.append(f"{item.id}: {err}")
                continue
            if squash(quote) in text:
                continue
            elsewhere = [n for n, t in enumerate(_page_texts(str(corpus_dir / file_name)), 1) if squash(quote) in t]
            hint = f" (it is on page {elsewhere[0]})" if elsewhere else ""
            problems.append(f"{item.id}: quote not on {file_name} p.{page}{hint}: {quote[:70]!r}")
    return problems


def describe(items: list[EvalItem]) -> dict[str, int]:
    """Counts per type, for the dataset README and the checker's summary."""
    counts = {t: 0 for t in ITEM_TYPES}
    for item in items:
        counts[item.type] += 1
    return counts
