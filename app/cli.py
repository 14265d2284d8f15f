"""The `cove` command: a thin Typer layer over the core library (`ingest`, `cove`).

Flags map onto the one settings object (`cove.settings.CoveSettings`); the work is done by the
library, which reports progress through a callback that this module draws as rich progress bars.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cove.settings import CoveSettings, load_settings

if TYPE_CHECKING:
    from cove.catalog import DocumentRecord

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Cove: a private, local research assistant over a library of AI/LLM papers.",
)
console = Console(stderr=True)


@app.callback()
def _global_options(
    chroma_url: Annotated[
        str | None,
        typer.Option(
            "--chroma-url",
            envvar="COVE_STORE__CHROMA_URL",
            help="Keep the library's chunks on this Chroma server (e.g. http://127.0.0.1:8000) instead of "
            "embedded under --home. Goes before the command: `cove --chroma-url URL ask ...`.",
        ),
    ] = None,
) -> None:
    """Options for every command."""
    import os

    if chroma_url:  # the settings object (and `cove chat`'s app process) read it from the environment
        os.environ["COVE_STORE__CHROMA_URL"] = chroma_url


HomeOpt = Annotated[Path | None, typer.Option("--home", envvar="COVE_HOME", help="Data directory (default ~/.cove).")]


def _settings(home: Path | None, **sections: dict[str, Any]) -> CoveSettings:
    overrides: dict[str, Any] = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in sections.items()}
    if home is not None:
        overrides["home"] = str(home)
    return load_settings(overrides)


def _model_options(model: str | None, openai_url: str | None) -> dict[str, Any]:
    """--model / --openai-url as the model settings section: a GGUF path, or a model on a server."""
    if openai_url:
        return {"backend": "openai", "openai_url": openai_url, "openai_model": model}
    return {"model": model}


class _ProgressBars:
    """Draws the pipeline's ProgressEvents as one rich bar per stage."""

    LABELS = {"fetch": "Fetching", "parse": "Parsing", "embed": "Embedding"}

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.embedded = 0  # chunks embedded by finished documents
        self.embed_total = 0
        self.current_doc = ""
        self._last_total = 0

    def __call__(self, event) -> None:
        if event.stage == "done":
            return
        if event.stage == "embed":
            self._embed(event)
            return
        task = self._task(event.stage)
        self.progress.update(
            task,
            completed=event.completed,
            total=max(event.total, 1),
            description=f"{self.LABELS[event.stage]:<10} {event.source[-48:]}",
        )

    def _embed(self, event) -> None:
        task = self._task("embed")
        if event.source != self.current_doc:
            self.embedded += self._last_total
            self.embed_total += event.total
            self.current_doc = event.source
        self._last_total = event.total
        self.progress.update(
            task,
            completed=self.embedded + event.completed,
            total=max(self.embed_total, 1),
            description=f"{'Embedding':<10} {event.source[-48:]}",
        )

    def _task(self, stage: str):
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(self.LABELS[stage], total=None)
        return self.tasks[stage]


@app.command()
def ingest(
    from_: Annotated[
        list[Path] | None, typer.Option("--from", help="Local PDF/HTML/Markdown/text file or folder.")
    ] = None,
    url: Annotated[
        list[str] | None, typer.Option("--url", help="URL of a PDF or HTML article (arXiv URLs too).")
    ] = None,
    arxiv: Annotated[list[str] | None, typer.Option("--arxiv", help="arXiv id, e.g. 2205.14135.")] = None,
    reading_list: Annotated[
        list[Path] | None,
        typer.Option("--reading-list", help="Markdown file: every paper/article link in it."),
    ] = None,
    bibtex: Annotated[
        list[Path] | None,
        typer.Option("--bibtex", help="BibTeX file: every entry with an arXiv id, DOI/URL or attached file."),
    ] = None,
    zotero: Annotated[
        list[Path] | None,
        typer.Option("--zotero", help="Zotero export: CSL JSON, or Better BibTeX .bib with attached files."),
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Drop the index and re-index every document.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
    home: HomeOpt = None,
    chunk_size: Annotated[int | None, typer.Option(help="Chunk size in characters.")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Chunk overlap in characters.")] = None,
    embed_model: Annotated[str | None, typer.Option(help="Embedding model (sentence-transformers).")] = None,
    embed_backend: Annotated[str | None, typer.Option(help="torch | torch-int8.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parser processes.")] = None,
) -> None:
    """Add papers to the library. With no source given: the curated reading list (needs internet)."""
    from ingest import sources as src
    from ingest.pipeline import ingest as run_ingest

    settings = _settings(
        home,
        chunk={"size": chunk_size, "overlap": chunk_overlap},
        embed={"model": embed_model, "backend": embed_backend},
        parse={"workers": workers},
    )
    chosen, bad = src.collect_sources(from_ or [], url or [], arxiv or [], reading_list or [])
    for export in [*(bibtex or []), *(zotero or [])]:
        chosen, bad = _add_references(export, chosen, bad, settings)
    # --rebuild alone: the known documents only
    if not (from_ or url or arxiv or reading_list or bibtex or zotero or rebuild):
        chosen = src.curated_reading_list()
        console.print(f"Ingesting the curated reading list ({len(chosen)} papers and articles).")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=as_json or not console.is_terminal,
    ) as progress:
        report = run_ingest(chosen, settings, _ProgressBars(progress), rebuild=rebuild, bad_inputs=bad)

    if as_json:
        typer.echo(json.dumps(_report_json(report), indent=2))
    else:
        _print_report(report, settings)
    raise typer.Exit(code=1 if report.failed else 0)


def _add_references(export: Path, chosen: list, bad: list, settings: CoveSettings) -> tuple[list, list]:
    """The entries of a BibTeX / Zotero export added to the sources; an unreadable export (or a .bib
    past the parse worker's time or memory limit) is one bad input. Attached files are read inside
    the export's folder and ingest.allowed_roots only."""
    from ingest.refmanagers import ReferenceError, load_references
    from ingest.workers import WorkerLimits

    try:
        found, problems = load_references(
            export, settings.ingest.allowed_roots, WorkerLimits.from_settings(settings.parse)
        )
    except ReferenceError as err:
        return chosen, [*bad, (str(export), str(err))]
    return chosen + found, bad + problems


def _report_json(report) -> dict[str, Any]:
    from service.library import report_json

    return report_json(report)


def _print_report(report, settings: CoveSettings) -> None:
    table = Table(title="Ingest summary", show_lines=False)
    for column in ("Status", "Source", "Title", "Pages", "Chunks", "Reason"):
        table.add_column(column, overflow="fold")
    style = {"ingested": "green", "skipped": "dim", "failed": "red"}
    for r in report.results:
        table.add_row(
            f"[{style[r.status]}]{r.status}[/]",
            r.source,
            r.title[:60],
            str(r.pages or ""),
            str(r.chunks or ""),
            r.reason,
        )
    out = Console()
    out.print(table)
    t = report.timings
    out.print(
        f"{len(report.ingested)} ingested, {len(report.skipped)} skipped, {len(report.failed)} failed; "
        f"{report.chunks_written} chunks written in {t.get('total', 0):.1f}s "
        f"(fetch {t.get('fetch', 0):.1f}s, parse {t.get('parse', 0):.1f}s, embed {t.get('embed', 0):.1f}s, "
        f"store {t.get('store', 0):.1f}s). Library: {settings.home_dir}"
    )
    if report.rebuilt:
        out.print("[yellow]The index was rebuilt (index settings changed or --rebuild).[/]")


@app.command()
def library(
    as_json: Annotated[bool, typer.Option("--json", help="Print the library as JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """List the documents in the library, with their status and any error."""
    from cove.catalog import not_stored_message, parse_summary
    from cove.sync import library_documents
    from service.library import library_json

    settings = _settings(home)
    records = library_documents(settings)
    lost = _mark_not_stored(settings, records)
    if as_json:
        typer.echo(json.dumps(library_json(records), indent=2))
        return
    where = settings.home_dir if not settings.store.chroma_url else f"{settings.home_dir} + {settings.store.chroma_url}"
    if not records:
        Console().print(f"The library at {where} is empty. Add papers with `cove ingest`.")
        return
    if lost:
        console.print(f"[red]{not_stored_message(lost)}[/]", highlight=False)
    table = Table(title=f"Library: {where}")
    for column in ("Title", "Source", "Kind", "Pages", "Chunks", "Parse", "Status", "Error / warnings"):
        table.add_column(column, overflow="fold")
    for r in records:
        status = {"ok": "[green]ok[/]", "failed": "[red]failed[/]"}.get(r.status, f"[yellow]{r.status}[/]")
        notes = "; ".join(part for part in (r.error, r.warnings) if part)
        table.add_row(
            r.title[:70], r.source, r.kind, str(r.pages), str(r.chunks), parse_summary(r.report), status, notes
        )
    Console().print(table)


def _mark_not_stored(settings: CoveSettings, records: list[DocumentRecord]) -> int:
    """Show `ok` documents as "not in store" when the chunk store holds no chunk at all (a killed
    `--rebuild`); returns how many. One count of the store, only when some document claims chunks."""
    from cove.catalog import STATUS_NOT_STORED, STATUS_OK
    from cove.store import ChunkStore

    claimed = [r for r in records if r.status == STATUS_OK]
    if not claimed or ChunkStore(settings).count() > 0:
        return 0
    for record in claimed:
        record.status = STATUS_NOT_STORED
        record.error = "its chunks are not in the store: run `cove ingest --rebuild` to index it again"
    return len(claimed)


# --- ask ---------------------------------------------------------------------------------------------


class _AnswerPrinter:
    """Shows the engine's events on stderr: the stages, the first checked sentences, the draft
    (labelled: it is being checked) and each verification, as the app shows them."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.drafting = False

    def __call__(self, event) -> None:
        from cove import events as ev

        if self.quiet:
            return
        if isinstance(event, ev.DraftToken):
            if not self.drafting:
                console.print("[dim]draft (being checked):[/] ", end="", highlight=False)
                self.drafting = True
            console.print(event.text, end="", style="dim", markup=False, highlight=False)
            return
        if self.drafting:
            console.print()
            self.drafting = False
        if isinstance(event, ev.FirstQuotes):
            console.print(f"[bold cyan]checked so far[/] {event.text}", markup=True, highlight=False)
        elif isinstance(event, ev.Verified):
            console.print(f"  [cyan]verify[/] {event.question} -> {event.answer} [{event.status}]", highlight=False)
        elif isinstance(event, (ev.StageStarted, ev.Retrieved, ev.CoverageDecided, ev.DraftReady, ev.PlanReady)):
            console.print(f"[bold cyan]{event.stage.value}[/] {event.message}", highlight=False)


def _read_history(path: Path | None) -> list[dict[str, str]] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise typer.BadParameter(f"cannot read history {path}: {err}") from err
    turns = data.get("history", data) if isinstance(data, dict) else data
    if not isinstance(turns, list) or not all(isinstance(t, dict) and "role" in t and "content" in t for t in turns):
        raise typer.BadParameter(f"{path}: history must be a list of {{'role', 'content'}} objects")
    return turns


def _print_answer(answer) -> None:
    out = Console()
    out.print()
    out.print(answer.answer, markup=False, highlight=False)
    if answer.corrections:
        from service.conversations import correction_text

        lines = "; ".join(correction_text(c) for c in answer.corrections)
        console.print("[yellow]checks:[/] " + lines, highlight=False)
    for c in answer.citations:
        out.print(f"  [{c.n}] {c.title} ({c.source}), p. {c.page}: \u201c{c.quote}\u201d  {c.url}", markup=False)
    if answer.refused and answer.retrieved:
        out.print("  closest: " + ", ".join(f"{r['source']} p.{r['page']}" for r in answer.retrieved[:3]), markup=False)


@app.command()
def ask(
    question: Annotated[str | None, typer.Argument(help="The question.")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="cove (default) or baseline.")] = None,
    history: Annotated[
        Path | None, typer.Option("--history", help="JSON file: earlier turns [{role, content}].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch: Annotated[Path | None, typer.Option("--batch", help="JSON Lines of {id, question, history?}.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where --batch writes answers (JSON Lines).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Sources given to the model.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="GGUF path, or model name on --openai-url.")] = None,
    openai_url: Annotated[str | None, typer.Option("--openai-url", help="OpenAI-compatible server URL.")] = None,
    home: HomeOpt = None,
) -> None:
    """Answer a question from the library, with verified, page-level citations."""
    from cove.catalog import LibraryEmpty
    from cove.engine import AnswerEngine
    from cove.llm import ModelError

    if pipeline not in (None, "cove", "baseline"):
        raise typer.BadParameter("--pipeline must be 'cove' or 'baseline'")
    settings = _settings(
        home, retrieve={"k": k}, model=_model_options(model, openai_url), answer={"pipeline": pipeline}
    )
    if not settings.catalog_path.exists():
        console.print(f"[red]No library at {settings.home_dir}.[/] Add papers first: cove ingest --from <folder>")
        raise typer.Exit(2)
    engine = AnswerEngine(settings)
    try:
        if batch is not None:
            failed = _ask_batch(engine, batch, out, pipeline)
            if failed:
                console.print(f"[yellow]{failed} line(s) not answered (see the errors above and the error rows)[/]")
                raise typer.Exit(1)
            return
        if not question:
            raise typer.BadParameter("give a question, or --batch FILE")
        answer = engine.ask(question, _read_history(history), pipeline, _AnswerPrinter(quiet=as_json))
    except ModelError as err:
        console.print(f"[red]Model error:[/] {err}")
        raise typer.Exit(3) from err
    except LibraryEmpty as err:  # e.g. the catalog lists documents the store lost
        console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(2) from err
    if as_json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        _print_answer(answer)


def _ask_batch(engine, batch: Path, out: Path | None, pipeline: str | None) -> int:
    """Answer every line of `batch`; a bad line (or a question that fails) is reported, written as an
    ``{"id", "error"}`` row and skipped, never the end of the run. Returns the number of failed lines."""
    try:
        lines = [line for line in batch.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError as err:
        raise typer.BadParameter(f"cannot read {batch}: {err.strerror or err}") from err
    sink = out.open("w", encoding="utf-8") if out else sys.stdout
    failed = 0
    try:
        with Progress(
            TextColumn("Answering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            task = progress.add_task("ask", total=len(lines))
            for number, line in enumerate(lines, start=1):
                row = _batch_answer(engine, number, line, pipeline)
                if "error" in row:
                    failed += 1
                    console.print(f"[red]line {number}: {row['error']}[/]", markup=True, highlight=False)
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                progress.advance(task)
    finally:
        if out:
            sink.close()
    return failed


def _batch_answer(engine, number: int, line: str, pipeline: str | None) -> dict[str, Any]:
    """The answer to one batch line as a JSON row, or ``{"id", "line", "error"}`` saying what was wrong."""
    from cove.llm import ModelError

    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        return {"id": str(number), "line": number, "error": f"not JSON ({err})"}
    item_id = str(item.get("id", number)) if isinstance(item, dict) else str(number)
    problem = _batch_item_problem(item)
    if problem:
        return {"id": item_id, "line": number, "error": problem}
    try:
        return engine.ask(item["question"], item.get("history"), pipeline, id=item_id).to_json()
    except ModelError:
        raise  # the model is unusable for every line: stop with the model error
    except Exception as err:  # this question failed; the next ones may not
        return {"id": item_id, "line": number, "error": f"could not answer ({type(err).__name__}: {err})"}


def _is_turn(turn: Any) -> bool:
    return isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)


def _batch_item_problem(item: Any) -> str:
    if not isinstance(item, dict):
        return "not a question object ({...})"
    if not isinstance(item.get("question"), str) or not item["question"].strip():
        return "no question (a non-empty string under 'question')"
    history = item.get("history")
    if history is not None and not (isinstance(history, list) and all(map(_is_turn, history))):
        return "history must be a list of {'role', 'content'} objects"
    return ""


# --- chat ----------------------------------------------------------------------------------------------


@app.command()
def chat(
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8501, or COVE_APP__PORT).")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1: this machine only).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="GGUF path, or model name on --openai-url.")] = None,
    openai_url: Annotated[str | None, typer.Option("--openai-url", help="OpenAI-compatible server URL.")] = None,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open a browser tab.")] = False,
    home: HomeOpt = None,
) -> None:
    """Start the web chat app (Streamlit) over the library.

    Beyond loopback (`--host 0.0.0.0` or any address but localhost/127.0.0.1/::1) the app requires an
    access token: COVE_APP__TOKEN, or one generated here and printed in the URL."""
    import os
    import secrets

    from app.access import listens_on_loopback

    settings = _settings(home, app={"port": port, "host": host}, model=_model_options(model, openai_url))
    token = settings.app.token
    if not token and not listens_on_loopback(settings.app.host):
        token = secrets.token_urlsafe(24)
    # The app reads its settings from the environment: hand over what the flags changed.
    env = dict(os.environ, COVE_HOME=str(settings.home_dir))
    for key, value in (("BACKEND", settings.model.backend), ("MODEL", settings.model.model)):
        env[f"COVE_MODEL__{key}"] = value
    if settings.model.openai_url:
        env["COVE_MODEL__OPENAI_URL"] = settings.model.openai_url
        env["COVE_MODEL__OPENAI_MODEL"] = settings.model.openai_model
    env.update(COVE_APP__HOST=settings.app.host, COVE_APP__PORT=str(settings.app.port), COVE_APP__TOKEN=token)
    server = Path(__file__).with_name("server.py")
    command = [
        sys.executable, "-m", "streamlit", "run", str(server),
        "--server.address", settings.app.host,
        "--server.port", str(settings.app.port),
        "--server.headless", "false" if open_browser else "true",
        "--server.maxUploadSize", str(settings.app.max_upload_mb),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    shown_host = settings.app.host if settings.app.host not in ("0.0.0.0", "::") else "127.0.0.1"
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    url = f"http://{shown_host}:{settings.app.port}/" + (f"?token={token}" if token else "")
    console.print(f"Cove chat: {url}  (library: {settings.home_dir})", soft_wrap=True, highlight=False)
    if not listens_on_loopback(settings.app.host):
        console.print(
            "Listening beyond loopback: the URL's token is required. Other machines must use a host name or "
            "address listed in COVE_APP__ALLOWED_HOSTS (or the address given to --host).",
            highlight=False,
        )
    os.execvpe(command[0], command, env)


# --- other tools: the HTTP API and the MCP server ------------------------------------------------------


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Address (default 127.0.0.1; others need COVE_API__TOKEN).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8765, or COVE_API__PORT).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="GGUF path, or model name on --openai-url.")] = None,
    openai_url: Annotated[str | None, typer.Option("--openai-url", help="OpenAI-compatible server URL.")] = None,
    home: HomeOpt = None,
) -> None:
    """Serve the library over HTTP: an OpenAI-compatible chat API with citations, and a REST API."""
    from app.api import check_bind
    from app.api import serve as run_api

    settings = _settings(home, api={"host": host, "port": port}, model=_model_options(model, openai_url))
    try:
        check_bind(settings)
    except ValueError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from err
    console.print(
        f"Cove API: http://{settings.api.host}:{settings.api.port}/v1 (models: cove, cove-baseline)  "
        f"library: {settings.home_dir}"
    )
    run_api(settings)


@app.command()
def mcp(
    http: Annotated[bool, typer.Option("--http", help="Serve streamable HTTP on 127.0.0.1 instead of stdio.")] = False,
    port: Annotated[int | None, typer.Option("--port", help="Port for --http (default 8766).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="GGUF path, or model name on --openai-url.")] = None,
    openai_url: Annotated[str | None, typer.Option("--openai-url", help="OpenAI-compatible server URL.")] = None,
    home: HomeOpt = None,
) -> None:
    """Serve the library to MCP clients (desktop assistants, IDE agents): stdio, or --http on loopback."""
    from app.mcp_server import run_http, run_stdio

    settings = _settings(home, api={"mcp_port": port}, model=_model_options(model, openai_url))
    if http:
        import secrets

        token = settings.api.token or secrets.token_urlsafe(24)
        shown = "COVE_API__TOKEN" if settings.api.token else token
        console.print(f"Cove MCP: http://127.0.0.1:{settings.api.mcp_port}/mcp  (library: {settings.home_dir})\n"
                      f"Clients send the header  Authorization: Bearer {shown}", highlight=False)  # fmt: skip
        run_http(settings, token)
    else:
        run_stdio(settings)


@app.command("model-check")
def model_check(
    model: Annotated[str | None, typer.Option("--model", help="GGUF path (default: the configured model).")] = None,
    recheck: Annotated[bool, typer.Option("--recheck", help="Forget the remembered result; check again.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    home: HomeOpt = None,
) -> None:
    """Show this machine's CPU, the llama.cpp build, and whether the model runs here (the self-check)."""
    from cove import cpu
    from cove.llm import LlamaCppModel, ModelError
    from cove.model_check import build_identity

    settings = _settings(home, model=_model_options(model, None))
    if settings.model.backend != "llama-cpp":
        console.print("The model runs on a server (model.backend = 'openai'): nothing to check here.")
        return
    report: dict[str, Any] = {"machine": cpu.report(), "build": build_identity(), "model": settings.model.model}
    try:
        chat_model = LlamaCppModel(settings.model, settings.models_dir)
        report["model"] = chat_model.path
        if recheck:
            chat_model.forget_check()
        chat_model.check()
        report |= {"ok": True, "model": chat_model.path}
    except ModelError as err:
        report |= {"ok": False, "error": str(err)}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        machine = report["machine"]
        console.print(f"CPU: {machine['cpu']}; vector flags: {', '.join(machine['cpu_flags'])}", highlight=False)
        console.print(f"OS state: {machine['os_xstate']} ({machine['os_xstate_source']}); AMX granted: "
                      f"{machine['amx_granted']}", highlight=False)  # fmt: skip
        build = report["build"]
        console.print(f"llama-cpp-python {build['version']}: {build['cmake_args'] or 'flags not recorded'}",
                      highlight=False)  # fmt: skip
        if report["ok"]:
            console.print(f"[green]The model runs here:[/] {report['model']}", highlight=False)
        else:
            console.print(f"[red]The model does not run here:[/] {report['error']}", highlight=False)
    if not report["ok"]:
        raise typer.Exit(3)


@app.command("train-reader")
def train_reader_command(
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the reader (default <home>/reader).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training pairs.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pair sampling, the shuffle and torch.")] = 22,
    model_questions: Annotated[
        int, typer.Option("--model-questions", help="Sentences the chat model writes questions for (0: none).")
    ] = 0,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="A paper's file name to leave out.")] = None,
    per_paper: Annotated[int, typer.Option("--per-paper", help="Most questions made per paper.")] = 400,
    home: HomeOpt = None,
) -> None:
    """Train the reader on this library (pairs from its own text; a progress bar), to use with
    COVE_READER__PATH=<out>."""
    from cove.engine import AnswerEngine
    from cove.reader.train import retrain

    settings = _settings(home, reader={"kind": "off"})
    target = out or settings.home_dir / "reader"
    manifest = retrain(AnswerEngine(settings), target, seed, epochs, model_questions, exclude or [],
                       log=lambda m: console.print(m, highlight=False, markup=False), per_paper=per_paper)  # fmt: skip
    console.print(f"Trained on {manifest['pairs']} pairs in {manifest['train_seconds']} s. Use it with:\n"
                  f"  COVE_READER__PATH={target}", highlight=False, markup=False, soft_wrap=True)  # fmt: skip


# --- evaluation ------------------------------------------------------------------------------------------


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Option("--dataset", help="Question set (JSON Lines).")] = Path(
        "evals/datasets/dev.jsonl"
    ),
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="cove | baseline | a TOML file in evals/variants | NAME=PIPELINE,key=value. Repeat to compare.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default reports/eval-<date>).")] = None,
    corpus: Annotated[
        Path | None, typer.Option("--corpus", help="Ingest this folder of papers first (skips what is indexed).")
    ] = None,
    ids: Annotated[str | None, typer.Option("--ids", help="Only these item ids (comma-separated).")] = None,
    split: Annotated[str, typer.Option("--split", help="all | tuning | heldout.")] = "all",
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N items.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming --out.")] = False,
    k: Annotated[int | None, typer.Option("--k", help="Sources given to the model.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="GGUF path, or model name on --openai-url.")] = None,
    openai_url: Annotated[str | None, typer.Option("--openai-url", help="OpenAI-compatible server URL.")] = None,
    home: HomeOpt = None,
) -> None:
    """Run a question set through one or more variants and write a side-by-side report."""
    import datetime
    import time

    from evals.corpus import ingest_corpus
    from evals.dataset import DatasetError, heldout_ids, load_dataset, select_items
    from evals.report import write_outputs
    from evals.runner import run_eval
    from evals.variants import VariantError, parse_variant, unique_names

    try:
        items = load_dataset(dataset)
        variants = [parse_variant(spec) for spec in (variant or ["cove", "baseline"])]
        unique_names(variants)
    except (DatasetError, VariantError) as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(2) from err
    heldout = heldout_ids(dataset)
    try:
        items = select_items(items, ids, split, limit, heldout)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    settings = _settings(home, retrieve={"k": k}, model=_model_options(model, openai_url))
    if corpus is not None:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            missing, report = ingest_corpus(corpus, load_dataset(dataset), settings, _ProgressBars(progress))
        if missing:
            console.print(f"[yellow]Not in {corpus}:[/] {', '.join(missing)} (their items will score 0)")
        if report.failed:
            console.print(f"[yellow]{len(report.failed)} corpus file(s) could not be indexed[/]")
    if not settings.catalog_path.exists():
        console.print(f"[red]No library at {settings.home_dir}.[/] Use --corpus <folder> or cove ingest first.")
        raise typer.Exit(2)
    out = out or Path("reports") / f"eval-{datetime.date.today().isoformat()}"

    console.print(f"Evaluating {len(items)} items x {len(variants)} variants -> {out}")
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("Answering", total=len(items) * len(variants))

        def show(event) -> None:
            progress.update(
                task, completed=event.done, description=f"{event.variant:<10} {event.item_id:<8} {event.outcome:<24}"
            )

        run = run_eval(items, variants, settings, out, show, fresh=fresh)
    meta = {
        "dataset": str(dataset),
        "items": len(items),
        "heldout": len(heldout & {i.id for i in items}),
        "model": settings.model.model if settings.model.backend == "llama-cpp" else settings.model.openai_model,
        "k": settings.retrieve.k,
        "answered": run.answered,
        "errors": run.errors,
        "wall_s": time.perf_counter() - started,
        "variants": {v.name: {"pipeline": v.pipeline, "overrides": v.overrides, "description": v.description}
                     for v in variants},
    }  # fmt: skip
    summary = write_outputs(run.rows, [v.name for v in variants], heldout, meta, out)
    _print_eval_summary(summary)
    console.print(f"Report: {out / 'report.md'}")
    if run.errors:
        console.print(f"[red]{run.errors} answers failed with an error[/] (see results.jsonl; re-run to retry them)")
        raise typer.Exit(1)


def _print_eval_summary(summary: dict[str, Any]) -> None:
    table = Table(title="Evaluation (all items)")
    columns = ("correctness", "refusal_accuracy", "recall_at_k", "citation_precision", "grounded_numbers")
    for title in ("variant", *columns, "p50 s"):
        table.add_column(title, justify="right")
    for name, result in summary["variants"].items():
        overall = result["overall"]
        cells = ["n/a" if overall.get(m) is None else f"{overall[m]:.2f}" for m in columns]
        table.add_row(name, *cells, f"{overall.get('latency_p50_s', 0):.1f}")
    Console().print(table)
    targets = Table(title="Targets (held-out items)")
    for title in ("issue", "target", "measured", ""):
        targets.add_column(title)
    for t in summary["targets"]:
        verdict = "[green]met[/]" if t["met"] else "[red]missed[/]"
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        targets.add_row(str(t["issue"]), f"{t['name']} {t['op']} {t['target']}", value, verdict)
    Console().print(targets)


@app.command("check-dataset")
def check_dataset(
    dataset: Annotated[Path, typer.Argument(help="Question set (JSON Lines).")] = Path("evals/datasets/dev.jsonl"),
    corpus: Annotated[Path, typer.Option("--corpus", help="Folder with the PDFs the items cite.")] = Path(
        "../shared/corpus"
    ),
) -> None:
    """Validate a question set and check every evidence quote against its page's pypdf text."""
    from evals.dataset import DatasetError, check_evidence, describe, load_dataset

    try:
        items = load_dataset(dataset)
    except DatasetError as err:
        console.print(f"[red]{err}[/]")
        raise typer.Exit(1) from err
    problems = check_evidence(items, corpus)
    counts = ", ".join(f"{t} {n}" for t, n in describe(items).items())
    console.print(f"{len(items)} items ({counts})")
    for problem in problems:
        console.print(f"[red]{problem}[/]")
    if problems:
        raise typer.Exit(1)
    console.print("Every evidence quote is on its page.")


def main() -> None:
    from cove.lock import LibraryBusy
    from cove.store import StoreUnavailable

    try:
        app()
    except (StoreUnavailable, LibraryBusy) as err:
        console.print(f"[red]Error:[/] {err}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("Interrupted: run the same command again to finish; nothing is duplicated.")
        sys.exit(130)


if __name__ == "__main__":
    main()
