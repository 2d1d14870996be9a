"""No kiosk speaks for another (CONTRACT §6), against a private Mosquitto started from
deploy/mosquitto/mosquitto.conf followed by deploy/mosquitto/tls.conf, with a fleet CA made by
the product's own code, and a controller that has its own certificate, enrols kiosks over
HTTP and manages the broker's ACL file.

What is checked is what the broker does: a PUBACK's reason code (MQTT 5), what the controller's
subscription receives, what another kiosk's subscription receives, when a revoked kiosk's
connection closes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import shutil
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from kioskfleet.agent.config import load_agent_config
from kioskfleet.agent.identity import IdentityFiles, Renewer, enroll, load_certificate
from kioskfleet.agent.mqtt import MqttLink
from kioskfleet.agent.service import run_agent
from kioskfleet.cli import main as cli
from kioskfleet.controller.pki import (
    FleetCA,
    create_intermediate,
    create_root,
    issue_to_files,
)
from kioskfleet.demo import ServedController
from kioskfleet.protocol.broker_url import parse_broker_url
from kioskfleet.protocol.messages import StateMessage, TelemetryMessage, encode
from kioskfleet.protocol.topics import station_topic
from tests.conftest import LoopThread, Mosquitto, free_port, wait_port, wait_until

pytestmark = [pytest.mark.mosquitto]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
ADMIN = "bootstrap-admin-token-0123456789"
_TLS_DIR = "/etc/mosquitto/kioskfleet/"


@dataclass
class Fleet:
    """The broker, the controller serving HTTP, and the PKI files."""

    folder: Path
    ca: FleetCA
    root: Path
    broker: Mosquitto
    tls_port: int
    served: ServedController
    http: httpx.Client
    base_url: str
    crl: Path
    acl: Path
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def mqtts(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(
            method, path, headers={"Authorization": f"Bearer {ADMIN}"}, **kwargs
        )

    def token(self, station: str, ttl_s: float = 900) -> str:
        answer = self.admin(
            "POST", "/api/enrolment-tokens", json={"station": station, "ttl_s": ttl_s}
        )
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["token"]
        return token

    def enrol(self, station: str) -> IdentityFiles:
        """A kiosk enrolled the way a kiosk does it (key made here, CSR, token)."""
        files = IdentityFiles(
            cert=self.folder / "kiosks" / station / "cert.pem",
            key=self.folder / "kiosks" / station / "key.pem",
            ca=self.folder / "kiosks" / station / "ca.pem",
        )
        enroll(self.base_url, self.token(station), station, files)
        return files

    def station_ids(self) -> set[str]:
        items = self.http.get("/api/stations", params={"limit": 1000}).json()["items"]
        return {item["id"] for item in items}


def _tls_conf(folder: Path, port: int) -> str:
    text = (DEPLOY / "tls.conf").read_text()
    assert "cafile /etc/mosquitto/kioskfleet/" in text
    return text.replace(_TLS_DIR, f"{folder}/").replace(
        "listener 8883", f"listener {port} 127.0.0.1"
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("identity")
    now = dt.datetime.now(dt.UTC)
    # the offline root and the fleet CA, as `kioskfleet fleet-ca` makes them
    root = create_root(folder / "root", now=now)
    fleet_files = create_intermediate(root, folder / "fleet-ca", now=now)
    ca = FleetCA.load(fleet_files, root.cert)
    pki = folder / "broker-files"
    issue_to_files(ca, "broker", pki, server_hosts=["127.0.0.1", "localhost"], now=now, days=30)
    controller = issue_to_files(ca, "controller", folder / "controller", now=now, days=30)
    (pki / "fleet-chain.pem").write_bytes(fleet_files.cert.read_bytes() + root.cert.read_bytes())
    shutil.copy(DEPLOY / "fleet.acl", pki / "fleet.acl")  # as installed; the controller rewrites it
    (pki / "fleet.crl").write_bytes(ca.crl([], now=now))

    broker = Mosquitto(folder / "mosquitto")
    tls_port = free_port()
    with broker.conf.open("a") as conf:
        conf.write(_tls_conf(pki, tls_port))
    broker.start()
    wait_port(tls_port)
    assert broker.proc is not None
    pid_file = folder / "mosquitto.pid"
    pid_file.write_text(f"{broker.proc.pid}\n")

    listen = f"127.0.0.1:{free_port()}"
    from kioskfleet.controller.config import Settings

    settings = Settings(
        db_url=f"sqlite:///{folder / 'controller.db'}",
        mqtt_url=f"mqtts://127.0.0.1:{tls_port}",
        tls={"ca": root.cert, "cert": controller.cert, "key": controller.key},
        listen=listen,
        ack_interval=0.3,
        sweep_interval=0.2,
        writer="thread",
        bootstrap_token=ADMIN,
        fleet_ca={
            "cert": fleet_files.cert,
            "key": fleet_files.key,
            "root": root.cert,
            "crl": pki / "fleet.crl",
        },
        broker_acl={"file": pki / "fleet.acl", "pid_file": pid_file},
    )
    served = ServedController(settings)
    ingest = served.controller.ingest
    assert ingest is not None
    assert ingest.connected.wait(30), ingest.last_error
    base = f"http://{listen}"
    with httpx.Client(
        base_url=base, timeout=20, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as http:
        yield Fleet(
            folder,
            ca,
            root.cert,
            broker,
            tls_port,
            served,
            http,
            base,
            pki / "fleet.crl",
            pki / "fleet.acl",
        )
    served.stop()
    broker.stop()


class Kiosk:
    """A raw MQTT 5 client with a station's certificate, recording what the broker answers."""

    def __init__(self, fleet: Fleet, files: IdentityFiles, station: str) -> None:
        self.station = station
        self.got: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, int] = {}  # mid → reason code
        self.subacks: list[list[int]] = []
        self.connacks: list[int] = []
        self.disconnected_at: float | None = None
        self.lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=station, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(files.ca), certfile=str(files.cert), keyfile=str(files.key))
        client.on_connect = lambda c, u, f, rc, p: self.connacks.append(rc.value)
        client.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        client.on_publish = self._on_publish
        client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.append([r.value for r in rcs])
        client.on_disconnect = self._on_disconnect
        self.client = client
        client.connect("127.0.0.1", fleet.tls_port, keepalive=30)
        client.loop_start()
        wait_until(lambda: bool(self.connacks), timeout=10, every=0.02)

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
        with self.lock:
            self.pubacks[mid] = rc.value

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, p: Any) -> None:
        self.disconnected_at = time.monotonic()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish QoS 1 and wait for the PUBACK; its reason code."""
        info = self.client.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.pubacks, timeout=10, every=0.01)
        return self.pubacks[info.mid]

    def subscribe(self, *topics: str) -> None:
        before = len(self.subacks)
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        wait_until(lambda: len(self.subacks) >= before + len(topics), timeout=10, every=0.01)

    def on(self, topic_prefix: str) -> list[bytes]:
        return [payload for topic, payload in self.got if topic.startswith(topic_prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _birth(station: str, session: int) -> bytes:
    return encode(
        StateMessage(
            v=1,
            station=station,
            session=session,
            seq=0,
            ts=time.time(),
            online=True,
            district="Binhu",
            site="Taihu Square Metro Station",
            site_type="subway_station",
            profile="estation-gen2",
            telemetry_interval=10,
        )
    )


def _telemetry(station: str, session: int, seq: int) -> bytes:
    return encode(TelemetryMessage(v=1, station=station, session=session, seq=seq, ts=time.time()))


def _summary(fleet: Fleet) -> dict[str, Any]:
    summary: dict[str, Any] = fleet.http.get("/api/fleet/summary").json()
    return summary


def _ingested(fleet: Fleet) -> int:
    return int(_summary(fleet)["ingested"]["telemetry"])


# -- enrolment, end to end ---------------------------------------------------------------------
def test_a_kiosk_enrols_with_the_cli_reports_over_mtls_and_renews(
    fleet: Fleet, loop_thread: LoopThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    station = "wx-id-agent-01"
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    identity = tmp_path / "identity"
    config.write_text(
        f'station = "{station}"\ndistrict = "Binhu"\nsite = "Taihu Square Metro Station"\n'
        f'site_type = "subway_station"\nprofile = "estation-gen2"\nbroker = "{fleet.mqtts}"\n'
        f'controller = "{fleet.base_url}"\n'
        f'state_dir = "{state}"\ntelemetry_interval = 0.5\n'
        "use_profile_devices = false\nlocal_service = false\n"
        f'[tls]\nca = "{identity / "ca.pem"}"\ncert = "{identity / "cert.pem"}"\n'
        f'key = "{identity / "key.pem"}"\n',
        encoding="utf-8",
    )
    token = fleet.token(station)
    code = cli(
        [
            "agent",
            "enroll",
            "--controller",
            fleet.base_url,
            "--token",
            token,
            "--config",
            str(config),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    printed = json.loads(out.out)
    assert printed["station"] == station
    assert stat.S_IMODE((identity / "key.pem").stat().st_mode) == 0o600
    first = load_certificate(identity / "cert.pem")
    assert first.not_valid_after_utc - first.not_valid_before_utc == dt.timedelta(
        days=90, minutes=5
    )

    # a second use of the token: refused, one clear line, exit 1
    code = cli(
        [
            "agent",
            "enroll",
            "--controller",
            fleet.base_url,
            "--token",
            token,
            "--config",
            str(config),
        ]
    )
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        "kioskfleet agent enroll: the controller refused (403): this enrolment token was used "
        "already (tokens are one-time)"
    )

    agent_config = load_agent_config(config)
    stop = asyncio.Event()
    agent_task = loop_thread.call(lambda: asyncio.ensure_future(run_agent(agent_config, stop)))
    try:
        wait_until(lambda: station in fleet.station_ids(), timeout=20)
        before = _ingested(fleet)
        wait_until(lambda: _ingested(fleet) > before + 2, timeout=15)  # reporting over mTLS
    finally:
        loop_thread.call(stop.set)
        loop_thread.run(asyncio.wait_for(asyncio.shield(agent_task), 15))

    # renewal with the current identity: a new key and certificate, the link reconnects
    files = IdentityFiles(identity / "cert.pem", identity / "key.pem", identity / "ca.pem")
    link = loop_thread.call(
        lambda: MqttLink(
            client_id=station,
            url=parse_broker_url(fleet.mqtts),
            subscriptions=[f"fleet/v1/{station}/cmd/#"],
            will=lambda: (station_topic(station, "state"), b""),
            on_connect=lambda: None,
            on_message=lambda topic, payload: None,
            on_published=lambda mid: None,
            rng=random.Random(3),
            tls=files.tls,
        )
    )
    loop_thread.call(link.start)
    try:
        wait_until(lambda: link.connected, timeout=15)
        renewer = Renewer(
            controller=fleet.base_url, station=station, files=files, use=link.use_identity
        )
        assert 59 * 86400 < renewer.seconds_until_due() < 61 * 86400  # due after 2/3 of 90 d
        assert loop_thread.run(renewer.attempt()), renewer.last_error
        second = load_certificate(files.cert)
        assert second.serial_number != first.serial_number
        assert second.public_key() != first.public_key()
        wait_until(lambda: link.connects == 2 and link.connected, timeout=15)
        assert link.last_error is None
        # connected with the new certificate: the broker knows it by the same name
        session = int(time.time() * 1000)
        mid = loop_thread.call(
            lambda: link.publish(
                station_topic(station, "telemetry"), _telemetry(station, session, 1)
            )
        )
        assert mid is not None

        # the renewer's own loop: with certificates that live 2.5 minutes (due 2/3 of the way,
        # counting the 5 minutes they are backdated: about 2 s after issue) it renews by itself
        ca = fleet.served.controller.fleet_ca
        assert ca is not None
        normal, ca.validity = ca.validity, dt.timedelta(seconds=153)
        stop_renewing = asyncio.Event()
        running: asyncio.Future[None] | None = None
        try:
            assert loop_thread.run(renewer.attempt())  # a short-lived certificate first
            connects = link.connects
            running = loop_thread.call(lambda: asyncio.ensure_future(renewer.run(stop_renewing)))
            wait_until(lambda: renewer.renewed >= 3, timeout=30)
            wait_until(lambda: link.connects > connects and link.connected, timeout=15)
            assert renewer.last_error is None
        finally:
            ca.validity = normal
            loop_thread.call(stop_renewing.set)
            if running is not None:
                loop_thread.run(asyncio.wait_for(asyncio.shield(running), 10))
    finally:
        loop_thread.run(link.stop())


# -- no kiosk speaks for another ---------------------------------------------------------------
def test_a_kiosk_cannot_publish_as_another_nor_publish_an_ack(fleet: Fleet) -> None:
    a, b = "wx-id-a-01", "wx-id-b-01"
    kiosk = Kiosk(fleet, fleet.enrol(a), a)
    try:
        session = int(time.time() * 1000)
        assert kiosk.publish(station_topic(a, "state"), _birth(a, session)) == 0
        wait_until(lambda: a in fleet.station_ids(), timeout=15)
        rejected = _summary(fleet)["rejected"]
        forged = {
            "another's birth": (station_topic(b, "state"), _birth(b, session)),
            "another's telemetry": (station_topic(b, "telemetry"), _telemetry(b, session, 1)),
            "another's events": (station_topic(b, "events"), b'{"v":1}'),
            "another's reply": (station_topic(b, "reply"), b'{"v":1}'),
            "its own ack": (f"fleet/v1/{a}/ack", b'{"session":1,"seq":99}'),
            "another's ack": (f"fleet/v1/{b}/ack", b'{"session":1,"seq":99}'),
            "a command to another": (f"fleet/v1/{b}/cmd/restart_agent", b"{}"),
            "the controller's state": ("fleet/v1/controller/state", b'{"online":false}'),
            "outside the tree": ("fleet/v2/x", b"{}"),
        }
        for label, (topic, payload) in forged.items():
            code = kiosk.publish(topic, payload)
            assert code >= 0x80, f"{label}: PUBACK {code:#x}"
        # then something it may say: once the controller stored it, what came before it from
        # the same client has passed the broker too (one connection keeps its order)
        before = _ingested(fleet)
        assert kiosk.publish(station_topic(a, "telemetry"), _telemetry(a, session, 1)) == 0
        wait_until(lambda: _ingested(fleet) == before + 1, timeout=15)
        assert b not in fleet.station_ids()  # no birth, no telemetry of b ever arrived
        assert _summary(fleet)["rejected"] == rejected  # nor anything the controller refused
    finally:
        kiosk.close()


def test_a_kiosk_cannot_read_anothers_commands_or_acks(fleet: Fleet) -> None:
    a, b = "wx-id-a-02", "wx-id-b-02"
    spy = Kiosk(fleet, fleet.enrol(a), a)
    victim = Kiosk(fleet, fleet.enrol(b), b)
    try:
        spy.subscribe(f"fleet/v1/{b}/cmd/#", f"fleet/v1/{b}/ack", "fleet/v1/+/cmd/#", "#")
        victim.subscribe(f"fleet/v1/{b}/cmd/#", f"fleet/v1/{b}/ack")
        session = int(time.time() * 1000)
        assert victim.publish(station_topic(b, "state"), _birth(b, session)) == 0
        wait_until(lambda: b in fleet.station_ids(), timeout=15)
        assert victim.publish(station_topic(b, "telemetry"), _telemetry(b, session, 1)) == 0
        created = fleet.http.post(
            f"/api/stations/{b}/commands", json={"name": "self_test", "args": {}}
        )
        assert created.status_code == 201, created.text
        # the victim gets its command and the controller's ack ...
        wait_until(lambda: bool(victim.on(f"fleet/v1/{b}/cmd/")), timeout=15)
        wait_until(lambda: bool(victim.on(f"fleet/v1/{b}/ack")), timeout=15)
        # ... and the spy, subscribed since before both, nothing of b's
        assert [t for t, _ in spy.got if t.startswith(f"fleet/v1/{b}/")] == []
    finally:
        spy.close()
        victim.close()


def test_a_revoked_kiosk_is_disconnected_within_5_s_and_powerless_after(fleet: Fleet) -> None:
    station = "wx-id-revoked-01"
    files = fleet.enrol(station)
    kiosk = Kiosk(fleet, files, station)
    session = int(time.time() * 1000)
    assert kiosk.publish(station_topic(station, "state"), _birth(station, session)) == 0
    wait_until(lambda: station in fleet.station_ids(), timeout=15)
    started = time.monotonic()
    answer = fleet.admin("POST", f"/api/stations/{station}/revoke", json={"reason": "stolen"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["newly_revoked"] and body["broker_reloaded"] and body["disconnected"], body
    wait_until(lambda: kiosk.disconnected_at is not None, timeout=5, every=0.01)
    assert kiosk.disconnected_at is not None
    took = kiosk.disconnected_at - started
    assert took <= 5.0
    print(f"\nrevoked station disconnected {took * 1000:.0f} ms after the request")
    kiosk.client.loop_stop()

    # it comes back with its certificate (the broker cannot know it is revoked before a
    # restart reads the CRL): connected, but it can neither publish nor receive anything
    again = Kiosk(fleet, files, station)
    try:
        again.subscribe(
            f"fleet/v1/{station}/cmd/#", f"fleet/v1/{station}/ack", "fleet/v1/controller/state"
        )
        before = _ingested(fleet)
        for topic, payload in (
            (station_topic(station, "telemetry"), _telemetry(station, session + 1, 1)),
            (station_topic(station, "state"), _birth(station, session + 1)),
        ):
            assert again.publish(topic, payload) >= 0x80
        created = fleet.http.post(
            f"/api/stations/{station}/commands", json={"name": "self_test", "args": {}}
        )
        assert created.status_code == 201
        # a kiosk that may read its commands gets one in well under a second (the previous
        # test); the retained controller state would come at once on subscribing
        time.sleep(1.5)
        assert again.got == []
        assert _ingested(fleet) == before
    finally:
        again.close()
    assert f"user {station}\ntopic deny #\n" in fleet.acl.read_text()
    crl = x509.load_pem_x509_crl(fleet.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(load_certificate(files.cert).serial_number)


def test_the_broker_reloaded_by_the_controller_keeps_the_plain_listener_powerless(
    fleet: Fleet,
) -> None:
    """The ACL file applies to every listener: an anonymous client on the plain loopback
    listener of mosquitto.conf can publish nothing into the fleet's tree."""
    got: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv5)
    client.on_publish = lambda c, u, mid, rc, p: got.append(rc.value)
    client.connect("127.0.0.1", fleet.broker.port)
    client.loop_start()
    try:
        client.publish("fleet/v1/wx-id-a-01/ack", b"{}", qos=1)
        wait_until(lambda: bool(got), timeout=10, every=0.02)
        assert got[0] >= 0x80
    finally:
        client.disconnect()
        client.loop_stop()
    assert os.path.exists(fleet.acl)


def test_a_broker_restarted_with_the_crl_refuses_a_revoked_kiosk_at_the_handshake(
    fleet: Fleet,
) -> None:
    """How a deployment applies revocation lists: Mosquitto reads ``crlfile`` when it starts.
    (Last in this module: it restarts the broker.)"""
    revoked, kept = "wx-id-revoked-02", "wx-id-kept-02"
    revoked_files, kept_files = fleet.enrol(revoked), fleet.enrol(kept)
    answer = fleet.admin("POST", f"/api/stations/{revoked}/revoke", json={"reason": "retired"})
    assert answer.status_code == 200
    fleet.broker.stop()
    with fleet.broker.conf.open("a") as conf:
        conf.write(f"crlfile {fleet.crl}\n")
    fleet.broker.start()
    wait_port(fleet.tls_port)
    # the broker's alert usually reaches the client ("sslv3 alert certificate revoked"); when
    # it closes first the client sees an EOF instead. Either way no TLS session, whereas the
    # same probe with the kept kiosk's certificate gets one
    refusals = [_handshake_refusal(fleet, revoked_files) for _ in range(3)]
    assert "accepted" not in refusals, refusals
    assert _handshake_refusal(fleet, kept_files) == "accepted"
    kiosk = Kiosk(fleet, kept_files, kept)
    try:
        assert kiosk.connacks == [0]
    finally:
        kiosk.close()


def _handshake_refusal(fleet: Fleet, files: IdentityFiles) -> str:
    """Why the broker ends a TLS connection made with ``files`` (TLS 1.3 checks the client's
    certificate after the client's side of the handshake: the alert comes at the first read)."""
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    with socket.create_connection(("127.0.0.1", fleet.tls_port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"\x10\x00")  # anything: the broker answers with an alert
                tls.recv(1)
        except ssl.SSLError as err:
            return str(err)
    return "accepted"
