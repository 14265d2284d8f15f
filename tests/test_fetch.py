"""The fetch stage against a real HTTP server on 127.0.0.1."""

import contextlib
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import ingest.fetch as fetch_module
from cove.settings import FetchSettings
from ingest.fetch import BlockedAddress, Fetcher, FetchError, address_problem


def _fetcher(tmp_path, **overrides) -> Fetcher:
    settings = FetchSettings(
        **{
            "timeout_s": 1.0,
            "connect_timeout_s": 1.0,
            "retries": 2,
            "backoff_s": 0.01,
            "arxiv_delay_s": 0,
            "allow_private_hosts": True,  # the fixture server is on loopback; the default refuses it (below)
            **overrides,
        }
    )
    return Fetcher(settings, tmp_path / "cache")


def test_download_is_cached_and_revalidated_with_etag(http_server, tmp_path):
    with _fetcher(tmp_path) as f:
        first = f.fetch(f"{http_server.base}/paper.pdf")
        assert first.kind == "pdf" and not first.from_cache
        assert first.path.read_bytes() == http_server.pdf
        again = f.fetch(f"{http_server.base}/paper.pdf")  # fresh: no request at all
        assert again.from_cache and http_server.hits["/paper.pdf"] == 1
    with _fetcher(tmp_path, refresh_after_s=0) as f:  # stale: conditional request, 304
        third = f.fetch(f"{http_server.base}/paper.pdf")
        assert third.from_cache and http_server.hits["/paper.pdf"] == 2
    assert not list((tmp_path / "cache").glob(".tmp-*")), "no temp files left behind"


def test_404_fails_without_retrying(http_server, tmp_path):
    with _fetcher(tmp_path) as f, pytest.raises(FetchError, match="HTTP 404"):
        f.fetch(f"{http_server.base}/missing.pdf")
    assert http_server.hits["/missing.pdf"] == 1


def test_500_then_200_is_retried(http_server, tmp_path):
    with _fetcher(tmp_path) as f:
        assert f.fetch(f"{http_server.base}/flaky.pdf").kind == "pdf"
    assert http_server.hits["/flaky.pdf"] == 2


def test_429_honours_retry_after(http_server, tmp_path):
    slept = []
    with _fetcher(tmp_path) as f:
        f.sleep = slept.append
        assert f.fetch(f"{http_server.base}/ratelimited.pdf").kind == "pdf"
    assert slept == [0.0]


def test_slow_server_times_out_after_retries(http_server, tmp_path):
    with _fetcher(tmp_path, timeout_s=0.5, retries=1) as f, pytest.raises(FetchError, match="timed out .* 2 attempt"):
        f.fetch(f"{http_server.base}/slow.pdf")


def test_oversize_download_is_refused_declared_or_streamed(http_server, tmp_path):
    with _fetcher(tmp_path, max_bytes=100_000) as f:
        with pytest.raises(FetchError, match="too large"):
            f.fetch(f"{http_server.base}/big.pdf")
        with pytest.raises(FetchError, match="too large"):
            f.fetch(f"{http_server.base}/big-unknown.pdf")
    assert not any((tmp_path / "cache").glob("*.body")), "nothing partial is cached"


def test_redirect_loop_ends_with_clear_error(http_server, tmp_path):
    with _fetcher(tmp_path, max_redirects=5) as f, pytest.raises(FetchError, match="too many redirects"):
        f.fetch(f"{http_server.base}/loop")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.pdf", "javascript:alert(1)", "http://"])
def test_only_http_urls(tmp_path, url):
    with _fetcher(tmp_path) as f, pytest.raises(FetchError, match="only http|without a host"):
        f.fetch(url)


def test_content_is_sniffed_not_taken_from_headers(http_server, tmp_path):
    with _fetcher(tmp_path) as f:
        assert f.fetch(f"{http_server.base}/mislabeled").kind == "html"
        assert f.fetch(f"{http_server.base}/fake.pdf").kind == "html"
        assert f.fetch(f"{http_server.base}/binary.bin").kind is None


def test_connection_refused_is_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _fetcher(tmp_path, retries=1) as f:
        with pytest.raises(FetchError, match="connection failed .* 2 attempt"):
            f.fetch(f"http://127.0.0.1:{port}/x.pdf")
        slept = []
        f.sleep = slept.append
        with pytest.raises(FetchError, match="host unreachable earlier"):  # fails fast, no retries
            f.fetch(f"http://127.0.0.1:{port}/y.pdf")
        assert slept == []


def test_stale_cache_is_used_when_server_is_gone(http_server, tmp_path):
    url = f"{http_server.base}/paper.pdf"
    with _fetcher(tmp_path) as f:
        f.fetch(url)
    http_server.httpd.shutdown()
    http_server.httpd.server_close()
    with _fetcher(tmp_path, refresh_after_s=0, retries=0) as f:
        assert f.fetch(url).from_cache


def test_user_agent_and_polite_arxiv_delay(tmp_path):
    slept = []
    with _fetcher(tmp_path, arxiv_delay_s=3.0) as f:
        f.sleep = slept.append
        assert "Cove" in f.client.headers["User-Agent"]
        f._polite_pause("https://arxiv.org/pdf/1706.03762")
        f._polite_pause("https://export.arxiv.org/api/query")
        f._polite_pause("https://example.com/x")
    assert len(slept) == 1 and 2.5 < slept[0] <= 3.0


# --- where fetching may go (SSRF) and how long it may take ---------------------------------------------


class _Routes(BaseHTTPRequestHandler):
    """A tiny loopback server: /page (a text page), /to-secret (302 to another server's /secret),
    /drip (one byte every 0.2 s for a minute). `server.hits` counts requests per path."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.hits[self.path] += 1
        if self.path in ("/page", "/secret"):
            body = b"internal page " * 40
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/to-secret":
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.end_headers()
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(300):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:  # the client gave up: stop dripping
                    return
                time.sleep(0.2)
        else:
            self.send_response(404)
            self.end_headers()


@contextlib.contextmanager
def _route_server(host: str = "127.0.0.1", redirect_to: str = ""):
    httpd = ThreadingHTTPServer((host, 0), _Routes)
    httpd.daemon_threads = True
    httpd.hits = Counter()
    httpd.redirect_to = redirect_to
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _default_fetcher(tmp_path) -> Fetcher:
    """The shipped default: private hosts refused."""
    settings = FetchSettings(timeout_s=1.0, connect_timeout_s=1.0, retries=0, arxiv_delay_s=0)
    assert settings.allow_private_hosts is False
    return Fetcher(settings, tmp_path / "cache")


@pytest.mark.parametrize(
    "address,problem",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classes(address, problem):
    assert address_problem(address) == problem


def test_default_refuses_loopback_and_private_hosts_before_connecting(tmp_path):
    with _route_server() as (httpd, base), _default_fetcher(tmp_path) as f:
        port = httpd.server_address[1]
        for url in (
            f"{base}/page",
            f"http://localhost:{port}/page",
            f"http://2130706433:{port}/page",  # 127.0.0.1 written as one number
            f"http://[::1]:{port}/page",
            "http://169.254.169.254/latest/meta-data/",  # refused before any packet is sent
            "http://10.0.0.1/paper.pdf",
        ):
            with pytest.raises(BlockedAddress, match="refused: .* address; set fetch.allow_private_hosts"):
                f.fetch(url)
        with pytest.raises(BlockedAddress):
            f.get_text(f"{base}/page")
    assert sum(httpd.hits.values()) == 0, "nothing reached the server"
    assert not any((tmp_path / "cache").glob("*.body"))


def test_allow_private_hosts_lets_the_fixture_server_through(tmp_path):
    with _route_server() as (httpd, base):
        with _fetcher(tmp_path) as f:
            assert f.fetch(f"{base}/page").path.read_bytes().startswith(b"internal page")
        with _default_fetcher(tmp_path) as f, pytest.raises(BlockedAddress):
            f.fetch(f"{base}/page")  # its fresh cached copy is not handed out by the default either
    assert httpd.hits["/page"] == 1


def test_redirect_into_loopback_is_refused_at_that_hop(tmp_path, monkeypatch):
    """The first hop is a real server on 127.0.0.2 that the policy is told to treat as a public host
    (a scripted policy: no public address can be served from here); it redirects to 127.0.0.1."""
    real_problem = address_problem
    monkeypatch.setattr(fetch_module, "address_problem", lambda a: None if a == "127.0.0.2" else real_problem(a))
    with _route_server() as (inner, inner_base), _route_server("127.0.0.2", f"{inner_base}/secret") as (outer, base):
        with _default_fetcher(tmp_path) as f:
            with pytest.raises(BlockedAddress, match="127.0.0.1 is a loopback address"):
                f.fetch(f"{base}/to-secret")
            assert f.fetch(f"{base}/page").path.exists()  # the "public" host itself is fetched
    assert outer.hits["/to-secret"] == 1 and inner.hits["/secret"] == 0


def test_connection_goes_to_the_address_that_was_checked(tmp_path, monkeypatch):
    """DNS rebinding: the name resolves to an allowed address when checked and to loopback a moment
    later. The connection is made to an address checked at connect time, so it never lands on
    loopback. (Scripted resolver and policy; the server and the connection are real.)"""
    real_problem = address_problem
    monkeypatch.setattr(fetch_module, "address_problem", lambda a: None if a == "127.0.0.2" else real_problem(a))
    with _route_server("127.0.0.2") as (httpd, base), _route_server() as (inner, _):
        port = httpd.server_address[1]
        answers = {"stable.test": ["127.0.0.2"]}
        monkeypatch.setattr(fetch_module, "resolve", lambda host, p: answers[host].copy())
        with _default_fetcher(tmp_path) as f:
            assert f.fetch(f"http://stable.test:{port}/page").path.exists()  # connected to 127.0.0.2
            calls = iter([["127.0.0.2"], ["127.0.0.1"]])  # first the check, then the connect
            monkeypatch.setattr(fetch_module, "resolve", lambda host, p: next(calls))
            with pytest.raises(BlockedAddress, match="loopback"):
                f.fetch(f"http://rebind.test:{port}/page")
    assert httpd.hits["/page"] == 1 and sum(inner.hits.values()) == 0


def test_slow_drip_ends_at_the_download_deadline(tmp_path):
    """One byte every 0.2 s never trips the 1 s read timeout; the 2 s deadline ends it (the server
    would drip for a minute)."""
    with _route_server() as (httpd, base), _fetcher(tmp_path, deadline_s=2.0) as f:
        with pytest.raises(FetchError, match=r"took longer than 2 s \(fetch.deadline_s\)"):
            f.fetch(f"{base}/drip")
    assert httpd.hits["/drip"] == 1, "not retried past the deadline"
    assert not any((tmp_path / "cache").glob("*.body")), "nothing partial is cached"
