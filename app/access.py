"""Who may talk to the chat app: Host and Origin checks, and the access token.

An ASGI middleware in front of everything `cove chat` serves (the Streamlit page, its websocket, the
`/cove/doc/` route). It exists because a local web app is reachable by more than its user:

- **DNS rebinding**: a web page on attacker.example can make its own name resolve to 127.0.0.1 and
  then talk to the app as "same origin". Its requests carry `Host: attacker.example`, so every HTTP
  request and websocket upgrade whose Host is not one of the app's names is refused, and a
  websocket whose `Origin` is foreign is refused too.
- **Other hosts on the network**, when the app listens beyond loopback (`app.host`): then a token
  is required on every request (`app.token`; `cove chat` generates one and prints the URL with it).
  It is given once as `?token=...` (answered with a cookie and a redirect that drops it from the
  address bar), then sent as that cookie, or by scripts as the `X-Cove-Token` header. A token set
  for a loopback app is required too (other users of the same machine reach 127.0.0.1 as well).
  A connection that arrives on a non-loopback address while no token is configured is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from cove.settings import AppSettings

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
TOKEN_HEADER = "x-cove-token"
TOKEN_PARAM = "token"


def listens_on_loopback(host: str) -> bool:
    """True only for the usual loopback names. Anything else (0.0.0.0, a LAN address, even 127.0.0.2
    which some setups forward) counts as "beyond loopback" and needs a token: a conservative default."""
    return host.strip("[]").lower() in ("localhost", "127.0.0.1", "::1")


def allowed_hosts(app: AppSettings) -> set[str]:
    """The Host header values the app answers to: its loopback names with its port, the address it
    listens on (when that is one address), and `app.allowed_hosts` (with or without a port)."""
    port = app.port
    bind = app.host.strip("[]").lower()
    names = list(LOOPBACK_NAMES)
    if bind not in ("0.0.0.0", "::", ""):
        names.append(f"[{bind}]" if ":" in bind else bind)
    hosts = {f"{name}:{port}" for name in names}
    if port == 80:
        hosts.update(names)
    for entry in app.allowed_hosts:
        entry = entry.strip().lower()
        if entry:
            hosts.add(entry)
            if not _has_port(entry):
                hosts.add(f"{entry}:{port}")
    return hosts


def _has_port(host: str) -> bool:
    return host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else host.count(":") == 1


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _local_is_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    if not server:
        return True  # a Unix socket or an in-process test client: not reachable from the network
    try:
        return ipaddress.ip_address(str(server[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class AccessGuard:
    """Pure ASGI middleware: refuses foreign Host/Origin, and requests without the token when one is due."""

    def __init__(self, app, settings: AppSettings) -> None:
        self.app = app
        self.token = settings.token
        self.hosts = allowed_hosts(settings)
        self.cookie = f"cove_token_{settings.port}"  # cookies ignore ports: one per app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        problem = self._problem(scope, headers)
        if problem is None and scope["type"] == "http" and self._matches(_query_token(scope)):
            return await self._keep_token(scope, send)
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; closing before accepting answers the upgrade with 403
            return await send({"type": "websocket.close", "code": 1008})
        await _plain(send, 403, problem)

    def _problem(self, scope: Scope, headers: dict[str, str]) -> str | None:
        """Why this request is refused, or None."""
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return (
                f"This Cove app does not answer to the host name {host[:100]!r}. "
                "Open it by the address `cove chat` printed, or add the name to COVE_APP__ALLOWED_HOSTS."
            )
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() not in self.hosts:
            return "Requests from other web sites are refused."
        if not self.token:
            if _local_is_loopback(scope):
                return None
            return "This Cove app listens beyond loopback without an access token: start it with `cove chat`."
        if self._presented(scope, headers) != self.token:
            return "This Cove app needs its access token: open the URL `cove chat` printed (it ends in ?token=...)."
        return None

    def _presented(self, scope: Scope, headers: dict[str, str]) -> str:
        """The token, if this request carries it (query, header, bearer or cookie)."""
        return self.token if any(self._matches(c) for c in self._candidates(scope, headers)) else ""

    def _matches(self, candidate: str) -> bool:
        return bool(self.token and candidate) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def _candidates(self, scope: Scope, headers: dict[str, str]) -> Iterable[str]:
        yield _query_token(scope)
        yield headers.get(TOKEN_HEADER, "")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            yield auth[7:].strip()
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header carries no token
            return
        if self.cookie in cookies:
            yield cookies[self.cookie].value

    async def _keep_token(self, scope: Scope, send: Send) -> None:
        """`?token=` was right: set the cookie and send the browser to the same address without it, so
        the token does not stay in the address bar, the history or a Referer."""
        query = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k != TOKEN_PARAM])
        path = scope.get("raw_path") or scope["path"].encode()
        location = path.decode("latin-1") + (f"?{query}" if query else "")
        cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode()),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _query_token(scope: Scope) -> str:
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
        if key == TOKEN_PARAM:
            return value
    return ""


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
