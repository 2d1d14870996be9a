"""``kioskfleet demo``: embedded broker, SQLite, controller and a simulated Wuxi fleet, in one
process, with nothing installed but the package."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kioskfleet.controller.people import Role

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedBroker:
    """amqtt (pure Python, MQTT 3.1.1) on its own thread and event loop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="amqtt", daemon=True)
        self._broker: Any = None

    def start(self) -> None:
        """Start listening on 127.0.0.1:``port``."""
        self._thread.start()
        self._ready.wait(20)
        if self._error is not None:
            raise RuntimeError(f"embedded broker failed: {self._error}") from self._error
        if not self._ready.is_set():
            raise RuntimeError("embedded broker did not start in 20 s")

    def _run(self) -> None:
        from amqtt.broker import Broker

        logging.getLogger("amqtt").setLevel(logging.ERROR)
        asyncio.set_event_loop(self._loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        try:
            self._broker = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
        except BaseException as err:  # noqa: BLE001 - reported to start()
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        """Shut the broker down."""
        if self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class ServedController:
    """The controller and its HTTP API on a background thread."""

    def __init__(self, settings: Any) -> None:
        import uvicorn

        from kioskfleet.controller.app import create_app
        from kioskfleet.controller.service import Controller

        self.controller = Controller(settings)
        self.controller.start()
        host, port = settings.host_port
        app = create_app(settings, self.controller)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.controller.stop()
                raise RuntimeError(f"the HTTP server could not listen on {host}:{port}")
            time.sleep(0.05)

    def summary(self) -> dict[str, Any]:
        """The fleet summary, as the API serves it."""
        from kioskfleet.controller import crud

        with self.controller.engine.connect() as conn:
            return crud.fleet_summary(conn=conn).model_dump(mode="json")

    def stop(self) -> None:
        """Stop serving, then stop the controller."""
        self.controller.live.close()  # open event streams end, so the server can stop
        self.server.should_exit = True
        self._thread.join(10)
        self.controller.stop()


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kioskfleet-demo-") as tmp:
        yield Path(tmp)


def run_demo(
    *,
    stations: int,
    duration: float | None,
    port: int,
    broker_url: str | None,
    db_url: str | None,
    update_failure_rate: float,
    fault_rate: float = 0.5,
    telemetry_interval: float = 5.0,
) -> dict[str, Any] | None:
    """Run the demo; with ``duration`` return the final summary plus ``sent``.

    The controller's other settings come from ``KIOSKFLEET_*`` variables, as for
    ``kioskfleet controller``; the database, broker and address are the demo's own.

    Raises:
        SettingsError: a flag or a ``KIOSKFLEET_*`` variable is wrong (before anything starts).
    """
    from kioskfleet.controller.config import load_settings

    # checked before anything starts; until the broker and the work folder exist, stand-ins
    # that are valid take their place (the environment's database and broker never apply)
    checked = load_settings(
        overrides={
            "db_url": db_url or "sqlite://",
            "mqtt_url": broker_url or "mqtt://127.0.0.1:1883",
            "listen": f"127.0.0.1:{port}",
            "client_id": f"kioskfleet-demo-{port}",
        },
        overrides_from={"db_url": "--db", "mqtt_url": "--broker", "listen": "--port"},
    )

    from kioskfleet.fleetsim.fleet import FleetSpec, run_fleet, wuxi_fleet
    from kioskfleet.protocol.broker_url import parse_broker_url

    with _workdir() as work:
        broker: EmbeddedBroker | None = None
        if broker_url is None:
            broker = EmbeddedBroker(free_port())
            broker.start()
            # amqtt speaks only 3.1.1: say so rather than have everyone try 5 first
            broker_url = f"mqtt://127.0.0.1:{broker.port}?version=3.1.1"
        from kioskfleet.controller.tufrepo.service import create_demo_repository

        settings = checked.model_copy(
            update={
                "db_url": db_url or f"sqlite:///{work / 'kioskfleet.db'}",
                "mqtt_url": broker_url,
                # a signed update repository of its own, served under /tuf/
                "tuf": checked.tuf or create_demo_repository(work / "tuf"),
                # the wall screen opens without a login (CONTRACT §6); writes need a person
                "anonymous_role": "operator",
            }
        )
        served = ServedController(settings)
        log.warning("dashboard at http://127.0.0.1:%d/  (broker %s)", port, broker_url)
        create_demo_people(served.controller)
        root = publish_demo_releases(served.controller)
        spec = FleetSpec(
            stations=wuxi_fleet(stations, telemetry_interval=telemetry_interval),
            broker=parse_broker_url(broker_url),
            duration=duration,
            fault_rate=fault_rate,
            # the fleet comes up healthy; printers run out of paper only after a minute
            quiet_start=60.0,
            update_failure_rate=update_failure_rate,
            state_dir=work / "stations",
            keepalive=15,
            ramp_seconds=min(5.0, stations / 20),
            # the stations install what a release manager rolls out, from the demo's repository
            update_url=f"http://127.0.0.1:{port}/tuf/" if root is not None else None,
            update_root=root,
        )
        final: dict[str, Any] = {}

        async def before_shutdown(fleet: Any) -> None:
            # let the last confirmations and status changes land before reading the summary
            await asyncio.sleep(settings.ack_interval + 0.5)
            final.update(served.summary())

        try:
            result = asyncio.run(run_fleet(spec, before_shutdown=before_shutdown))
        except KeyboardInterrupt:
            result = None
        finally:
            served.stop()
            if broker is not None:
                broker.stop()
        if duration is None or result is None:
            return None
        final["sent"] = result.sent
        final["unconfirmed"] = result.unconfirmed
        return final


#: the demo's people, one per role (CONTRACT §6): name → (role, districts)
DEMO_PEOPLE: dict[str, tuple[Role, list[str]]] = {
    "admin": ("admin", []),
    "operator": ("operator", []),
    "release-manager": ("release_manager", []),
    "tech-binhu": ("technician", ["Binhu"]),
    "tech-xinwu": ("technician", ["Xinwu"]),
}


def create_demo_people(controller: Any) -> dict[str, str]:
    """Make the demo's accounts with random passwords and say them on stderr (the demo's
    database is thrown away at its end); their passwords by name."""
    import secrets

    from kioskfleet.controller import people

    passwords = {name: secrets.token_urlsafe(12) for name in DEMO_PEOPLE}
    now = time.time()
    with controller.engine.begin() as conn:
        for name, (role, districts) in DEMO_PEOPLE.items():
            people.create_account(
                conn=conn,
                name=name,
                role=role,
                districts=districts,
                password=passwords[name],
                actor="controller",
                now=now,
            )
    lines = [
        f"  {name:<16} {role:<16} {','.join(districts) or '-':<8} {passwords[name]}"
        for name, (role, districts) in DEMO_PEOPLE.items()
    ]
    log.warning(
        "demo accounts (name, role, districts, password); anyone may read the dashboard:\n%s",
        "\n".join(lines),
    )
    if controller.settings.bootstrap_token is not None:
        log.warning("KIOSKFLEET_BOOTSTRAP_TOKEN is a valid admin API token here")
    return passwords


#: the demo's releases: a software release a step past the running agent, and a catalogue
DEMO_CATALOGUE_VERSION = "2026.12"


def demo_software_version() -> str:
    """The version of the demo's software release."""
    from kioskfleet import __version__

    return f"{__version__}-demo.1"


def publish_demo_releases(controller: Any) -> bytes | None:
    """Publish a tiny software release and the generated catalogue (317 services, 65 at bank
    agent branches) into the demo's repository, signed with its online release key, so a
    release manager can roll them out at once; the root the stations trust (None without a
    repository)."""
    from kioskfleet.controller.commands import record_audit
    from kioskfleet.controller.tufrepo.releases import publish
    from kioskfleet.fleetsim.catalogue import demo_catalogue
    from kioskfleet.updates.catalogue import canonical
    from kioskfleet.updates.software import build_software

    if controller.tuf is None:
        return None
    repository = controller.tuf.repository
    version = demo_software_version()
    files = {
        "bin/kioskfleet-agent": f"#!/bin/sh\necho kioskfleet agent {version}\n".encode(),
        "README": f"kioskfleet {version}: the demo's software release\n".encode(),
    }
    created = [
        publish(
            repository=repository,
            kind="software",
            version=version,
            data=build_software(version, files),
            metadata=None,
            online_allowed=True,
        ),
        publish(
            repository=repository,
            kind="catalogue",
            version=DEMO_CATALOGUE_VERSION,
            data=canonical(
                # effective at once: a rollout started now swaps it on arrival
                demo_catalogue(DEMO_CATALOGUE_VERSION, effective_from=datetime.now(UTC))
            ),
            metadata=None,
            online_allowed=True,
        ),
    ]
    with controller.engine.begin() as conn:
        for release in created:
            record_audit(
                conn=conn,
                at=time.time(),
                actor="demo",
                source=None,
                action="release.publish",
                target=release.id,
                details=release.model_dump(),
                outcome="published",
            )
    log.warning("demo releases published: %s", ", ".join(r.id for r in created))
    root: bytes = repository.root_bytes(1)
    return root


def print_json(obj: dict[str, Any]) -> None:
    """One JSON line on stdout."""
    print(json.dumps(obj, separators=(",", ":")), flush=True)  # noqa: T201
