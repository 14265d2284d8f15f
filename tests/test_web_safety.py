"""The chat app's doors, tried as an attacker would, against the real page server: `cove chat` (Streamlit's
st.App under uvicorn) on loopback over a small real library.

- a foreign Host (DNS rebinding) is refused, for HTTP and for the websocket upgrade;
- `/cove/doc/<id>` serves only `ok` documents, only from the copies ingest made under COVE_HOME:
  not a failed document, not a location a shared store supplied, not a symlink leading outside;
- beyond loopback, or with a token configured, every request needs the token.
"""

from __future__ import annotations

import re
import shutil
import socket

import httpx
import pytest
from conftest import make_text_pdf
from servers import CoveChat
from test_sync import SharedStoreStandIn

from cove.catalog import STATUS_OK, Catalog, DocumentRecord
from cove.settings import load_settings
from cove.sync import pull_documents
from ingest.copies import library_copy
from ingest.pipeline import ingest
from ingest.sources import expand_local

pytestmark = pytest.mark.slow

NOTE = "# Field notes\n\n" + "The heron waits at the edge of the reeds for the fish to come close. " * 12


def upgrade(app: CoveChat, host: str, origin: str | None = None, cookie: str = "") -> str:
    """The status line the server answers a websocket upgrade of Streamlit's stream with."""
    lines = [
        "GET /_stcore/stream HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: streamlit",
    ]
    lines += [f"Origin: {origin}"] if origin else []
    lines += [f"Cookie: {cookie}"] if cookie else []
    with socket.create_connection((app.host, app.port), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return s.recv(200).split(b"\r\n")[0].decode()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A home with an indexed note (kept outside the home), a failed document, a record a shared store
    supplied with `location: /etc/hostname`, and an `ok` record whose copy is a symlink leading out."""
    root = tmp_path_factory.mktemp("web-safety")
    home, papers = root / "home", root / "papers"
    papers.mkdir()
    (papers / "heron.md").write_text(NOTE)
    (papers / "broken.pdf").write_bytes(make_text_pdf("x"))  # too little text: fails
    settings = load_settings({"home": str(home)})

    catalog = Catalog(settings.catalog_path)
    shared = {"doc_id": "store-shadow", "source": "shadow", "location": "/etc/hostname", "kind": "text"}
    pull_documents(catalog, SharedStoreStandIn([{**shared, "chunks": 1, "content_hash": "0" * 64}]))
    outside = root / "outside-secret.txt"
    outside.write_text("a file outside COVE_HOME")
    link = library_copy(settings, "1" * 64, "text")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    catalog.upsert(DocumentRecord("linked-out", "linked.txt", "", STATUS_OK, kind="text", content_hash="1" * 64))
    catalog.close()

    report = ingest(expand_local(papers)[0], settings)
    ids = {r.source: r.doc_id for r in report.results}
    assert [r.source for r in report.ingested] == ["heron.md"], report.results
    return home, ids, root


@pytest.fixture(scope="module")
def app(library, tmp_path_factory):
    home, _, root = library
    with CoveChat(home, log=root / "chat.log") as chat:
        yield chat


def test_foreign_host_is_refused_for_http_and_the_websocket(app):
    own = f"127.0.0.1:{app.port}"
    assert httpx.get(app.url + "/").status_code == 200
    refused = httpx.get(app.url + "/", headers={"Host": "attacker.example"})
    assert refused.status_code == 403 and "host name" in refused.text
    assert httpx.get(app.url + "/_stcore/health", headers={"Host": "attacker.example:80"}).status_code == 403
    assert upgrade(app, own, f"http://{own}").endswith("101 Switching Protocols")
    assert upgrade(app, "attacker.example", "http://attacker.example").endswith("403 Forbidden")
    assert upgrade(app, own, "http://attacker.example").endswith("403 Forbidden")  # own Host, foreign page
    assert httpx.get(app.url + "/", headers={"Host": f"localhost:{app.port}"}).status_code == 200


def test_page_route_serves_only_ok_copies_kept_under_the_home(app, library):
    _, ids, root = library
    served = httpx.get(f"{app.url}/cove/doc/{ids['heron.md']}")
    assert served.status_code == 200 and served.text == NOTE
    assert served.headers["content-type"].startswith("text/plain")
    assert served.headers["x-content-type-options"] == "nosniff"
    (root / "papers" / "heron.md").unlink()  # the user's file is gone: the copy under COVE_HOME remains
    assert httpx.get(f"{app.url}/cove/doc/{ids['heron.md']}").text == NOTE

    for doc_id in (ids["broken.pdf"], "store-shadow", "linked-out", "no-such-doc"):
        refused = httpx.get(f"{app.url}/cove/doc/{doc_id}")
        assert refused.status_code == 404 and refused.text.startswith("No copy of this document"), doc_id
    assert httpx.get(f"{app.url}/cove/doc/..%2F..%2Fetc%2Fhostname").status_code in (400, 404)


def _cookie(response: httpx.Response) -> str:
    return response.headers["set-cookie"].split(";", 1)[0]


def test_beyond_loopback_every_request_needs_the_token(library, tmp_path):
    """127.0.0.2 is reachable only from this machine, yet anything but localhost/127.0.0.1/::1 counts
    as beyond loopback (the app cannot know how an address is routed): so it stands in for a LAN
    address here, and `cove chat` generates a token and prints the URL with it."""
    home, ids, _ = library
    log = tmp_path / "chat.log"
    with CoveChat(home, host="127.0.0.2", log=log) as app:
        match = re.search(r"http://127\.0\.0\.2:\d+/\?token=([\w-]+)", log.read_text())
        assert match, log.read_text()
        token = match.group(1)
        own = f"127.0.0.2:{app.port}"

        assert httpx.get(app.url + "/").status_code == 403
        assert httpx.get(f"{app.url}/cove/doc/{ids['heron.md']}").status_code == 403
        assert httpx.get(app.url + "/", params={"token": "wrong"}).status_code == 403
        assert upgrade(app, own, f"http://{own}").endswith("403 Forbidden")

        first = httpx.get(app.url + "/", params={"token": token, "chat": "abc"})
        assert first.status_code == 303 and first.headers["location"] == "/?chat=abc"  # token out of the URL
        assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
        cookie = _cookie(first)
        assert httpx.get(app.url + "/", headers={"Cookie": cookie}).status_code == 200
        assert httpx.get(app.url + "/", headers={"X-Cove-Token": token}).status_code == 200
        assert httpx.get(f"{app.url}/cove/doc/{ids['heron.md']}", headers={"Cookie": cookie}).text == NOTE
        assert upgrade(app, own, f"http://{own}", cookie=cookie).endswith("101 Switching Protocols")
        assert upgrade(app, "attacker.example", "http://attacker.example", cookie=cookie).endswith("403 Forbidden")


def test_a_configured_token_is_required_on_loopback_too(library, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(library[0], home)
    with CoveChat(home, log=tmp_path / "chat.log", env={"COVE_APP__TOKEN": "s3cret-token"}) as app:
        assert httpx.get(app.url + "/").status_code == 403
        assert httpx.get(app.url + "/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
