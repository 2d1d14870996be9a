"""Shared fixtures: a private Mosquitto from deploy/, databases, a served controller, fleets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
PG_ADMIN_URL = os.environ.get("KIOSKFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

T = TypeVar("T")

#: the bootstrap admin token of every controller under test (CONTRACT §6): tests that are
#: not about who may do what send it, so that each request is an admin's
TEST_TOKEN = "kioskfleet-test-bootstrap-0123456789"
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def person_token(engine: Any, name: str, role: str = "admin", districts: Sequence[str] = ()) -> str:
    """A new API token of account ``name`` in the controller database ``engine``, the account
    made (with ``role`` and ``districts``) on first use."""
    from kioskfleet.controller import people

    with engine.begin() as conn:
        if people.get_account(conn=conn, name=name) is None:
            people.create_account(
                conn=conn,
                name=name,
                role=role,  # type: ignore[arg-type]
                districts=districts,
                password=None,
                actor="test",
                now=time.time(),
            )
        issued = people.issue_token(
            conn=conn, account=name, ttl_s=86400, actor="test", now=time.time()
        )
    return issued.token


def person_auth(app: Any, name: str) -> dict[str, str]:
    """``Authorization`` headers with an API token of admin ``name`` of ``app``'s
    controller (:func:`person_token`; one token per app and name)."""
    tokens: dict[str, str] = app.state.__dict__.setdefault("test_tokens", {})
    if name not in tokens:
        tokens[name] = person_token(app.state.controller.engine, name)
    return {"Authorization": f"Bearer {tokens[name]}"}


def acting(app: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A request's keyword arguments, sent as the person it names.

    Tests written before identities name who acts in the request (``by`` or ``author`` in the
    body, ``by`` in the query); the controller ignores that now and takes the person from the
    credentials, so such a request carries that person's own token (an admin account made on
    first use). Without a name, or with explicit headers, it goes as the bootstrap admin.
    """
    from kioskfleet.controller import people

    if "headers" in kwargs:
        return kwargs
    named: object = None
    for source in (kwargs.get("params"), kwargs.get("json")):
        if isinstance(source, dict):
            named = source.get("by") or source.get("author") or named
    if (
        isinstance(named, str)
        and people.NAME_PATTERN.fullmatch(named)
        and named.lower() not in people.RESERVED_NAMES
    ):
        return {**kwargs, "headers": person_auth(app, named)}
    return kwargs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def wait_until(check: Callable[[], bool], timeout: float = 20.0, every: float = 0.1) -> None:
    """Poll ``check`` until it holds (condition polling, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    return found


@dataclass(frozen=True)
class TlsListener:
    """An extra listener for a private Mosquitto: TLS with this CA, certificate and key."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = True

    def conf(self, port: int) -> str:
        return (
            f"\nlistener {port} 127.0.0.1\n"
            f"cafile {self.ca}\ncertfile {self.cert}\nkeyfile {self.key}\n"
            f"require_certificate {'true' if self.require_certificate else 'false'}\n"
        )


class Mosquitto:
    """A private Mosquitto run from the product's own deploy/mosquitto/mosquitto.conf, with
    optional extra TLS listeners (``tls_ports`` in the same order)."""

    def __init__(
        self, workdir: Path, port: int | None = None, tls: Sequence[TlsListener] = ()
    ) -> None:
        self.port = port or free_port()
        self.tls_ports = [free_port() for _ in tls]
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = DEPLOY_CONF.read_text()
        conf = conf.replace("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1")
        conf = conf.replace(
            "persistence_location /var/lib/mosquitto/", f"persistence_location {workdir / 'data'}/"
        )
        assert f"listener {self.port}" in conf and str(workdir) in conf
        if tls:
            conf += "".join(
                listener.conf(port) for listener, port in zip(tls, self.tls_ports, strict=True)
            )
        # Mosquitto started as root drops to the user `mosquitto`, who may neither write into
        # pytest's private (0700) folders nor read the certificates there: it then saves
        # nothing ("Error: Permission denied" in its log), and a restart loses retained
        # messages and the controller's session. Stay the user who runs the tests.
        conf += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log
        )
        for port in (self.port, *self.tls_ports):
            wait_port(port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
            # a graceful stop saves retained messages and persistent sessions (the chaos and
            # liveness tests count on it); a broker that cannot write must not pass unseen
            saved = self.workdir / "data" / "mosquitto.db"
            assert saved.exists(), f"Mosquitto saved nothing in {saved.parent}"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A fresh broker per test: no retained state leaks from one test into the next."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as err:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {err}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"kf_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    return str(request.getfixturevalue("pg_url"))


class LoopThread:
    """An asyncio loop on a thread, for running a simulated fleet beside blocking test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()
