"""What stands between the network and the endpoints: per-connection limits in the HTTP protocol (a deadline on
each request's headers, a cap on open connections, JSON for malformed requests), and an ASGI middleware for the
Host check (DNS rebinding), cross-origin form posts and the API key. docs/security.md says why each exists."""
from __future__ import annotations

import hmac
import ipaddress
import json
from http import HTTPStatus
from typing import Iterable, Optional
from urllib.parse import urlsplit

from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import MAX_HEADER_BYTES
from .protocol import error_object

WILDCARDS = ("", "0.0.0.0", "::")


def raw_error(status: int, message: str, headers: Iterable = ()) -> bytes:
    """A whole HTTP/1.1 error response that closes its connection, written past h11 (whose state may not allow a
    response yet: the request's headers may be incomplete)."""
    body = json.dumps(error_object(status, message)).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def guarded_protocol(limits, metrics=None):
    """uvicorn's h11 protocol with `limits` (a ServeLimits): header_timeout_s from connection (or the previous
    reply) to the end of the next request's headers, max_connections open at once (503 beyond), JSON 400s.
    metrics: counts each of those refusals by status (Metrics.request)."""

    class GuardedH11Protocol(H11Protocol):
        _timer = None
        _armed_cycle = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"too many open connections (--max-connections "
                             f"{limits.max_connections}); retry later", [("retry-after", "1")])
                return
            self._arm()

        def _arm(self):
            self._disarm()
            self._armed_cycle, self._started = self.cycle, False
            self._timer = self.loop.call_later(limits.header_timeout_s, self._headers_late)

        def _disarm(self):
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def data_received(self, data: bytes) -> None:
            self._started = True
            super().data_received(data)

        def _headers_late(self):
            self._timer = None
            if self.cycle is not self._armed_cycle or self.transport.is_closing():
                return
            if not self._started:  # an idle connection (nothing of a next request): closed without a word
                self.transport.close()
            else:
                self._refuse(HTTPStatus.REQUEST_TIMEOUT, f"the request's headers did not arrive within "
                             f"{limits.header_timeout_s:g} s (--header-timeout)")

        def _refuse(self, status, message, headers=()):
            if metrics is not None:
                metrics.request(status)
            self.transport.write(raw_error(status, message, headers))
            self.transport.close()

        def handle_events(self):
            super().handle_events()
            if self.cycle is not self._armed_cycle and self.cycle is not None:
                self._armed_cycle = self.cycle
                self._disarm()  # this request's headers are in; its body has the endpoint's own deadline
                # A reply the client stops reading must not hold the connection forever: the endpoint aborts it.
                self.cycle.scope["bllama.abort"] = self.transport.abort

        def on_response_complete(self):
            self._arm()  # the next request on this connection: the same deadline for its headers
            super().on_response_complete()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str):
            self._disarm()
            if len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES:  # h11's "receive buffer too long", unnamed
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"the request line and headers are over "
                             f"{MAX_HEADER_BYTES} bytes; at most {MAX_HEADER_BYTES} are accepted")
                return
            self._refuse(HTTPStatus.BAD_REQUEST, "malformed HTTP request (its request line, a header or its "
                         "Content-Length / Transfer-Encoding could not be read)")

    return GuardedH11Protocol


def _host_name(host: str) -> str:
    """'name:port' / '[v6]:port' -> the name, lower-case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Guard:
    """ASGI middleware: refuses a request whose Host is not this server's (DNS rebinding: a web page's own name
    resolving to 127.0.0.1), a cross-origin POST that is not JSON (a browser sends those without asking), and,
    with an API key, any request but /health (and CORS preflights) without `Authorization: Bearer <key>`.
    metrics: counts each refusal by status (Metrics.request), as the app counts its own answers."""

    def __init__(self, app, bound_host: str, api_key: Optional[str] = None, allowed_hosts: Iterable[str] = (),
                 cors_origins: Iterable[str] = (), metrics=None):
        self.app, self.api_key, self.metrics = app, api_key, metrics
        self.wildcard = bound_host in WILDCARDS
        self.hosts = {"localhost", "127.0.0.1", "::1", _host_name(bound_host)} | {_host_name(h) for h in allowed_hosts}
        self.cors_origins = set(cors_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message, extra = refusal
        if self.metrics is not None:
            self.metrics.request(status)
        body = json.dumps(error_object(status, message)).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), *((k.encode(), v.encode()) for k, v in extra)]})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope, headers) -> Optional[tuple]:
        size = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + \
            sum(len(k) + len(v) + 4 for k, v in scope["headers"])  # ": " and CRLF
        if size > MAX_HEADER_BYTES:
            return (HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"the request line and headers are {size} bytes; at "
                    f"most {MAX_HEADER_BYTES} are accepted", ())
        host = headers.get("host")
        if host is not None:
            name = _host_name(host)
            if name not in self.hosts and not (self.wildcard and _is_ip(name)):
                return (HTTPStatus.FORBIDDEN, f"the Host {host!r} is not this server's name; add it with "
                        f"--allow-host if it is (a page of another site can reach this server by resolving its own "
                        f"name to this address)", ())
        origin = headers.get("origin")
        if scope["method"] == "POST" and origin and origin not in self.cors_origins \
                and urlsplit(origin).netloc.lower() != (host or "").lower():
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":  # a browser's "simple" cross-origin request: sent without a preflight
                return (HTTPStatus.FORBIDDEN, f"a cross-origin POST from {origin!r} must be application/json "
                        f"(allow the origin with --cors-origin)", ())
        if self.api_key and scope["path"] != "/health" and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return (HTTPStatus.UNAUTHORIZED, "a valid API key is required: send 'Authorization: Bearer <key>'",
                        [("www-authenticate", "Bearer")])
        return None
