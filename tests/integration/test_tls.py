"""MQTT over TLS with client certificates, against a private Mosquitto started from deploy/ with
a TLS listener (`require_certificate true`) and a CA the test makes: the agent's link and the
controller's ingest connect, publish and receive; a client without a certificate, with one from
another CA, or that cannot trust the broker fails at once and says why."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kioskfleet.agent.config import load_agent_config
from kioskfleet.agent.mqtt import MqttLink
from kioskfleet.agent.service import run_agent
from kioskfleet.controller import crud
from kioskfleet.controller.config import Settings, load_settings
from kioskfleet.controller.service import Controller
from kioskfleet.mqttclient import TlsFiles
from kioskfleet.protocol.broker_url import parse_broker_url
from kioskfleet.protocol.messages import StateMessage, TelemetryMessage, encode
from kioskfleet.protocol.topics import CONTROLLER_STATE_TOPIC, ack_topic, station_topic
from tests.conftest import LoopThread, Mosquitto, TlsListener, wait_until
from tests.tls_certs import TestCA

# one CA and broker for the module (the pki fixture), set up on one worker only
pytestmark = [pytest.mark.mosquitto, pytest.mark.xdist_group("tls")]


@dataclass
class Pki:
    ca: TestCA
    other: TestCA  # a CA the broker does not trust
    url: str  # the TLS listener; its certificate names 127.0.0.1 and localhost
    wrong_host_url: str  # a listener whose certificate names another host

    def station(self, name: str, ca: TestCA | None = None) -> TlsFiles:
        issued = (ca or self.ca).client(name)
        return TlsFiles(ca=self.ca.cert, cert=issued.cert, key=issued.key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    folder = tmp_path_factory.mktemp("tls")
    ca, other = TestCA(folder / "ca"), TestCA(folder / "other", "another CA")
    server = ca.server("broker", ["127.0.0.1", "localhost"])
    elsewhere = ca.server("elsewhere", ["broker.example"])
    broker = Mosquitto(
        folder / "mosquitto",
        tls=[
            TlsListener(ca.cert, server.cert, server.key),
            TlsListener(ca.cert, elsewhere.cert, elsewhere.key),
        ],
    ).start()
    good, wrong_host = broker.tls_ports
    yield Pki(ca, other, f"mqtts://127.0.0.1:{good}", f"mqtts://127.0.0.1:{wrong_host}")
    broker.stop()


class Station:
    """An MqttLink on the test's loop, recording what it receives."""

    def __init__(
        self,
        lt: LoopThread,
        url: str,
        tls: TlsFiles | None,
        station: str | None = None,
        also: tuple[str, ...] = (),
    ) -> None:
        self.lt = lt
        self.station = station or f"wx-tls-{uuid.uuid4().hex[:8]}"
        self.received: list[tuple[str, bytes]] = []
        self.acked: set[int] = set()
        self.link = lt.call(
            lambda: MqttLink(
                client_id=self.station,
                url=parse_broker_url(url),
                subscriptions=[
                    f"fleet/v1/{self.station}/cmd/#",
                    ack_topic(self.station),
                    CONTROLLER_STATE_TOPIC,
                    *also,
                ],
                will=lambda: (station_topic(self.station, "state"), b""),
                on_connect=lambda: None,
                on_message=lambda topic, payload: self.received.append((topic, payload)),
                on_published=self.acked.add,
                keepalive=30,
                rng=random.Random(7),
                tls=tls,
            )
        )
        lt.call(self.link.start)

    def publish(self, topic: str, payload: bytes) -> int | None:
        return self.lt.call(lambda: self.link.publish(topic, payload))

    def stop(self) -> None:
        self.lt.run(self.link.stop())

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload in self.received if t == topic]


def _until(check: Callable[[], bool], timeout: float = 15) -> None:
    wait_until(check, timeout=timeout, every=0.02)


# -- (a) the agent's link ----------------------------------------------------------------------
def test_the_agents_link_connects_with_its_certificate_publishes_and_receives(
    pki: Pki, loop_thread: LoopThread
) -> None:
    kiosk = Station(loop_thread, pki.url, pki.station("wx-tls-kiosk-01"), "wx-tls-kiosk-01")
    # an operator's tool (another certificate) sends the kiosk a burst of commands
    sender = Station(loop_thread, pki.url, pki.station("wx-tls-sender"))
    try:
        _until(lambda: kiosk.link.connected and sender.link.connected)
        assert kiosk.link.protocol_version == "5"
        assert kiosk.link.last_error is None
        mid = kiosk.publish(station_topic(kiosk.station, "telemetry"), b"{}")
        assert mid is not None
        _until(lambda: mid in kiosk.acked)  # the broker took it (PUBACK over TLS)
        topic = f"fleet/v1/{kiosk.station}/cmd/self_test"
        for n in range(300):
            assert sender.publish(topic, f'{{"n": {n}}}'.encode()) is not None
        _until(lambda: len(kiosk.on(topic)) == 300, timeout=8)
        assert kiosk.on(topic) == [f'{{"n": {n}}}'.encode() for n in range(300)]
    finally:
        kiosk.stop()
        sender.stop()


# -- (b) the controller's ingest ---------------------------------------------------------------
def test_the_controller_connects_with_its_certificate_stores_and_confirms(
    pki: Pki, loop_thread: LoopThread, tmp_path: Path
) -> None:
    # the files come the way a deployment gives them: the settings' [tls] section
    files = pki.station("kioskfleet-controller")
    config = tmp_path / "controller.toml"
    config.write_text(
        f'mqtt_url = "{pki.url}"\n[tls]\nca = "{files.ca}"\ncert = "{files.cert}"\n'
        f'key = "{files.key}"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, env={}).model_copy(
        update={
            "db_url": f"sqlite:///{tmp_path / 'c.db'}",
            "client_id": f"ctl-{uuid.uuid4().hex[:8]}",
            "writer": "thread",
            "ack_interval": 0.2,
            "sweep_interval": 0.2,
        }
    )
    controller = Controller(settings)
    assert controller.tls == files
    controller.start()
    kiosk = Station(loop_thread, pki.url, pki.station("wx-tls-kiosk-02"), "wx-tls-kiosk-02")
    try:
        assert controller.ingest is not None
        assert controller.ingest.connected.wait(15), controller.ingest.last_error
        assert controller.health() == (True, "ok")
        _until(lambda: kiosk.link.connected)
        session = 1_700_000_000_000
        birth = StateMessage(
            v=1,
            station=kiosk.station,
            session=session,
            seq=0,
            ts=time.time(),
            online=True,
            district="Liangxi",
            site="Sanyang Square metro station",
            site_type="subway_station",
            profile="estation-gen2",
            telemetry_interval=10,
        )
        assert kiosk.publish(station_topic(kiosk.station, "state"), encode(birth))
        for seq in range(1, 6):
            telemetry = TelemetryMessage(
                v=1, station=kiosk.station, session=session, seq=seq, ts=time.time()
            )
            assert kiosk.publish(station_topic(kiosk.station, "telemetry"), encode(telemetry))

        def status() -> str | None:
            with controller.engine.connect() as conn:
                detail = crud.get_station(conn=conn, station_id=kiosk.station)
            return None if detail is None else detail.status

        _until(lambda: status() == "online")
        # the controller's answers reach the kiosk over TLS too: its presence and the ack
        # of everything stored
        _until(lambda: bool(kiosk.on(CONTROLLER_STATE_TOPIC)))
        assert b'"online":true' in kiosk.on(CONTROLLER_STATE_TOPIC)[-1].replace(b" ", b"")
        _until(lambda: any(b'"seq":5' in p for p in kiosk.on(ack_topic(kiosk.station))))
    finally:
        kiosk.stop()
        controller.stop()


# -- (c) refused, clearly and at once ----------------------------------------------------------
def _refused_cases(pki: Pki) -> dict[str, tuple[str, TlsFiles, str]]:
    """label → (url, files, what the error must say)."""
    return {
        "no client certificate": (pki.url, TlsFiles(ca=pki.ca.cert), "client certificate"),
        "certificate of another CA": (
            pki.url,
            pki.station("wx-tls-rogue", ca=pki.other),
            "client certificate",
        ),
        "broker not trusted": (
            pki.url,
            replace(pki.station("wx-tls-x"), ca=pki.other.cert),
            "certificate verify failed",
        ),
        "broker certificate for another host": (
            pki.wrong_host_url,
            pki.station("wx-tls-y"),
            "certificate verify failed",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no client certificate",
        "certificate of another CA",
        "broker not trusted",
        "broker certificate for another host",
    ],
)
def test_a_station_the_broker_or_it_cannot_trust_fails_with_a_clear_error(
    pki: Pki, loop_thread: LoopThread, case: str
) -> None:
    url, files, says = _refused_cases(pki)[case]
    kiosk = Station(loop_thread, url, files)
    try:
        _until(lambda: kiosk.link.last_error is not None, timeout=5)
        error = kiosk.link.last_error
        assert error is not None and "TLS" in error and says in error, error
        assert not kiosk.link.connected and kiosk.link.connects == 0
        # a refused certificate is not mistaken for a broker that cannot speak MQTT 5
        assert kiosk.link.protocol_version == "5"
    finally:
        kiosk.stop()


def test_a_controller_without_a_certificate_says_why_it_is_not_connected(
    pki: Pki, tmp_path: Path
) -> None:
    controller = Controller(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'c.db'}",
            mqtt_url=pki.url,
            client_id=f"ctl-{uuid.uuid4().hex[:8]}",
            writer="thread",
        ),
        tls=TlsFiles(ca=pki.ca.cert),
    )
    controller.start()
    try:
        ingest = controller.ingest
        assert ingest is not None
        _until(lambda: "TLS" in (ingest.last_error or ""), timeout=10)
        healthy, reason = controller.health()
        assert not healthy
        assert "client certificate" in reason, reason
        assert not ingest.connected.is_set()
    finally:
        controller.stop()


def test_a_kiosk_agent_reports_over_tls_from_its_config_file(
    pki: Pki, loop_thread: LoopThread, tmp_path: Path
) -> None:
    """The whole agent, configured as on a kiosk: its TOML's [tls] section reaches the link."""
    station = "wx-tls-agent-01"
    files = pki.station(station)
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        f'station = "{station}"\ndistrict = "Binhu"\nsite = "Sanyang Square metro station"\n'
        f'site_type = "subway_station"\nprofile = "estation-gen2"\nbroker = "{pki.url}"\n'
        f'state_dir = "{tmp_path / "state"}"\ntelemetry_interval = 0.5\n'
        "use_profile_devices = false\nlocal_service = false\n"
        f'[tls]\nca = "{files.ca}"\ncert = "{files.cert}"\nkey = "{files.key}"\n',
        encoding="utf-8",
    )
    config = load_agent_config(config_file)
    assert config.tls is not None and config.tls.files == files
    watcher = Station(
        loop_thread, pki.url, pki.station("wx-tls-watcher"), also=(f"fleet/v1/{station}/#",)
    )
    stop = asyncio.Event()
    agent = loop_thread.call(lambda: asyncio.ensure_future(run_agent(config, stop)))
    try:
        _until(lambda: bool(watcher.on(f"fleet/v1/{station}/telemetry")))
        assert b'"station":"wx-tls-agent-01"' in watcher.on(f"fleet/v1/{station}/telemetry")[0]
    finally:
        loop_thread.call(stop.set)
        loop_thread.run(asyncio.wait_for(asyncio.shield(agent), 10))
        watcher.stop()
