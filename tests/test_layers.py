"""Which package may import which (docs/architecture.md), checked on every import of the source,
those inside functions included: a lazy import is still a dependency.

- `cove` (answering: retrieval, checks, composition, the model) is the core: it imports no other
  Cove package and no front-end framework.
- `ingest` (building the library) may use the core's shared pieces (settings, text, store, catalog),
  never the service layer or a front end.
- `service` joins the two for every front end; it imports no front-end framework.
- `app` (CLI, Streamlit, HTTP API, MCP server) is the only place front-end frameworks appear.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRONT_END = {"streamlit", "typer", "fastapi", "starlette", "uvicorn", "mcp", "rich", "click"}
FORBIDDEN: dict[str, set[str]] = {
    "cove": {"ingest", "service", "app", "evals", "benchmarks"} | FRONT_END,
    "ingest": {"service", "app", "evals", "benchmarks"} | FRONT_END,
    "service": {"app", "evals", "benchmarks"} | FRONT_END,
}


def imports_of(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_against_the_layers(package):
    found = modules(package)
    assert found, f"no modules under {package}/"
    wrong = {
        str(path.relative_to(ROOT)): sorted(imports_of(path) & FORBIDDEN[package])
        for path in found
        if imports_of(path) & FORBIDDEN[package]
    }
    assert not wrong, f"{package} imports what it must not: {wrong}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ingest.pipeline import ingest\n    import streamlit as st\n")
    assert {"ingest", "streamlit"} <= imports_of(source)


def test_front_ends_ingest_only_through_the_service():
    """The chat app, the API and the MCP server add papers through `service`, never `ingest.pipeline`
    (`cove ingest`, the ingest CLI, drives the pipeline with its own options)."""
    for path in [ROOT / "app" / name for name in ("streamlit_app.py", "api.py", "mcp_server.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "ingest.pipeline":
                names = {alias.name for alias in node.names}
                assert "ingest" not in names, f"{path.name} runs ingest itself"


def runtime_imports(path: Path) -> set[str]:
    """Full module names `path` imports when it runs (imports under `if TYPE_CHECKING:` left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
                   for child in node.body for n in ast.walk(child)}  # fmt: skip
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from ingest import bibtex`
    return names


@pytest.mark.parametrize("package", ["cove", "ingest", "service"])
def test_no_import_cycles(package):
    """Modules that import each other (even lazily) are one module in two files: refmanagers,
    bibtex and zotero were; so were bibtex and the parse workers."""
    graph = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in modules(package)}
    edges = {name: runtime_imports(path) & set(graph) - {name} for name, path in graph.items()}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for other in sorted(edges[name]):
            if other in path:
                cycles.append(path[path.index(other):] + [other])
            elif len(path) < 12:
                visit(other, path + [other])

    for name in sorted(graph):
        visit(name, [name])
    assert not cycles, cycles[:5]
