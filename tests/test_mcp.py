"""`cove mcp` driven by the official `mcp` SDK's client over stdio (a real `cove mcp` process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import anyio
import pytest
from conftest import FIXTURES, ROOT

pytestmark = pytest.mark.slow
mcp = pytest.importorskip("mcp", reason="`cove mcp` needs the mcp SDK")


@pytest.fixture
def library_copy(small_library, tmp_path):
    """A copy of the small library: add_paper must not change the shared one."""
    home = tmp_path / "home"
    shutil.copytree(small_library.home_dir, home)
    return home


def cove_mcp(home, roots: tuple = ()) -> mcp.client.stdio.StdioServerParameters:
    from mcp.client.stdio import StdioServerParameters

    env = {"COVE_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "COVE_INGEST__ALLOWED_ROOTS": json.dumps([str(r) for r in roots])}  # fmt: skip
    return StdioServerParameters(command=sys.executable, args=["-m", "app.cli", "mcp"], cwd=str(ROOT), env=env)


def structured(result) -> dict:
    assert not result.is_error, result.content
    return result.structured_content or json.loads(result.content[0].text)


def test_mcp_client_over_stdio(library_copy, tmp_path):
    papers, private = tmp_path / "papers", tmp_path / "private"
    papers.mkdir()
    private.mkdir()
    note = papers / "rope-notes.md"
    shutil.copy(FIXTURES / "notes.md", note)
    secret = private / "private-notes.txt"
    secret.write_text("The password is hunter2-mcp. " * 20)
    (papers / "escape").symlink_to(private)  # inside the allowed folder, leading out of it

    async def session() -> dict:
        from mcp import Client

        seen: dict = {}
        async with Client(cove_mcp(library_copy, roots=(papers,)), read_timeout_seconds=600) as client:
            seen["tools"] = {t.name: t for t in (await client.list_tools()).tools}
            seen["answer"] = structured(
                await client.call_tool(
                    "ask_papers",
                    {"question": "How many parallel attention heads does the base Transformer use?",
                     "pipeline": "baseline"},
                )
            )  # fmt: skip
            seen["refusal"] = structured(
                await client.call_tool("ask_papers", {"question": "What is the capital of France?"})
            )
            seen["search"] = structured(await client.call_tool("search_papers", {"query": "LoRA rank", "k": 3}))
            seen["added"] = structured(await client.call_tool("add_paper", {"url_or_path": str(note)}))
            seen["missing"] = structured(await client.call_tool("add_paper", {"url_or_path": "/no/such/paper.pdf"}))
            seen["outside"] = [
                structured(await client.call_tool("add_paper", {"url_or_path": str(path)}))
                for path in (secret, papers / "escape" / "private-notes.txt", private, papers / ".." / "private")
            ]
            seen["papers"] = structured(await client.call_tool("list_papers", {}))["papers"]
            seen["resources"] = [str(r.uri) for r in (await client.list_resources()).resources]
            page = await client.read_resource("cove://papers/arxiv-1706.03762/pages/5")
            seen["page"] = page.contents[0].text
            seen["empty_question"] = await client.call_tool("ask_papers", {"question": "  "})
        return seen

    seen = anyio.run(session)
    assert set(seen["tools"]) == {"search_papers", "ask_papers", "list_papers", "add_paper"}
    assert set(seen["tools"]["ask_papers"].input_schema["properties"]) == {"question", "history", "pipeline"}

    answer = seen["answer"]
    assert not answer["refused"] and "8" in answer["answer"] and answer["citations"]
    for citation in answer["citations"]:
        assert f"[{citation['n']}]" in answer["answer"]
        assert citation["title"] and citation["source"] and citation["page"] >= 1 and citation["quote"]
    assert seen["refusal"]["refused"] and seen["refusal"]["citations"] == []
    assert [h["doc_id"] for h in seen["search"]["hits"]][0] == "arxiv-2106.09685"

    assert seen["added"]["ingested"] == 1, seen["added"]
    assert seen["missing"]["failed"] == 1 and "not found inside" in seen["missing"]["results"][0]["reason"]
    for refused in seen["outside"]:  # a path outside ingest.allowed_roots is never read
        assert refused["ingested"] == 0 and refused["failed"] == 1, refused
        assert "ingest.allowed_roots" in refused["results"][0]["reason"]
    added_id = seen["added"]["results"][0]["doc_id"]
    assert added_id in {p["doc_id"] for p in seen["papers"]}
    assert f"cove://papers/{added_id}" in seen["resources"]
    assert not [p for p in seen["papers"] if "private" in p["source"]]  # the secret was never indexed

    # The page resource is the indexed text of page 5 (where h = 8 is stated), without chunk overlaps twice.
    page = seen["page"]
    assert "h = 8 parallel attention layers" in " ".join(page.split())
    assert page.count("In this work we employ h = 8") == 1
    assert seen["empty_question"].is_error


def test_mcp_resource_of_a_missing_page_is_an_error(library_copy):
    async def read() -> str:
        from mcp import Client
        from mcp.shared.exceptions import MCPError

        async with Client(cove_mcp(library_copy), read_timeout_seconds=300) as client:
            try:
                await client.read_resource("cove://papers/arxiv-1706.03762/pages/999")
            except MCPError as err:
                return str(err)
        return ""

    assert "pages 1-15" in anyio.run(read)


def test_mcp_over_streamable_http_on_loopback(small_library, tmp_path):
    import httpx
    from servers import free_port

    port = free_port()
    token = "mcp-test-token"
    env = {**os.environ, "COVE_HOME": str(small_library.home_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "COVE_API__TOKEN": token}  # fmt: skip
    log = (tmp_path / "mcp.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "mcp", "--http", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "mcp.log").read_text()[-2000:]
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)

        async def session() -> tuple[set, list]:
            import httpx2
            from mcp import Client
            from mcp.client.streamable_http import streamable_http_client

            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=300) as http:
                async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=300) as client:
                    tools = {t.name for t in (await client.list_tools()).tools}
                    papers = structured(await client.call_tool("list_papers", {}))["papers"]
            return tools, papers

        tools, papers = anyio.run(session)
        assert {"search_papers", "ask_papers", "list_papers", "add_paper"} <= tools
        assert {p["doc_id"] for p in papers} >= {"arxiv-1706.03762", "arxiv-2106.09685"}
        # Without the token (or with a wrong one), not even initialize gets through.
        client_info = {"name": "t", "version": "1"}
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client_info}
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        accept = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            denied = httpx.post(url, json=initialize, headers={**accept, **headers}, timeout=30)
            assert denied.status_code == 401, (headers, denied.status_code, denied.text[:200])
        # DNS rebinding: a request naming another host is refused by the SDK's transport security.
        rebound = httpx.post(url, headers={"Host": "evil.example", "Authorization": f"Bearer {token}", **accept},
                             content=b"{}", timeout=30)  # fmt: skip
        assert rebound.status_code in (400, 403, 421)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
