"""The fetch stage against a real HTTP server on 127.0.0.1."""

import pytest

from cove.settings import FetchSettings
from ingest.fetch import Fetcher, FetchError


def _fetcher(tmp_path, **overrides) -> Fetcher:
    settings = FetchSettings(
        **{"timeout_s": 1.0, "connect_timeout_s": 1.0, "retries": 2, "backoff_s": 0.01, "arxiv_delay_s": 0, **overrides}
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
