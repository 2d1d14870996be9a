"""Serving the local device service: uvicorn on a loopback socket, inside the agent's loop.

:class:`LocalService` binds the socket itself (so a taken port is a
:class:`LocalServiceError`, not uvicorn's ``sys.exit``), builds the app and runs
``uvicorn.Server.serve`` as a task of the agent's own event loop. uvicorn's ``serve`` would
install its own SIGINT/SIGTERM handlers (``Server.capture_signals``, uvicorn 0.54) and raise
the signal again after its shutdown; the agent owns those signals, so :class:`_Server` turns
that off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from kioskfleet.agent.hub import DeviceHub
from kioskfleet.agent.localservice.app import create_app
from kioskfleet.agent.localservice.desk import DeviceDesk
from kioskfleet.agent.localservice.limits import ServiceLimits
from kioskfleet.agent.tracker import TransactionTracker

log = logging.getLogger("kioskfleet.agent.localservice")

DEFAULT_PORT: Final = 8765


class LocalServiceError(Exception):
    """The local service cannot start as configured (a non-loopback address, a taken port)."""


def check_loopback(host: str) -> str:
    """The address to bind, if it is a loopback one (``localhost`` means ``127.0.0.1``).

    Raises:
        LocalServiceError: any other address — the service hands out citizens' ID card data
            and moves money, so it must never be reachable from the network.
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise LocalServiceError(
            f"the local device service binds to loopback only (127.0.0.1 or ::1), not {host!r}"
        )
    return str(address)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers and its ticking, telling when it listens.

    uvicorn's ``main_loop`` wakes up ten times a second to look at ``should_exit`` and to
    refresh the ``Date`` header: on an idle kiosk that was half the agent's CPU (measured,
    docs/benchmarks.md). Here :meth:`exit` wakes it, and no ``Date`` header is sent.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()
        self._exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # the agent owns SIGTERM and SIGINT: it stops the service itself (exit)
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the default headers once (no Date: they do not change)
        await self._exit.wait()

    def exit(self) -> None:
        """Stop serving: ``serve`` then shuts down and returns."""
        self.should_exit = True
        self._exit.set()


class _HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head.

    uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no limit on
    how long a request head may take, and its ``limit_concurrency`` counts open connections:
    without this, a few local processes that connect and never finish a request would lock
    the kiosk application out. The head of the first request must arrive within
    ``head_timeout`` of the connection; a later one within ``head_timeout`` of its first byte.
    """

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first byte of the next request
        super().data_received(data)
        if self._deadline is not None and self.cycle is not self._armed_for:
            self._deadline.cancel()  # its head arrived
            self._deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._armed_for = self.cycle
        self._deadline = self.loop.call_later(self.head_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is self._armed_for and not self.transport.is_closing():
            log.info("local device service: a request head took too long; connection closed")
            self.transport.close()


def _protocol(head_timeout: float) -> type[H11Protocol]:
    return type("HeadDeadlineH11", (_HeadDeadline,), {"head_timeout": head_timeout})


class LocalService:
    """The local device service: the kiosk application's HTTP/JSON door to the peripherals.

    Args:
        hub: the station's devices (shared with the coordinator's ``HubSource``\\ s).
        tracker: the station's transaction state (shared with the update gate).
        token: the bearer token every request needs (CONTRACT §6).
        host: a loopback address (see :func:`check_loopback`).
        port: TCP port; 0 picks a free one (tests).
        allowed_origins: browser origins (``http://localhost:3000``) allowed to call the
            service; any other request carrying an ``Origin`` header is refused.
        limits: request, connection and session bounds.
        in_service: whether the station is in service (the agent's flag, which a technician
            switches with ``cmd/out_of_service``); absent: always.
        catalogue: the active catalogue's JSON (``GET /v1/catalogue``); absent: none.
    """

    def __init__(
        self,
        hub: DeviceHub,
        tracker: TransactionTracker,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        allowed_origins: Iterable[str] = (),
        limits: ServiceLimits | None = None,
        in_service: Callable[[], bool] | None = None,
        catalogue: Callable[[], bytes | None] | None = None,
    ) -> None:
        if not token:
            raise LocalServiceError("the local device service needs a token")
        self.hub = hub
        self.tracker = tracker
        self.host = check_loopback(host)
        self.port = port
        self.allowed_origins = tuple(allowed_origins)
        self.limits = limits or ServiceLimits()
        self.desk = DeviceDesk(
            hub, tracker, limits=self.limits, in_service=in_service, catalogue=catalogue
        )
        self._token = token
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def hosts(self) -> set[str]:
        """``Host`` header values a caller of this service may send."""
        names = {"127.0.0.1", "localhost", "[::1]", self.host, f"[{self.host}]"}
        return {f"{name}{suffix}" for name in names for suffix in ("", f":{self.port}")}

    async def start(self) -> int:
        """Listen; returns the port (useful with ``port=0``).

        Raises:
            LocalServiceError: the port cannot be bound.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as err:
            sock.close()
            raise LocalServiceError(
                f"local device service cannot listen on {self.host}:{self.port}: {err}"
            ) from err
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        app = create_app(
            self.desk,
            token=self._token,
            hosts=self.hosts(),
            allowed_origins=self.allowed_origins,
            limits=self.limits,
        )
        config = uvicorn.Config(
            app,
            http=_protocol(self.limits.request_timeout),
            ws="none",
            lifespan="off",
            interface="asgi3",
            # the agent's logging stays as the agent set it up; no access log (paths only,
            # but one line per request of a busy kiosk is noise)
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            # uvicorn counts the connection asking too: N + 1 lets N be open at once
            limit_concurrency=self.limits.max_connections + 1,
            timeout_keep_alive=self.limits.keepalive_timeout,
            timeout_graceful_shutdown=2,
            backlog=64,
            h11_max_incomplete_event_size=self.limits.max_head_bytes,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="local-service")
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not server.listening.is_set():
            listening.cancel()
            sock.close()
            error = task.exception()
            raise LocalServiceError(f"local device service did not start: {error!r}") from error
        self._server, self._task = server, task
        log.info("local device service on http://%s:%d/v1/", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop serving (requests in flight get 2 s), then stop polling. Open sessions stay
        open in the tracker (the acceptors are disabled), so the update gate still sees them
        until the agent exits."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.exit()
            await task
        await self.desk.stop()
