"""The ingest pipeline: sources -> fetch -> parse -> chunk -> embed -> store, one document at a time.

Guarantees, whatever the input:
- one bad source never stops the others: each failure is recorded in the catalog with a reason;
- unchanged documents (same content hash, same index identity) are skipped without loading a model;
- a changed document replaces its old chunks; a document whose update fails keeps its old chunks;
- a run killed at any point is finished by running again: the catalog marks a document ``ok`` only
  after its chunks are stored, and storing deletes the document's chunks before upserting;
- a change of index identity (embedding model, chunking) re-indexes every known document;
- every document is parsed in a worker process with a deadline and a memory limit (`ingest.workers`):
  a hostile file fails with a reason, it does not stall or sink the run;
- a document is only skipped as unchanged if the store still holds its chunks, and one that cannot
  be re-indexed after a rebuild is recorded as failed, never as ``ok`` without chunks;
- one ingest at a time per home (`cove.lock`): a second writer is refused with the first one's name.

Progress flows out through a callback of `ProgressEvent`s, so the CLI can draw progress bars and the
app can show the same stages, from the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove import aliases
from cove.catalog import STATUS_FAILED, STATUS_OK, STATUS_PENDING, Catalog, DocumentRecord
from cove.docs import ParsedDocument
from cove.lexical import drop_other_lexical_indexes
from cove.lock import writer_lock
from cove.settings import CoveSettings
from cove.store import StoreUnavailable
from cove.untrusted import plain_text
from ingest.arxiv import carries_arxiv_stamp, parse_api_response, split_version
from ingest.chunk import chunk_document, embedding_plan
from ingest.copies import keep_library_copy
from ingest.fetch import Fetcher, FetchError
from ingest.parse import MB, ParseError, ParseLimits, looks_like_markdown, open_regular_file, sniff_kind
from ingest.sources import Source, dedupe, disown_arxiv_id, local_file_id, reading_list_aliases
from ingest.workers import ParseJob, ParseSupervisor, WorkerLimits

INGESTED, SKIPPED, FAILED = "ingested", "skipped", "failed"


@dataclass
class ProgressEvent:
    stage: str  # "fetch" | "parse" | "embed" | "done"
    completed: int  # units done in this stage (documents, or chunks for "embed")
    total: int
    source: str = ""
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class DocResult:
    source: str
    status: str  # INGESTED | SKIPPED | FAILED
    doc_id: str = ""
    title: str = ""
    reason: str = ""
    pages: int = 0
    chunks: int = 0


@dataclass
class IngestReport:
    results: list[DocResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, plus "total"
    rebuilt: bool = False

    def _with(self, status: str) -> list[DocResult]:
        return [r for r in self.results if r.status == status]

    @property
    def ingested(self) -> list[DocResult]:
        return self._with(INGESTED)

    @property
    def skipped(self) -> list[DocResult]:
        return self._with(SKIPPED)

    @property
    def failed(self) -> list[DocResult]:
        return self._with(FAILED)

    @property
    def chunks_written(self) -> int:
        return sum(r.chunks for r in self.ingested)


@dataclass
class _Work:
    """A document that needs (re)indexing, after fetching."""

    source: Source
    path: Path
    kind: str
    content_hash: str
    previous: DocumentRecord | None


@dataclass
class _Prepared:
    """A document chunked and embedded, its record pending; `future` is its write to the store."""

    item: _Work
    parsed: ParsedDocument
    record: DocumentRecord
    chunks: list
    vectors: Any
    future: Future | None = None


def source_from_record(record: DocumentRecord) -> Source:
    """Rebuild a Source from the catalog, to re-index a known document after a settings change."""
    local = not record.location.startswith(("http://", "https://", "arxiv:"))
    return Source(
        doc_id=record.doc_id,
        location=record.location,
        source=record.source,
        kind_hint=record.kind or None,
        title=record.title,
        topic=record.topic,
        arxiv_id=record.arxiv_id,
        local=local,
        authors=record.authors,
        year=record.year,
        citekey=record.citekey,
    )


def download_url(source: Source, settings: CoveSettings) -> str:
    """The URL a remote document's bytes are fetched from (arXiv papers: their PDF)."""
    return settings.fetch.arxiv_pdf_base + source.arxiv_id if source.arxiv_id else source.location


class IngestPipeline:
    def __init__(self, settings: CoveSettings, progress: ProgressCallback | None = None) -> None:
        self.settings = settings
        self.progress = progress or (lambda event: None)
        self.catalog = Catalog(settings.catalog_path)
        self.timings: dict[str, float] = {
            "fetch": 0.0,
            "parse": 0.0,
            "chunk": 0.0,
            "embed": 0.0,
            "store": 0.0,
        }
        self._store = None
        self._embedder = None
        self._fetcher: Fetcher | None = None
        self._store_changed = False
        self._index_emptied = False  # --rebuild or new index settings: no document's old chunks are left
        self._stored_counts: dict[str, int] | None = None  # chunks per document in the store, read once
        self._pending: _Prepared | None = None  # the document whose chunks are being written
        self._store_down: str | None = None  # why the store stopped taking documents in this run

    # --- lazily created heavy parts: a run with nothing to do never loads them --------------------
    @property
    def store(self):
        if self._store is None:
            from cove.store import ChunkStore

            self._store = ChunkStore(self.settings)
        return self._store

    @property
    def embedder(self):
        if self._embedder is None:
            from cove.embed import Embedder

            self._embedder = Embedder(self.settings.embed)
        return self._embedder

    @property
    def fetcher(self) -> Fetcher:
        if self._fetcher is None:
            self._fetcher = Fetcher(self.settings.fetch, self.settings.cache_dir)
        return self._fetcher

    def _store_for_writing(self):
        """The vector store, after telling readers that the lexical index is about to lag behind.

        The generation is renewed *before* the write, so a crash mid-write still leaves a mismatch
        that makes the next reader (or ingest) rebuild the BM25 index."""
        self.store.mark_changed()
        self._store_changed = True
        return self.store

    def _sync_lexical(self) -> None:
        from cove.sync import sync_home

        t0 = time.perf_counter()
        sync_home(self.settings, self.catalog, self.store)
        self.timings["lexical"] = time.perf_counter() - t0

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
        self.catalog.close()

    # --- the run ----------------------------------------------------------------------------------
    def run(self, sources: list[Source], rebuild: bool = False, bad_inputs=()) -> IngestReport:
        """Ingest `sources` while holding the home's writer lock (`LibraryBusy` if another process has it)."""
        with writer_lock(self.settings.home_dir):
            return self._run(sources, rebuild, bad_inputs)

    def _run(self, sources: list[Source], rebuild: bool, bad_inputs) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        report.results.extend(DocResult(source=s, status=FAILED, reason=r) for s, r in bad_inputs)
        sources = dedupe(sources)
        if self.settings.store.chroma_url:
            from cove.sync import pull_documents

            pull_documents(self.catalog, self.store)  # what other instances indexed is not redone here
        report.rebuilt = self._check_index_identity(rebuild)
        if report.rebuilt:
            sources = self._with_known_documents(sources)

        work = self._fetch_all(sources, report, force=rebuild)
        self._parse_and_index(work, report)
        if self._store_changed:
            try:
                self._sync_lexical()
            except (StoreUnavailable, OSError):
                pass  # the chunks are stored; the next reader rebuilds BM25 from them (by generation)
        self.catalog.set_meta("index_id", self.settings.index_id())
        self.timings["total"] = time.perf_counter() - started
        report.timings = dict(self.timings)
        self.progress(ProgressEvent("done", len(report.results), len(report.results)))
        return report

    def _check_index_identity(self, rebuild: bool) -> bool:
        """True when the index must be rebuilt: asked for, or the index settings changed."""
        current = self.settings.index_id()
        stored = self.catalog.get_meta("index_id")
        if rebuild:
            self._store_for_writing().reset()
        if stored and stored != current:
            self._store_for_writing().drop_other_indexes()
            drop_other_lexical_indexes(self.settings)
        self._index_emptied = rebuild or bool(stored and stored != current)
        return self._index_emptied

    def _with_known_documents(self, sources: list[Source]) -> list[Source]:
        requested = {s.doc_id for s in sources}
        known = [source_from_record(r) for r in self.catalog.all() if r.doc_id not in requested and r.location]
        return sources + known

    # --- fetch ------------------------------------------------------------------------------------
    def _fetch_all(self, sources: list[Source], report: IngestReport, force: bool) -> list[_Work]:
        work = []
        current_index = self.settings.index_id()
        for i, source in enumerate(sources):
            self.progress(ProgressEvent("fetch", i, len(sources), source.source))
            t0 = time.perf_counter()
            previous = self.catalog.get(source.doc_id)
            try:
                path, kind, content_hash = self._obtain(source)
                keep_library_copy(self.settings, path, content_hash, kind)
            except (FetchError, ParseError, OSError) as err:
                previous = self._disown(source) if source.arxiv_unproven else previous
                self._record_failure(source, previous, _reason(err), report)
                continue
            finally:
                self.timings["fetch"] += time.perf_counter() - t0
            if source.arxiv_unproven:
                previous = self._earlier_verdict(source, previous, content_hash)
            unchanged = (
                not force
                and previous is not None
                and previous.status == STATUS_OK
                and previous.content_hash == content_hash
                and previous.index_id == current_index
                and self._in_store(previous)
            )
            if unchanged:
                _keep_citekey(self.catalog, previous, source.citekey)
                report.results.append(
                    DocResult(
                        previous.source,
                        SKIPPED,
                        previous.doc_id,
                        previous.title,
                        "unchanged",
                        previous.pages,
                        previous.chunks,
                    )
                )
            else:
                work.append(_Work(source, path, kind, content_hash, previous))
        self.progress(ProgressEvent("fetch", len(sources), len(sources)))
        return work

    # --- files named like arXiv papers ------------------------------------------------------------
    def _earlier_verdict(self, source: Source, claimed: DocumentRecord | None, content_hash: str):
        """The record for a file named like an arXiv paper whose exact bytes were indexed before: it
        keeps the verdict it got then (the arXiv id, or its own id), so it is not re-parsed to decide."""
        if claimed is not None and claimed.content_hash == content_hash:
            source.arxiv_unproven = False
            return claimed
        own = self.catalog.get(local_file_id(Path(source.location)))
        if own is not None and own.content_hash == content_hash:
            return self._disown(source)
        return claimed

    def _settle_claim(self, item: _Work, parsed: ParsedDocument | None) -> None:
        """Keep a file's arXiv id only if page 1 carries that paper's arXiv stamp; otherwise the file
        is indexed under its own id and the real paper's chunks stay as they are."""
        source = item.source
        # The stamp is front matter in a layout parse: page 1's blocks are read along with its text.
        page = parsed.pages[0] if parsed is not None and parsed.pages else None
        first_page = "\n".join([page.text, *(b.text for b in page.blocks)]) if page else ""
        if carries_arxiv_stamp(first_page, source.arxiv_id):
            source.arxiv_unproven = False
            return
        claimed = source.arxiv_id
        item.previous = self._disown(source)
        if parsed is not None:
            parsed.warnings.append(
                f"named like arXiv paper {claimed}, but page 1 has no arXiv stamp with that id: indexed as a file"
            )

    def _disown(self, source: Source) -> DocumentRecord | None:
        disown_arxiv_id(source)
        return self.catalog.get(source.doc_id)

    def _in_store(self, record: DocumentRecord) -> bool:
        """Does the store hold exactly the chunks the catalog says this document has?

        A document is only skipped as unchanged when it does: a catalog that claims chunks the store
        lost (an interrupted rebuild, a store restored from an older copy) must not keep the paper
        out of the index for good. One count answers for the whole library when the totals agree;
        otherwise the store is counted per document, once per run."""
        if self._stored_counts is None:
            current = self.settings.index_id()
            claimed = {
                r.doc_id: r.chunks for r in self.catalog.all() if r.status == STATUS_OK and r.index_id == current
            }
            total = self.store.count()
            self._stored_counts = claimed if total == sum(claimed.values()) else self.store.ids_by_document()
        return self._stored_counts.get(record.doc_id, 0) == record.chunks

    def _obtain(self, source: Source) -> tuple[Path, str, str]:
        """The document's bytes on disk, what kind of document they really are, and their hash.

        Local files are opened as regular files only (a FIFO or device swapped in is refused, never
        waited on) and over `parse.max_file_mb` they are refused before a byte is hashed."""
        if source.local:
            path = Path(source.location)
        else:
            path = self.fetcher.fetch(download_url(source, self.settings)).path
        with open_regular_file(path, self.settings.parse.max_file_mb * MB) as f:
            head = f.read(4096)
            digest = hashlib.sha256(head)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        kind = decide_kind(sniff_kind(head), source.kind_hint, head, source.local)
        return path, kind, digest.hexdigest()

    def _arxiv_metadata(self, source: Source) -> None:
        """Fill title, authors, year, version from the arXiv API; keep what we have if it fails.

        Local files are never looked up: ingesting your own folder makes no network request."""
        if not source.arxiv_id or source.local:
            return
        base_id, asked_version = split_version(source.arxiv_id)
        try:
            xml_text = self.fetcher.get_text(f"{self.settings.fetch.arxiv_api_url}?id_list={base_id}")
        except FetchError:
            return
        meta = parse_api_response(xml_text)
        if meta is None:
            return
        source.title = meta.title or source.title
        source.authors = meta.authors or source.authors
        source.year = meta.year or source.year
        if not asked_version and meta.version:
            source.arxiv_id = base_id + meta.version

    # --- parse, chunk, embed, store ---------------------------------------------------------------
    def _parse_and_index(self, work: list[_Work], report: IngestReport) -> None:
        """Each parsed document is chunked and embedded here while the workers parse the next ones;
        its chunks are written to the store by a writer thread while the next document is embedded
        (one write in flight; the catalog is only touched from this thread)."""
        if not work:
            return
        self._warm_up()
        total = len(work)
        self.progress(ProgressEvent("parse", 0, total))
        done = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cove-store-writer") as writer:
            for item, parsed, error, seconds, parse_report in self._parse_results(work):
                done += 1
                self.timings["parse"] += seconds
                self.progress(ProgressEvent("parse", done, total, item.source.source))
                if item.source.arxiv_unproven:
                    self._settle_claim(item, parsed)
                if self._store_down is not None:  # no point going on into a store that is gone; a re-run resumes
                    report.results.append(
                        DocResult(item.source.source, FAILED, item.source.doc_id, "", self._store_down)
                    )
                elif error is not None:
                    self._finish_write(report)  # a failure may delete the document's chunks: no write in flight
                    self._record_failure(item.source, item.previous, error, report, parse_report)
                else:
                    prepared = self._prepare(item, parsed, report)
                    self._finish_write(report)
                    if prepared is not None:
                        self._start_write(writer, prepared, report)
            self._finish_write(report)

    def _prepare(self, item: _Work, parsed: ParsedDocument, report: IngestReport) -> _Prepared | None:
        """A parsed document's record (pending in the catalog), chunks and vectors; None when no text is left."""
        source = item.source
        self._arxiv_metadata(source)
        title = plain_text(choose_title(source, parsed), 300)  # shown everywhere: one plain line
        record = self._record(source, item, parsed, title)
        record.status = STATUS_PENDING
        self.catalog.upsert(record)  # before the store: a crash from here on leaves "pending"

        t0 = time.perf_counter()
        chunks = chunk_document(source.doc_id, parsed, **self._chunk_args())
        self.timings["chunk"] += time.perf_counter() - t0
        if not chunks:
            self._finish_write(report)
            self._record_failure(source, item.previous, "no text left after cleaning", report)
            return None
        texts, plan = embedding_plan(chunks, title)
        vectors = self._embed(texts, source.source)[plan]
        return _Prepared(item, parsed, record, chunks, vectors)

    def _start_write(self, writer: ThreadPoolExecutor, prepared: _Prepared, report: IngestReport) -> None:
        """The chunks into the store and the word positions to disk, in the writer thread."""
        source, parsed, chunks = prepared.item.source, prepared.parsed, prepared.chunks
        if self._store_down is not None:  # the write before this one found the store gone
            self._not_indexed(source, report)
            return
        doc_fields = {"title": prepared.record.title, "source": source.source, "url": source.link, "kind": parsed.kind}
        try:
            store = self._store_for_writing()  # here, not in the thread: the generation is renewed before the write
        except (StoreUnavailable, OSError) as err:
            self._not_indexed(source, report, err)
            return

        def write() -> float:
            t0 = time.perf_counter()
            store.replace_document(
                source.doc_id,
                [c.id for c in chunks],
                [c.text for c in chunks],
                prepared.vectors,
                [c.metadata(doc_fields) for c in chunks],
            )
            self._keep_positions(source.doc_id, parsed)
            return time.perf_counter() - t0

        prepared.future = writer.submit(write)
        self._pending = prepared

    def _finish_write(self, report: IngestReport) -> None:
        """Wait for the write in flight, then record its document as indexed (or why not)."""
        prepared, self._pending = self._pending, None
        if prepared is None:
            return
        source, record = prepared.item.source, prepared.record
        try:
            self.timings["store"] += prepared.future.result()
            t0 = time.perf_counter()
            record.status = STATUS_OK
            record.content_hash = prepared.item.content_hash
            record.index_id = self.settings.index_id()
            record.chunks = len(prepared.chunks)
            record.ingested_at = time.time()
            # Published beside the chunks for other instances of a shared store, then the generation is
            # renewed again: a reader that caught up in the middle of this write catches up once more.
            self.store.put_document_record(record.to_dict())
            self.store.mark_changed()
            self.timings["store"] += time.perf_counter() - t0
        except (StoreUnavailable, OSError) as err:
            self._not_indexed(source, report, err)
            return
        self.catalog.upsert(record)
        report.results.append(
            DocResult(source.source, INGESTED, source.doc_id, record.title, "", record.pages, len(prepared.chunks))
        )

    def _warm_up(self) -> None:
        """Load the embedding model (and import Chroma) while the first documents are parsed: this
        process waits for the workers' first result anyway, and embedding is the longest part of a
        cold ingest (a failure here is raised again, properly, by the first embedding)."""
        embedder = self.embedder

        def load() -> None:
            with contextlib.suppress(Exception):
                embedder.model  # noqa: B018 (loads it)
                import chromadb  # noqa: F401 (the store's first use imports it: a second or so)

        threading.Thread(target=load, name="cove-ingest-warm-up", daemon=True).start()

    def _parse_results(self, work: list[_Work]):
        """Yield (work, parsed | None, error | None, seconds, parse report of a failed parse) as
        documents finish parsing.

        Every document, even a lone one, is parsed in a worker process with a deadline and a memory
        limit (`ingest.workers`); the workers go on parsing while this process embeds."""
        cfg = self.settings.parse
        limits = WorkerLimits(ParseLimits.from_settings(cfg), cfg.timeout_s, cfg.max_memory_mb)
        jobs = [ParseJob(str(item.path), item.kind, item) for item in work]
        with ParseSupervisor(limits, workers=min(cfg.workers, len(work))) as supervisor:
            for outcome in supervisor.run(jobs):
                yield outcome.job.tag, outcome.document, outcome.error, outcome.seconds, outcome.report

    def _not_indexed(self, source: Source, report: IngestReport, err: Exception | None = None) -> None:
        """A document the store did not take: pending, with the reason, for the re-run. A store that
        is gone (`err` None: it went earlier in this run) stops the run's other documents too; a full
        disk, say, costs only this one."""
        if err is None:
            reason = self._store_down or "not indexed"
        elif isinstance(err, StoreUnavailable):
            reason = self._store_down = f"not indexed: {err}"
        else:
            reason = f"not indexed: {getattr(err, 'strerror', None) or err}"
        self._record_pending(source.doc_id, reason)
        report.results.append(DocResult(source.source, FAILED, source.doc_id, "", reason))

    def _keep_positions(self, doc_id: str, parsed: ParsedDocument) -> None:
        """Store where each word of a PDF is drawn (for highlighting quotes), replacing the old copy."""
        from ingest.layout import positions_path, save_positions

        path = positions_path(self.settings, doc_id)
        if parsed.positions:
            save_positions(path, parsed.positions)
        else:
            path.unlink(missing_ok=True)

    def _embed(self, texts: list[str], source: str):
        import numpy as np

        t0 = time.perf_counter()
        # Large calls: the model sorts each call's texts by length, so short chunks (captions, figure
        # text) share batches instead of each padding a batch of long ones.
        step = max(self.settings.embed.batch_size, 256)
        parts = []
        for start in range(0, len(texts), step):
            parts.append(self.embedder.embed(texts[start : start + step]))
            self.progress(ProgressEvent("embed", min(start + step, len(texts)), len(texts), source))
        self.timings["embed"] += time.perf_counter() - t0
        return np.concatenate(parts)

    def _chunk_args(self) -> dict[str, int]:
        c = self.settings.chunk
        return {"size": c.size, "overlap": c.overlap, "min_chars": c.min_chars}

    # --- catalog records --------------------------------------------------------------------------
    def _record(self, source: Source, item: _Work, parsed: ParsedDocument, title: str) -> DocumentRecord:
        opening = "\n".join(page.text for page in parsed.pages[:3])
        names = aliases.merge(
            aliases.aliases_from_title(title),
            reading_list_aliases(source, title),
            aliases.aliases_from_text(opening, title),
        )
        warnings = list(parsed.warnings)
        if title == source.source and not source.title and not parsed.title:
            warnings.append("title from file name")
        return DocumentRecord(
            doc_id=source.doc_id,
            source=source.source,
            location=source.location,
            status=STATUS_PENDING,
            kind=parsed.kind,
            title=title,
            authors=source.authors or parsed.authors,
            aliases=names,
            year=source.year,
            version=split_version(source.arxiv_id)[1] if source.arxiv_id else "",
            url=source.link,
            topic=source.topic,
            arxiv_id=source.arxiv_id,
            pages=len(parsed.pages),
            warnings="; ".join(warnings),
            report={**parsed.report, "pages": len(parsed.pages), "warnings": warnings},
            citekey=source.citekey or (item.previous.citekey if item.previous else ""),
        )

    def _record_pending(self, doc_id: str, reason: str) -> None:
        """Leave a document the store could not take as pending, with the reason: the re-run redoes it."""
        record = self.catalog.get(doc_id)
        if record is not None:
            record.status, record.error = STATUS_PENDING, reason
            self.catalog.upsert(record)

    def _record_failure(
        self,
        source: Source,
        previous: DocumentRecord | None,
        reason: str,
        report: IngestReport,
        parse_report: dict | None = None,
    ) -> None:
        still_indexed = (
            previous is not None
            and previous.status == STATUS_OK
            and previous.index_id == self.settings.index_id()
            and not self._index_emptied
        )
        if still_indexed:
            # Keep the good copy we have; say that refreshing it failed.
            previous.error = f"update failed: {reason}"
            self.catalog.upsert(previous)
        else:
            if previous is not None and previous.status == STATUS_OK:
                reason += "; it is no longer in the rebuilt index (ingest it again once this is fixed)"
            self.catalog.upsert(
                DocumentRecord(
                    doc_id=source.doc_id,
                    source=source.source,
                    location=source.location,
                    status=STATUS_FAILED,
                    kind=source.kind_hint or "",
                    title=source.title,
                    url=source.link,
                    topic=source.topic,
                    arxiv_id=source.arxiv_id,
                    error=reason,
                    citekey=source.citekey,
                    warnings="; ".join((parse_report or {}).get("warnings", [])),
                    report=parse_report or {},
                )
            )
            if previous is not None:
                self._store_for_writing().delete_document(source.doc_id)  # no orphans from an older identity or run
                from ingest.layout import positions_path

                positions_path(self.settings, source.doc_id).unlink(missing_ok=True)
        report.results.append(DocResult(source.source, FAILED, source.doc_id, source.title, reason))


def _keep_citekey(catalog: Catalog, record: DocumentRecord, citekey: str) -> None:
    """An unchanged document re-imported under a (new) citekey keeps it, without re-indexing."""
    if citekey and record.citekey != citekey:
        record.citekey = citekey
        catalog.upsert(record)


def choose_title(source: Source, parsed: ParsedDocument) -> str:
    """The title a document is listed and cited under: the one its source gives (arXiv's metadata,
    the reading list's link text), else the one printed on its first page, else its file name; with
    the reading list's alias after it ("... (GPT-2)")."""
    title = source.title or parsed.title or source.source
    if source.alias and source.alias.lower() not in title.lower():
        title = f"{title} ({source.alias})"
    return title


def decide_kind(sniffed: str | None, hint: str | None, head: bytes = b"", local: bool = False) -> str:
    """Trust the bytes, not the name or the Content-Type: a `.txt` holding an HTML page is HTML, a
    `.html` holding plain words is text, Markdown is recognised by its marks; only a PDF asked for
    (a `.pdf`, an arXiv link) that is not one is refused, with what it is instead."""
    if sniffed == "pdf":
        return "pdf"
    if sniffed is None:
        raise ParseError("unsupported binary content (not a PDF, HTML or text file)")
    if hint == "pdf":
        what = "an HTML page" if sniffed == "html" else "text"
        if local:
            raise ParseError(f"expected a PDF but got {what} (the file is named like a PDF but is not one)")
        raise ParseError(f"expected a PDF but got {what} (an error or login page?)")
    if sniffed == "html":
        return "html"
    return "markdown" if hint == "markdown" or looks_like_markdown(head) else "text"


def _reason(err: Exception) -> str:
    if isinstance(err, OSError):
        return f"cannot read file: {err.strerror or err}"
    return str(err)


def ingest(
    sources: list[Source],
    settings: CoveSettings,
    progress: ProgressCallback | None = None,
    rebuild: bool = False,
    bad_inputs=(),
) -> IngestReport:
    """Ingest `sources` into the library under `settings.home`. The one entry point for CLI and app."""
    pipeline = IngestPipeline(settings, progress)
    try:
        return pipeline.run(sources, rebuild=rebuild, bad_inputs=bad_inputs)
    finally:
        pipeline.close()
