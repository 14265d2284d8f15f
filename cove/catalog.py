"""The document catalog: one SQLite row per document Cove knows about, whatever its fate.

The vector store holds chunks; the catalog holds documents: where each came from, its content hash,
how many pages and chunks it has, whether it is indexed, and why it failed if it did. Ingest writes a
row *before* touching the vector store and marks it ``ok`` only *after* the chunks are stored, so a
run killed in between leaves a row that is not ``ok`` and the next run redoes that document.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_PENDING = "pending"  # being (re)indexed, or interrupted while being indexed
# Shown, never written: the catalog says "ok" but the chunk store holds no chunk at all (a killed
# `cove ingest --rebuild` drops the collection first and marks documents as it re-indexes them).
STATUS_NOT_STORED = "not in store"

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    location TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    authors TEXT NOT NULL DEFAULT '[]',
    aliases TEXT NOT NULL DEFAULT '[]',
    year TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL DEFAULT '',
    topic TEXT NOT NULL DEFAULT '',
    arxiv_id TEXT NOT NULL DEFAULT '',
    content_hash TEXT NOT NULL DEFAULT '',
    index_id TEXT NOT NULL DEFAULT '',
    pages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    warnings TEXT NOT NULL DEFAULT '',
    report TEXT NOT NULL DEFAULT '{}',
    ingested_at REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0,
    citekey TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Columns added after the first release: a catalog written by an older Cove gets them on open.
ADDED_COLUMNS = {
    "aliases": "TEXT NOT NULL DEFAULT '[]'",
    "citekey": "TEXT NOT NULL DEFAULT ''",
    "report": "TEXT NOT NULL DEFAULT '{}'",
}


@dataclass
class DocumentRecord:
    doc_id: str
    source: str
    location: str
    status: str
    kind: str = ""
    title: str = ""
    authors: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # names it is called by ("the Transformer", "GPT-1")
    year: str = ""
    version: str = ""
    url: str = ""
    topic: str = ""
    arxiv_id: str = ""
    content_hash: str = ""
    index_id: str = ""
    pages: int = 0
    chunks: int = 0
    error: str = ""
    warnings: str = ""
    # The parse report: pages, words, tables, figures, figure_text_share, equations, references, warnings.
    report: dict = field(default_factory=dict)
    ingested_at: float = 0.0
    updated_at: float = 0.0
    citekey: str = ""  # the key a reference manager (BibTeX, Zotero) knows the document by

    def to_dict(self) -> dict:
        return asdict(self)


# Columns added since the first catalogs: (name, SQL definition). Older files get them on open.
_COLUMNS = [f.name for f in fields(DocumentRecord)]
_JSON_COLUMNS = ("authors", "aliases")


def open_sqlite(path: Path, schema: str) -> sqlite3.Connection:
    """A SQLite file under the data directory: autocommit (a killed process loses nothing written),
    WAL (readers never block the writer), shareable between threads, with `schema` applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(schema)
    return db


class Catalog:
    """SQLite-backed catalog. Every write commits at once (a killed process loses nothing written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_sqlite(path, SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        present = {row[1] for row in self.db.execute("PRAGMA table_info(documents)")}
        for column, definition in ADDED_COLUMNS.items():
            if column not in present:
                try:
                    self.db.execute(f"ALTER TABLE documents ADD COLUMN {column} {definition}")
                except sqlite3.OperationalError as err:  # another process added it a moment ago
                    if "duplicate column" not in str(err):
                        raise

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- documents ---------------------------------------------------------------------------------
    def get(self, doc_id: str) -> DocumentRecord | None:
        row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        return _record(row) if row else None

    def all(self) -> list[DocumentRecord]:
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM documents ORDER BY title COLLATE NOCASE, doc_id")
        return [_record(r) for r in rows]

    def upsert(self, record: DocumentRecord) -> None:
        record.updated_at = time.time()
        values = record.to_dict()
        for column in _JSON_COLUMNS:
            values[column] = json.dumps(values[column])
        values["report"] = json.dumps(values["report"])
        placeholders = ", ".join(f":{c}" for c in _COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "doc_id")
        self.db.execute(
            f"INSERT INTO documents ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT(doc_id) DO UPDATE SET {updates}",
            values,
        )

    def has_indexed_documents(self) -> bool:
        return self.db.execute("SELECT 1 FROM documents WHERE status = ? LIMIT 1", (STATUS_OK,)).fetchone() is not None

    def indexed_count(self) -> int:
        """How many documents are marked indexed (``ok``)."""
        return self.db.execute("SELECT COUNT(*) FROM documents WHERE status = ?", (STATUS_OK,)).fetchone()[0]

    def citekey(self, doc_id: str) -> str:
        row = self.db.execute("SELECT citekey FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        return row[0] if row else ""

    def delete(self, doc_id: str) -> None:
        self.db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))

    # --- meta --------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


class LibraryEmpty(RuntimeError):
    """No document of the library is ready to answer from (`service.chat` and every surface report it)."""


def documents_not_stored(catalog: Catalog, store) -> int:
    """How many documents the catalog marks indexed while the chunk store holds no chunk at all (0
    when the store holds any). Two counts, no scan: cheap enough for every search."""
    return catalog.indexed_count() if store.count() == 0 else 0


def not_stored_message(documents: int) -> str:
    """What to tell a reader when the catalog lists `documents` indexed documents the store lacks."""
    listed = f"{documents} document" + ("" if documents == 1 else "s")
    return (
        f"The catalog lists {listed} but the store holds none (an interrupted `cove ingest --rebuild`?): "
        "run `cove ingest --rebuild` to index them again."
    )


def check_store_holds_documents(catalog: Catalog, store) -> None:
    """Raise `LibraryEmpty` when the catalog lists indexed documents and the store holds no chunk:
    answering would only say "The library does not cover this" (a killed `--rebuild`)."""
    missing = documents_not_stored(catalog, store)
    if missing:
        raise LibraryEmpty(not_stored_message(missing))


def parse_summary(report: dict) -> str:
    """One line saying what parsing found in a document ("6,430 words, 4 tables, 7 figures (4% figure
    text), 5 equations, 40 references"), for the library listings; "" when there is no report."""
    if not report or "words" not in report:
        return ""
    parts = [f"{report.get('words', 0):,} words"]
    for key, noun in (
        ("tables", "table"),
        ("figures", "figure"),
        ("equations", "equation"),
        ("references", "reference"),
    ):
        count = report.get(key, 0)
        if count:
            parts.append(f"{count} {noun}" + ("" if count == 1 else "s"))
            if key == "figures" and report.get("figure_text_share"):
                parts[-1] += f" ({report['figure_text_share']:.0%} figure text)"
    return ", ".join(parts)


def _record(row: tuple) -> DocumentRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column] or "[]")
    values["report"] = _json_dict(values["report"])
    return DocumentRecord(**values)


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
