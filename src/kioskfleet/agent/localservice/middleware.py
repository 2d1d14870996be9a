"""The local service's doors, as plain ASGI middleware (outermost first):

- :class:`ShieldMiddleware`: every answer is ``Cache-Control: no-store`` (it may hold a
  citizen's data) and echoes an allowed browser origin; an exception nobody handled becomes a
  500 ``internal`` here, so neither Starlette's error middleware nor uvicorn ever logs a
  traceback that could hold card data.
- :class:`GuardMiddleware`: the head's size, ``Host`` (against DNS rebinding), ``Origin``
  (against cross-site requests), CORS preflights of allowed origins, and the bearer token.
- :class:`BodyLimitMiddleware`: the body is read whole, within a time limit, and refused
  past its size limit (a chunked body is counted as it arrives) before the app sees it.

Each refusal is a JSON ``{"error", "code"}`` like the app's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kioskfleet.agent.localservice")

JSON_MEDIA_TYPE = "application/json; charset=utf-8"
#: paths whose requests or answers may hold personal data: no exception text is logged
PRIVATE_PREFIXES: tuple[str, ...] = ("/v1/id-card",)


async def send_json(
    send: Send, status: int, body: dict[str, object], headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Answer with a JSON body."""
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    raw = [
        (b"content-type", JSON_MEDIA_TYPE.encode()),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


async def send_error(
    send: Send, status: int, message: str, code: str, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """Answer with ``{"error": message, "code": code}``."""
    await send_json(send, status, {"error": message, "code": code}, headers)


class ShieldMiddleware:
    """Common answer headers, and the last line against unhandled exceptions.

    Args:
        allowed_origins: browser origins whose requests get ``Access-Control-Allow-Origin``
            (others never get this far: :class:`GuardMiddleware` refuses them).
    """

    def __init__(self, app: ASGIApp, *, allowed_origins: frozenset[str]) -> None:
        self.app = app
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = Headers(scope=scope).get("origin")
        echo = origin if origin in self.allowed_origins else None
        answered: list[int] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
                headers = MutableHeaders(scope=message)
                headers["cache-control"] = "no-store"
                headers["x-content-type-options"] = "nosniff"
                if echo is not None:
                    headers["access-control-allow-origin"] = echo
                    headers.add_vary_header("Origin")
            await send(message)

        method, path = scope["method"], scope["path"]
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as err:  # why: a bug answers 500, the service lives on
            # no message, no traceback for the ID path: either could hold card data
            private = path.startswith(PRIVATE_PREFIXES)
            log.error(
                "local device service: %s %s failed: %s",
                method,
                path,
                type(err).__name__,
                exc_info=not private,
            )
            if not answered:
                await send_error(send_with_headers, 500, "internal error", "internal")
        log.debug("%s %s -> %s", method, path, answered[0] if answered else "no answer")


class GuardMiddleware:
    """Who may call: a loopback ``Host``, an allowed ``Origin`` (or none), the bearer token.

    Args:
        hosts: accepted ``Host`` header values (lower case, with and without the port).
        allowed_origins: browser origins allowed to call; a request with any other
            ``Origin`` is refused, so a web page the kiosk browser shows cannot print, eject or
            read cards.
        token: the bearer token every request needs (CONTRACT §6), compared in constant time.
        open_paths: paths served without the token (the API description).
        routes: the app's routes, to answer CORS preflights with their methods.
        max_head_bytes: request line and headers, bytes. uvicorn's h11 only bounds what it
            buffers of an unfinished head; a head that arrives whole is measured here.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: frozenset[str],
        allowed_origins: frozenset[str],
        token: str,
        open_paths: frozenset[str],
        routes: Sequence[BaseRoute],
        max_head_bytes: int,
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.allowed_origins = allowed_origins
        self._token = token.encode()
        self.open_paths = open_paths
        self.routes = routes
        self.max_head_bytes = max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        if target > self.max_head_bytes:
            await send_error(send, 414, "request line too long", "line_too_long")
            return
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.max_head_bytes:
            await send_error(send, 431, "too many or too large headers", "headers_too_large")
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is None:  # HTTP/1.0 (HTTP/1.1 without Host never reaches the app)
            await send_error(send, 400, "a Host header is required", "bad_request")
            return
        if host.lower() not in self.hosts:
            await send_error(send, 403, f"requests for host {host!r} are refused", "forbidden_host")
            return
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins:
            await send_error(send, 403, "cross-origin requests are refused", "forbidden_origin")
            return
        if scope["method"] == "OPTIONS" and origin is not None:
            methods = self._methods_at(scope)
            if methods:  # a preflight carries no token: the browser asks before it sends one
                preflight = [
                    ("access-control-allow-methods", ", ".join(methods)),
                    ("access-control-allow-headers", "Authorization, Content-Type"),
                    ("access-control-max-age", "600"),
                ]
                await send_json(send, 200, {}, preflight)
                return
        if scope["path"] not in self.open_paths and not self._authorized(headers):
            await send_error(
                send,
                401,
                "send 'Authorization: Bearer <token>' with the local service token",
                "unauthorized",
                [("www-authenticate", "Bearer")],
            )
            return
        await self.app(scope, receive, send)

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # bytes: compare_digest refuses non-ASCII str, and a header may hold any latin-1
        return secrets.compare_digest(credentials.strip().encode("latin-1"), self._token)

    def _methods_at(self, scope: Scope) -> list[str]:
        methods: set[str] = set()
        for route in self.routes:
            if isinstance(route, Route) and route.methods:
                match, _ = route.matches(scope)
                if match is not Match.NONE:
                    methods |= route.methods - {"HEAD"}
        return sorted(methods)


class BodyLimitMiddleware:
    """Reads the request body whole before the app runs; refuses it when too large or slow.

    Args:
        max_body: bytes; more is a 413 ``body_too_large``.
        timeout: seconds to receive the body; slower is a 408 ``timeout``.
    """

    #: an oversized body up to this many times ``max_body`` is read and dropped before the
    #: 413, so closing the connection does not reset it before the caller read the answer
    DRAIN_FACTOR = 16

    def __init__(self, app: ASGIApp, *, max_body: int, timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        body = bytearray()
        too_large = length is not None and length > self.max_body
        try:
            async with asyncio.timeout(self.timeout):
                if too_large:
                    assert length is not None
                    if length <= self.max_body * self.DRAIN_FACTOR:
                        await self._drain(receive)
                else:
                    more = True
                    while more:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            return
                        body += message.get("body", b"")
                        more = message.get("more_body", False)
                        if len(body) > self.max_body:
                            too_large = True
                            if more:
                                await self._drain(receive, len(body))
                            break
        except TimeoutError:
            await send_error(send, 408, "request body not received in time", "timeout")
            return
        if too_large:
            size = f"{length} bytes" if length is not None else f"over {self.max_body} bytes"
            refusal = f"body of {size}; at most {self.max_body}"
            await send_error(send, 413, refusal, "body_too_large")
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive, seen: int = 0) -> None:
        limit = self.max_body * self.DRAIN_FACTOR
        more = True
        while more and seen <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)
