"""Fetch stage: download a URL politely and safely into an on-disk cache.

- only http(s); timeouts; a bounded number of redirects (loops end with a clear error);
- only public addresses (unless ``allow_private_hosts``): a URL in a document, or a redirect, must
  not reach this machine, the local network or a cloud metadata service (SSRF). Every hop is
  checked (redirects are followed here, not by httpx), and the connection itself goes to an address
  that passed the check, resolved once at connect time, so DNS cannot answer differently later;
- one wall-clock deadline per download (``deadline_s``), retries and redirects included, so a
  server dripping a byte a second cannot hold a download open past it;
- retries with exponential backoff on 429, 5xx and connection errors (``Retry-After`` honoured);
- a polite pause between requests to arXiv hosts, and a descriptive User-Agent;
- a size cap, enforced while streaming (``Content-Length`` is not trusted);
- the cache is keyed by URL and written atomically (temp file + rename), so a killed run never
  leaves a half file that looks complete; a cached copy younger than ``refresh_after_s`` is used
  as is, an older one is re-validated with ``If-None-Match`` / ``If-Modified-Since``;
- what a file *is* is sniffed from its bytes, never taken from the Content-Type header.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpcore
import httpx

from cove.settings import FetchSettings
from ingest.parse import sniff_kind

RETRY_STATUS = {429, 500, 502, 503, 504}
ARXIV_HOSTS = ("arxiv.org", "export.arxiv.org")


class FetchError(Exception):
    """A download that failed for good; the message says why in plain words."""


class BlockedAddress(FetchError):
    """The URL's host is, or resolves to, an address Cove does not fetch from by default."""


@dataclass
class Fetched:
    url: str  # what was asked for
    final_url: str  # after redirects
    path: Path  # the cached body
    kind: str | None  # sniffed: "pdf" | "html" | "text" | None
    from_cache: bool
    content_type: str = ""


class Fetcher:
    """Downloads with retries into `cache_dir`. Use as a context manager or call `close()`."""

    def __init__(self, settings: FetchSettings, cache_dir: Path, sleep=time.sleep) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.sleep = sleep
        self._last_arxiv_request = 0.0
        # Hosts that could not be reached at all after every retry: later requests to them fail at
        # once, so an offline `cove ingest` of 30 papers fails in seconds, not minutes.
        self._unreachable: dict[str, str] = {}
        self._resolved: dict[tuple[str, int], list[str]] = {}  # pre-check answers of this run, per host
        self.client = httpx.Client(
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            follow_redirects=False,  # followed in `_send`, which checks every hop
            headers={"User-Agent": settings.user_agent},
            transport=_guarded_transport(settings.allow_private_hosts),
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    # --- public -----------------------------------------------------------------------------------
    def fetch(self, url: str) -> Fetched:
        check_url(url)
        check_addresses(url, self.settings.allow_private_hosts, self._resolved)  # cached copies of refused URLs too
        deadline = time.monotonic() + self.settings.deadline_s
        body_path, meta_path = self._cache_paths(url)
        meta = _read_json(meta_path) if body_path.exists() else None
        if meta and time.time() - meta.get("fetched_at", 0) < self.settings.refresh_after_s:
            return self._from_cache(url, body_path, meta)
        headers = {}
        if meta:
            if meta.get("etag"):
                headers["If-None-Match"] = meta["etag"]
            if meta.get("last_modified"):
                headers["If-Modified-Since"] = meta["last_modified"]
        try:
            return self._download(url, headers, body_path, meta_path, meta, deadline)
        except BlockedAddress:
            raise  # a cached copy of a URL that is now refused is not served either
        except FetchError:
            if meta:  # offline or the server is down: a stale copy beats nothing
                return self._from_cache(url, body_path, meta)
            raise

    def get_text(self, url: str, max_bytes: int = 2_000_000) -> str:
        """A small uncached GET (e.g. the arXiv API), with the same retries and politeness."""
        check_url(url)
        deadline = time.monotonic() + self.settings.deadline_s
        response = self._request(url, {}, deadline)
        try:
            return self._read_limited(response, max_bytes, deadline).decode("utf-8", errors="replace")
        finally:
            response.close()

    # --- internals --------------------------------------------------------------------------------
    def _cache_paths(self, url: str) -> tuple[Path, Path]:
        return cache_paths(self.cache_dir, url)

    def _from_cache(self, url: str, body_path: Path, meta: dict) -> Fetched:
        with body_path.open("rb") as f:
            kind = sniff_kind(f.read(4096))
        return Fetched(url, meta.get("final_url", url), body_path, kind, True, meta.get("content_type", ""))

    def _download(
        self, url: str, headers: dict, body_path: Path, meta_path: Path, meta: dict | None, deadline: float
    ) -> Fetched:
        response = self._request(url, headers, deadline)
        try:
            if response.status_code == 304 and meta:
                meta["fetched_at"] = time.time()
                _write_atomic(meta_path, json.dumps(meta).encode())
                return self._from_cache(url, body_path, meta)
            data = self._read_limited(response, self.settings.max_bytes, deadline)
        finally:
            response.close()
        if not data:
            raise FetchError("the server returned an empty body")
        new_meta = {
            "url": url,
            "final_url": str(response.url),
            "etag": response.headers.get("etag", ""),
            "last_modified": response.headers.get("last-modified", ""),
            "content_type": response.headers.get("content-type", ""),
            "fetched_at": time.time(),
            "bytes": len(data),
        }
        # Body first, then metadata: metadata exists only beside a complete body.
        _write_atomic(body_path, data)
        _write_atomic(meta_path, json.dumps(new_meta).encode())
        return Fetched(url, new_meta["final_url"], body_path, sniff_kind(data[:4096]), False, new_meta["content_type"])

    def _request(self, url: str, headers: dict, deadline: float) -> httpx.Response:
        """GET with retries; returns an open streaming response with a 2xx or 304 status."""
        host = urlsplit(url).hostname or ""
        if host in self._unreachable:
            raise FetchError(f"{self._unreachable[host]} (host unreachable earlier in this run)")
        attempts = self.settings.retries + 1
        unreachable = True  # stays True only if every attempt failed to connect
        last_error = ""
        for attempt in range(attempts):
            self._check_deadline(deadline)
            self._polite_pause(url)
            try:
                response = self._send(url, headers, deadline)
            except httpx.TimeoutException as err:
                last_error = f"timed out ({type(err).__name__})"
                retry_after = None
                unreachable = unreachable and isinstance(err, httpx.ConnectTimeout)
            except httpx.TransportError as err:
                unreachable = unreachable and isinstance(err, httpx.ConnectError)
                last_error = f"connection failed ({type(err).__name__}: {err})"
                retry_after = None
            else:
                unreachable = False
                if response.status_code < 400 or response.status_code == 304:
                    return response
                response.close()
                reason = f"HTTP {response.status_code} {response.reason_phrase}".strip()
                if response.status_code not in RETRY_STATUS:
                    raise FetchError(reason)
                last_error = reason
                retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt + 1 < attempts:
                delay = min(self.settings.backoff_s * 2**attempt, self.settings.max_backoff_s)
                delay = min(retry_after, self.settings.max_backoff_s) if retry_after is not None else delay
                self.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        message = f"{last_error} after {attempts} attempt(s)"
        if unreachable:
            self._unreachable[host] = message
        raise FetchError(message)

    def _send(self, url: str, headers: dict, deadline: float) -> httpx.Response:
        """One GET, following redirects by hand: each hop's URL is checked (scheme, host, addresses)
        before anything is sent to it. Returns the open streaming response of the last hop."""
        for _ in range(self.settings.max_redirects + 1):
            check_url(url)  # a redirect to file:// or ftp:// is refused too
            check_addresses(url, self.settings.allow_private_hosts, self._resolved)
            request = self.client.build_request("GET", url, headers=headers, timeout=self._timeout(deadline))
            response = self.client.send(request, stream=True)
            if not response.has_redirect_location:  # 3xx with a Location (not 304)
                return response
            response.close()
            try:
                url = str(response.url.join(response.headers["location"]))
            except (httpx.InvalidURL, ValueError) as err:
                raise FetchError(f"bad redirect target {response.headers['location']!r}") from err
        raise FetchError(f"too many redirects (more than {self.settings.max_redirects}; a loop?)")

    def _timeout(self, deadline: float) -> httpx.Timeout:
        """No single wait may run past the download's deadline."""
        left = max(0.001, deadline - time.monotonic())
        return httpx.Timeout(min(self.settings.timeout_s, left), connect=min(self.settings.connect_timeout_s, left))

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise FetchError(f"took longer than {self.settings.deadline_s:g} s (fetch.deadline_s): stopped")

    def _read_limited(self, response: httpx.Response, max_bytes: int, deadline: float) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"too large: {int(declared):,} bytes (limit {max_bytes:,})")
        chunks, total = [], 0
        try:
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError(f"too large: more than {max_bytes:,} bytes")
                chunks.append(chunk)
                self._check_deadline(deadline)
        except httpx.TimeoutException as err:
            raise FetchError("timed out while downloading") from err
        except httpx.TransportError as err:
            raise FetchError(f"connection lost while downloading ({type(err).__name__})") from err
        return b"".join(chunks)

    def _polite_pause(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        if not any(host == h or host.endswith("." + h) for h in ARXIV_HOSTS):
            return
        wait = self._last_arxiv_request + self.settings.arxiv_delay_s - time.monotonic()
        if wait > 0:
            self.sleep(wait)
        self._last_arxiv_request = time.monotonic()


def cache_paths(cache_dir: Path, url: str) -> tuple[Path, Path]:
    """Where the download of `url` lives in the cache: (body, metadata)."""
    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    return cache_dir / f"{key}.body", cache_dir / f"{key}.json"


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"only http(s) URLs can be fetched, not {parts.scheme or 'no scheme'!r}: {url}")
    if not parts.hostname:
        raise FetchError(f"URL without a host: {url}")


# --- which addresses may be fetched from ---------------------------------------------------------------

_ALLOW_HINT = "set fetch.allow_private_hosts (COVE_FETCH__ALLOW_PRIVATE_HOSTS=true) to fetch from your own network"


def address_problem(address: str) -> str | None:
    """Why `address` is not a public internet address ("loopback", "private", ...), or None if it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    for name, hit in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if hit:
            return name
    return None if ip.is_global else "non-public"


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (raises OSError when it does not resolve)."""
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


def refuse_blocked(host: str, addresses: list[str]) -> None:
    """BlockedAddress when any of `host`'s addresses is not public: one private answer among public
    ones is enough for a connection to land on it."""
    for address in addresses:
        problem = address_problem(address)
        if problem:
            what = f"{host} is" if host.strip("[]") == address else f"{host} resolves to {address},"
            raise BlockedAddress(f"refused: {what} a {problem} address; {_ALLOW_HINT}")


def check_addresses(url: str, allow_private: bool, known: dict | None = None) -> None:
    """Refuse a URL whose host resolves to any non-public address. A name that does not resolve is
    left to the connection attempt, which fails (and is retried) the usual way. `known` keeps the
    answers of one run, so a library of cached papers costs one look-up per host, not per paper
    (the connection itself is checked again at connect time)."""
    if allow_private:
        return
    parts = urlsplit(url)
    key = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    known = {} if known is None else known
    if key not in known:
        try:
            known[key] = resolve(*key)
        except (OSError, UnicodeError):
            known[key] = []
    refuse_blocked(key[0], known[key])


class _GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket layer, but every TCP connection is opened to an address checked at that
    moment: the name is resolved once here and the socket goes to that very address, so a DNS answer
    that changes between the check and the connect (rebinding) cannot reach a private host."""

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as err:
            raise httpcore.ConnectError(f"cannot resolve {host}: {err}") from err
        refuse_blocked(host, addresses)
        error: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as err:  # try the next address, as socket.create_connection would
                error = err
        raise error or httpcore.ConnectError(f"no address for {host}")


def _guarded_transport(allow_private: bool) -> httpx.HTTPTransport:
    """httpx's transport with `_GuardedBackend` as its socket layer (unless private hosts are allowed).

    httpx has no public hook for the network backend; the connection pool keeps it in one attribute,
    checked here so an httpcore change fails loudly (tests/test_fetch.py covers the guard) instead of
    silently dropping the check."""
    transport = httpx.HTTPTransport()
    if not allow_private:
        pool = transport._pool
        if not isinstance(getattr(pool, "_network_backend", None), httpcore.SyncBackend):
            raise RuntimeError("httpcore changed: cannot install the address guard on its connection pool")
        pool._network_backend = _GuardedBackend()
    return transport


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
