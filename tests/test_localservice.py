"""The local device service over real HTTP on 127.0.0.1 (uvicorn), with the drivers' own
simulators.

The printer runs on a real pseudo-terminal (``PtyServer``); the others in memory
(``SimulatorTransport``). Assertions are on what a caller sees: the HTTP status and JSON,
what the printer simulator printed, where the card simulator holds the card, the transaction
events the agent would publish — and what is *not* in the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kioskfleet.agent.hub import DeviceHub, HubSource
from kioskfleet.agent.localservice import (
    LocalService,
    LocalServiceError,
    ServiceLimits,
    check_loopback,
)
from kioskfleet.agent.tracker import TransactionTracker
from kioskfleet.drivers.base import Driver, DriverOptions
from kioskfleet.drivers.cash import CashAcceptor
from kioskfleet.drivers.cctalk import CcTalkBillValidator, CcTalkCoinAcceptor, CcTalkSimulator
from kioskfleet.drivers.crt591 import Crt591Driver, Crt591Simulator
from kioskfleet.drivers.escpos import EscPosSimulator
from kioskfleet.drivers.ga467 import FAKE_CITIZEN, Ga467Driver, Ga467Simulator
from kioskfleet.drivers.registry import ProbeOptions, driver_module
from kioskfleet.drivers.simulator import PtyServer, SimulatorTransport
from kioskfleet.drivers.ssp import SspSimulator, SspValidator
from kioskfleet.protocol.messages import Event
from tests.conftest import wait_until

OPTIONS = DriverOptions(timeout=0.25, retries=1)
TOKEN = "test-token-Zx81"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _identified(driver: Driver) -> Driver:
    driver.identify()
    return driver


def _memory(sim: Any) -> SimulatorTransport:
    return SimulatorTransport(sim, timeout=0.25)


class Running:
    """A :class:`LocalService` served from its own event loop in a background thread."""

    def __init__(self, service: LocalService) -> None:
        self.service = service
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="localservice", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self.port = await self.service.start()
            except BaseException as err:
                self._error = err
                self._ready.set()
                raise
            self._ready.set()
            await self._stop.wait()
            await self.service.stop()

        asyncio.run(main())

    def __enter__(self) -> Running:
        self._thread.start()
        assert self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        token: str | None = TOKEN,
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP request on a fresh connection; returns status and JSON body."""
        status, _, answer = self.exchange(method, path, body, headers=headers, raw=raw, token=token)
        return status, answer

    def exchange(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        token: str | None = TOKEN,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """As :meth:`call`, with the response headers (lower-case names)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            sent_headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            sent_headers.update(headers or {})
            payload = raw
            if body is not None:
                payload = json.dumps(body, ensure_ascii=False).encode()
                sent_headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=payload, headers=sent_headers)
            response = conn.getresponse()
            data = response.read()
            assert response.getheader("Content-Type") == "application/json; charset=utf-8"
            assert response.getheader("Cache-Control") == "no-store"
            got = {k.lower(): v for k, v in response.getheaders()}
            return response.status, got, json.loads(data)
        finally:
            conn.close()

    def raw(self, request: bytes) -> tuple[int, dict[str, Any] | None]:
        """Send raw bytes (for requests http.client refuses to make); returns the status and
        the JSON body (None when the server itself refused the request in plain text)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request)
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed before an answer: {received!r}"
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            fields = dict(
                line.decode("latin-1").lower().split(": ", 1) for line in head.split(b"\r\n")[1:]
            )
            length = int(fields.get("content-length", "0"))
            while len(body) < length:
                chunk = sock.recv(65536)
                assert chunk, "connection closed before the whole answer"
                body += chunk
        status = int(head.split(b" ", 2)[1])
        if not fields.get("content-type", "").startswith("application/json"):
            return status, None
        return status, json.loads(body)


@dataclass
class Kiosk:
    """The simulators of one kiosk, the hub over their drivers, the running service."""

    printer: EscPosSimulator
    bill: CcTalkSimulator
    coin: CcTalkSimulator
    id_reader: Ga467Simulator
    card_reader: Crt591Simulator
    hub: DeviceHub
    server: PtyServer
    events: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def kiosk() -> Iterator[Kiosk]:
    printer = driver_module("escpos").make_simulator(None)
    server = PtyServer(printer).start()
    bill = CcTalkSimulator("bill")
    coin = CcTalkSimulator("coin")
    id_reader = Ga467Simulator()
    card_reader = Crt591Simulator()
    hub = DeviceHub(lock_timeout=5.0)
    printer_opts = ProbeOptions(timeout=0.25, retries=1)
    hub.add(
        "printer",
        lambda: driver_module("escpos").open_driver(server.port, printer_opts),
        driver="escpos",
    )
    hub.add(
        "cash_acceptor",
        lambda: _identified(CcTalkBillValidator(_memory(bill), OPTIONS)),
        driver="cctalk",
    )
    hub.add(
        "coin_acceptor",
        lambda: _identified(CcTalkCoinAcceptor(_memory(coin), OPTIONS)),
        driver="cctalk",
    )
    hub.add("id_reader", lambda: Ga467Driver(_memory(id_reader), OPTIONS), driver="ga467")
    hub.add("card_reader", lambda: Crt591Driver(_memory(card_reader), OPTIONS), driver="crt591")
    try:
        yield Kiosk(printer, bill, coin, id_reader, card_reader, hub, server)
    finally:
        hub.close()
        server.stop()


def local_service(
    hub: DeviceHub, events: list[dict[str, Any]] | None = None, **kwargs: Any
) -> LocalService:
    """The service over ``hub``, its transaction events collected in ``events``."""
    tracker = TransactionTracker(hub, on_event=None if events is None else events.extend)
    return LocalService(hub, tracker, token=TOKEN, port=0, **kwargs)


def serve(kiosk: Kiosk, **kwargs: Any) -> Running:
    return Running(local_service(kiosk.hub, kiosk.events, **kwargs))


def transactions(kiosk: Kiosk, kind: str) -> list[dict[str, Any]]:
    """The transaction events of ``kind`` the agent would publish (each valid on the wire)."""
    for event in list(kiosk.events):
        Event.model_validate(event)
    return [e for e in list(kiosk.events) if e["type"] == "transaction" and e["kind"] == kind]


# -- binding ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "kiosk.local", ""])
def test_refuses_to_bind_anything_but_loopback(host: str) -> None:
    hub = DeviceHub()
    with pytest.raises(LocalServiceError, match="loopback only"):
        LocalService(hub, TransactionTracker(hub), token=TOKEN, host=host)


@pytest.mark.parametrize(
    ("host", "bound"), [("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("::1", "::1")]
)
def test_loopback_addresses_are_accepted(host: str, bound: str) -> None:
    assert check_loopback(host) == bound


# -- receipts ---------------------------------------------------------------------------------
def test_prints_a_chinese_receipt_with_a_qr_code(kiosk: Kiosk) -> None:
    lines = ["无锡市政务服务 e 站", "业务: 水费缴纳", "金额: ¥100.00", "谢谢惠顾"]
    qr = "https://zwfw.wuxi.gov.cn/r/20240101-0001"
    with serve(kiosk) as running:
        status, body = running.call("POST", "/v1/receipts", {"lines": lines, "qr": qr})
    assert status == 200, body
    assert body["printed"] is True
    assert body["status"]["state"] == "online"
    assert body["status"]["supplies"]["paper"] == "full"
    printed = kiosk.printer.receipts[-1]
    assert printed.lines[: len(lines)] == lines
    assert printed.qr == [qr]
    assert printed.cut is True
    assert transactions(kiosk, "receipt") == [
        {"type": "transaction", "kind": "receipt", "phase": "printed"}
    ]


def test_a_printer_without_paper_refuses_with_its_status(kiosk: Kiosk) -> None:
    kiosk.printer.set_fault("paper_out")
    with serve(kiosk) as running:
        status, body = running.call("POST", "/v1/receipts", {"lines": ["缴费成功"]})
        assert status == 409
        assert body["code"] == "device_not_ready"
        assert "paper_out" in body["status"]["faults"]
        kiosk.printer.clear_faults()
        status, body = running.call("POST", "/v1/receipts", {"lines": ["缴费成功"], "cut": False})
    assert status == 200, body
    assert [line for line in kiosk.printer.current.lines if line] == ["缴费成功"]
    assert [e["phase"] for e in transactions(kiosk, "receipt")] == ["failed", "printed"]


# -- ID cards ---------------------------------------------------------------------------------
def test_id_card_data_goes_to_the_caller_and_nowhere_else(
    kiosk: Kiosk, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kiosk.id_reader.present(FAKE_CITIZEN)
    with serve(kiosk) as running:
        status, body = running.call("POST", "/v1/id-card/read")
        assert status == 200, body
        card = body["card"]
        assert card["name"] == FAKE_CITIZEN.name
        assert card["id_number"] == FAKE_CITIZEN.id_number
        assert card["address"] == FAKE_CITIZEN.address
        assert card["birth_date"] == "1900-01-01"
        assert card["valid_until"] == "2040-01-01"
        # a status read while the card lies there shows no card data either
        _, status_body = running.call("GET", "/v1/status")
        kiosk.id_reader.read_error = True
        bad, bad_body = running.call("POST", "/v1/id-card/read")
        kiosk.id_reader.read_error = False
        kiosk.id_reader.remove()
        missing, missing_body = running.call("POST", "/v1/id-card/read")
    assert (bad, bad_body["code"]) == (422, "card_unreadable")
    assert (missing, missing_body["code"]) == (404, "no_card")
    secrets = [
        FAKE_CITIZEN.name,
        FAKE_CITIZEN.id_number,
        FAKE_CITIZEN.address,
        FAKE_CITIZEN.id_number[-8:],
        FAKE_CITIZEN.name[1:],
    ]
    assert caplog.records, "the service and drivers log at debug level"
    everything_else = json.dumps(
        [kiosk.events, status_body, bad_body, missing_body], ensure_ascii=False
    )
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in everything_else
    outcomes = [e["outcome"] for e in transactions(kiosk, "id_card")]
    assert outcomes == ["ok", "failed", "no_card"]


# -- cash-in ----------------------------------------------------------------------------------
def _session(running: Running, session_id: str) -> dict[str, Any]:
    status, body = running.call("GET", f"/v1/cash-in/{session_id}")
    assert status == 200, body
    return body


def _wait_session(
    running: Running, session_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ok() -> bool:
        seen.update(_session(running, session_id))
        return check(seen)

    wait_until(ok, timeout=5.0, every=0.05)
    return seen


def test_cash_in_session_credits_coins_and_notes_through_escrow(kiosk: Kiosk) -> None:
    with serve(kiosk) as running:
        status, body = running.call("POST", "/v1/cash-in", {})
        assert status == 201, body
        sid = body["id"]
        assert body["session"]["devices"] == ["cash_acceptor", "coin_acceptor"]
        assert kiosk.bill.accepting and kiosk.coin.accepting
        _, overview = running.call("GET", "/v1/status")
        assert overview["transactions"]["busy"] is True

        assert kiosk.coin.insert(3)  # 1 yuan
        _wait_session(running, sid, lambda s: s["total"] == 100)

        assert kiosk.bill.insert(6)  # 100 yuan, stops in escrow
        held = _wait_session(running, sid, lambda s: s["escrow"] is not None)
        assert held["escrow"] == {
            "device": "cash_acceptor",
            "channel": 6,
            "value": 10000,
            "currency": "CNY",
        }
        assert held["total"] == 100
        # the application may not end while a note waits for its decision
        status, body = running.call("POST", f"/v1/cash-in/{sid}/end")
        assert (status, body["code"]) == (409, "escrow_pending")

        status, body = running.call("POST", f"/v1/cash-in/{sid}/escrow", {"action": "accept"})
        assert status == 200, body
        _wait_session(running, sid, lambda s: s["total"] == 10100 and s["escrow"] is None)

        assert kiosk.bill.insert(2)  # 5 yuan: the citizen changes their mind
        _wait_session(running, sid, lambda s: s["escrow"] is not None)
        status, body = running.call("POST", f"/v1/cash-in/{sid}/escrow", {"action": "return"})
        assert status == 200, body
        assert body["session"]["returned"] == 1
        assert body["session"]["escrow"] is None
        status, body = running.call("POST", f"/v1/cash-in/{sid}/escrow", {"action": "accept"})
        assert (status, body["code"]) == (409, "no_escrow")

        status, body = running.call("POST", f"/v1/cash-in/{sid}/end")
        assert status == 200, body
        assert body["total"] == 10100
        assert body["currency"] == "CNY"
        assert sorted(c["value"] for c in body["credits"]) == [100, 10000]
        assert not kiosk.bill.accepting and not kiosk.coin.accepting
        # it cannot end twice, and stays readable
        status, again = running.call("POST", f"/v1/cash-in/{sid}/end")
        assert (status, again["code"]) == (409, "session_ended")
        assert _session(running, sid)["state"] == "ended"
        _, overview = running.call("GET", "/v1/status")
        assert overview["transactions"]["busy"] is False
    phases = transactions(kiosk, "cash_in")
    assert [e["phase"] for e in phases] == ["started", "ended"]
    assert phases[1] == {
        "type": "transaction",
        "kind": "cash_in",
        "phase": "ended",
        "session": sid,
        "total": 10100,
        "currency": "CNY",
        "credits": 2,
        "returned": 1,
        "reason": "ended",
    }


def test_acceptors_are_polled_while_a_session_is_open(kiosk: Kiosk) -> None:
    with serve(kiosk) as running:
        _, body = running.call("POST", "/v1/cash-in", {"devices": ["cash_acceptor"]})
        before = len(kiosk.bill.received)
        # nobody calls the service for a second: the session's poller keeps the acceptor fed
        threading.Event().wait(1.0)
        polls = len(kiosk.bill.received) - before
        running.call("POST", f"/v1/cash-in/{body['id']}/end")
    assert polls >= 4  # every 0.2 s (poll_interval_hint), several frames each


def test_one_session_at_a_time_and_clear_errors(kiosk: Kiosk) -> None:
    with serve(kiosk) as running:
        status, body = running.call("POST", "/v1/cash-in", {"channels": [1, 2], "escrow": False})
        assert status == 201, body
        status, second = running.call("POST", "/v1/cash-in", {})
        assert (status, second["code"]) == (409, "session_open")
        assert not kiosk.bill.insert(6)  # channel 6 not enabled
        assert kiosk.bill.insert(2)  # no escrow asked: credited at once
        _wait_session(running, body["id"], lambda s: s["total"] == 500)
        status, ended = running.call("POST", f"/v1/cash-in/{body['id']}/end")
    assert (status, ended["total"]) == (200, 500)


def test_an_abandoned_session_returns_the_note_and_stops_taking_cash(kiosk: Kiosk) -> None:
    limits = ServiceLimits(session_idle_timeout=0.6)
    with serve(kiosk, limits=limits) as running:
        _, body = running.call("POST", "/v1/cash-in", {})
        sid = body["id"]
        assert kiosk.coin.insert(2)  # 5 jiao
        assert kiosk.bill.insert(4)  # 20 yuan into escrow, then the application dies
        wait_until(lambda: not kiosk.bill.accepting, timeout=5.0, every=0.05)
        wait_until(lambda: bool(transactions(kiosk, "cash_in")[1:]), timeout=5.0, every=0.05)
        final = _session(running, sid)
    assert final["state"] == "ended"
    assert final["end_reason"] == "abandoned"
    assert final["total"] == 50
    assert final["returned"] == 1
    assert kiosk.bill.escrow is None and not kiosk.coin.accepting
    assert transactions(kiosk, "cash_in")[-1]["reason"] == "abandoned"


def test_ssp_validator_escrow_accept_and_return() -> None:
    sim = SspSimulator()
    hub = DeviceHub(lock_timeout=5.0)
    hub.add("cash_acceptor", lambda: _identified(SspValidator(_memory(sim), OPTIONS)), driver="ssp")
    events: list[dict[str, Any]] = []
    try:
        with Running(local_service(hub, events)) as running:
            _, body = running.call("POST", "/v1/cash-in", {})
            sid = body["id"]
            assert sim.insert(5)  # 50 yuan
            held = _wait_session(running, sid, lambda s: s["escrow"] is not None)
            assert held["escrow"]["value"] == 5000
            # held in escrow while the application thinks (the poller sends HOLD, not POLL)
            threading.Event().wait(0.6)
            assert sim.escrow == 5
            running.call("POST", f"/v1/cash-in/{sid}/escrow", {"action": "accept"})
            _wait_session(running, sid, lambda s: s["total"] == 5000)
            assert sim.insert(1)
            _wait_session(running, sid, lambda s: s["escrow"] is not None)
            status, body = running.call("POST", f"/v1/cash-in/{sid}/escrow", {"action": "return"})
            assert status == 200, body
            status, body = running.call("POST", f"/v1/cash-in/{sid}/end")
    finally:
        hub.close()
    assert status == 200, body
    assert (body["total"], body["session"]["returned"]) == (5000, 1)
    assert events[-1]["total"] == 5000


def test_the_coordinator_sees_every_credit_once(kiosk: Kiosk) -> None:
    """HubSource reports the credits a session's poller consumed, exactly once."""
    source = HubSource(kiosk.hub, "coin_acceptor")
    with serve(kiosk) as running:
        _, body = running.call("POST", "/v1/cash-in", {"devices": ["coin_acceptor"]})
        assert kiosk.coin.insert(1)
        assert kiosk.coin.insert(3)
        _wait_session(running, body["id"], lambda s: s["total"] == 110)
        first = source.read()
        second = source.read()
        running.call("POST", f"/v1/cash-in/{body['id']}/end")
    credits = [e["value"] for e in first.events if e["type"] == "credit"]
    assert credits == [10, 100]
    assert second.events == []
    assert source.poll_interval() <= 2.0


# -- bank cards -------------------------------------------------------------------------------
def test_bank_card_accept_eject_and_retain(kiosk: Kiosk) -> None:
    sim = kiosk.card_reader
    with serve(kiosk, limits=ServiceLimits(card_watch_interval=0.05)) as running:
        status, body = running.call("POST", "/v1/bank-card/eject")
        assert (status, body["code"]) == (409, "no_card")

        status, body = running.call("POST", "/v1/bank-card/accept")
        assert status == 200, body
        assert body["accepting"] is True and sim.entry_enabled
        sim.insert_card()
        wait_until(
            lambda: running.call("GET", "/v1/status")[1]["transactions"]["busy"], timeout=5.0
        )
        status, body = running.call("POST", "/v1/bank-card/eject")
        assert status == 200, body
        assert sim.position == "gate"
        assert body["media"] == "present" and body["inside"] is True  # ours until taken
        sim.take_card()
        wait_until(lambda: not running.call("GET", "/v1/bank-card")[1]["inside"], timeout=5.0)

        running.call("POST", "/v1/bank-card/accept")
        sim.insert_card()
        wait_until(lambda: running.call("GET", "/v1/bank-card")[1]["inside"], timeout=5.0)
        status, body = running.call("POST", "/v1/bank-card/retain")
        assert status == 200, body
        assert sim.bin_count == 1
        assert str(sim.position) == "none"
        assert body["inside"] is False
        _, overview = running.call("GET", "/v1/status")
    assert overview["transactions"]["busy"] is False
    phases = [e["phase"] for e in transactions(kiosk, "bank_card")]
    assert phases == ["inserted", "ejected", "removed", "inserted", "retained", "removed"]


def test_a_jammed_card_is_a_clear_error_and_keeps_the_kiosk_busy(kiosk: Kiosk) -> None:
    with serve(kiosk) as running:
        running.call("POST", "/v1/bank-card/accept")
        kiosk.card_reader.insert_card()
        kiosk.card_reader.jam_next()
        status, body = running.call("POST", "/v1/bank-card/eject")
        assert (status, body["code"]) == (409, "device_refused")
        _, overview = running.call("GET", "/v1/status")
    assert overview["devices"]["card_reader"]["media"] == "jammed"
    assert overview["transactions"]["busy"] is True


# -- bad requests -----------------------------------------------------------------------------
JSON = {"Content-Type": "application/json"}
BAD_REQUESTS: list[tuple[str, str, dict[str, str], bytes, int, str]] = [
    ("POST", "/v1/receipts", JSON, b"{", 400, "bad_json"),
    ("POST", "/v1/receipts", JSON, b"[]", 400, "bad_json"),
    ("POST", "/v1/receipts", JSON, b'{"lines": NaN}', 400, "bad_json"),
    ("POST", "/v1/receipts", JSON, b'{"lines": "\xff"}', 400, "bad_json"),
    ("POST", "/v1/receipts", JSON, b'{"a":' + b"[" * 20000 + b"]" * 20000 + b"}", 400, "bad_json"),
    ("POST", "/v1/receipts", JSON, b'{"lines": "one line"}', 422, "invalid_field"),
    ("POST", "/v1/receipts", JSON, b'{"lines": [1, 2]}', 422, "invalid_field"),
    ("POST", "/v1/receipts", JSON, b'{"lines": ["a"], "cut": "yes"}', 422, "invalid_field"),
    ("POST", "/v1/receipts", JSON, b'{"lines": ["a"], "qr": 5}', 422, "invalid_field"),
    ("POST", "/v1/receipts", JSON, b'{"lines": [], "qr": null}', 422, "invalid_receipt"),
    ("POST", "/v1/receipts", JSON, b'{"lines": ["a\\u001bb"]}', 422, "invalid_receipt"),
    ("POST", "/v1/receipts", JSON, b'{"lines": ["a"], "colour": "red"}', 400, "unknown_field"),
    ("POST", "/v1/receipts", JSON, b'{"lines": ["a"], "device": "../x"}', 422, "invalid_field"),
    ("POST", "/v1/receipts", JSON, b'{"lines": ["a"], "device": "id_reader"}', 422, "wrong_device"),
    (
        "POST",
        "/v1/receipts",
        {"Content-Type": "text/plain"},
        b'{"lines": ["a"]}',
        415,
        "unsupported_media",
    ),
    ("GET", "/v1/receipts", {}, b"", 405, "method_not_allowed"),
    ("DELETE", "/v1/status", {}, b"", 405, "method_not_allowed"),
    ("GET", "/v1/nothing", {}, b"", 404, "not_found"),
    ("GET", "/v1/status/", {}, b"", 404, "not_found"),
    ("GET", "/v1/cash-in/no-such-session", {}, b"", 404, "unknown_session"),
    ("GET", "/v1/cash-in/..%2F..%2Fetc", {}, b"", 404, "not_found"),
    ("POST", "/v1/cash-in", JSON, b'{"channels": "all"}', 422, "invalid_field"),
    ("POST", "/v1/cash-in", JSON, b'{"channels": [true]}', 422, "invalid_field"),
    ("POST", "/v1/cash-in", JSON, b'{"channels": [0]}', 422, "invalid_field"),
    ("POST", "/v1/cash-in", JSON, b'{"channels": {"printer": [1]}}', 422, "invalid_field"),
    ("POST", "/v1/cash-in", JSON, b'{"devices": ["printer"]}', 422, "invalid_field"),
    ("POST", "/v1/cash-in", JSON, b'{"escrow": 1}', 422, "invalid_field"),
    ("POST", "/v1/cash-in/abc/escrow", JSON, b'{"action": "keep"}', 422, "invalid_field"),
    ("POST", "/v1/cash-in/abc/escrow", JSON, b'{"action": "accept"}', 404, "unknown_session"),
    ("POST", "/v1/cash-in/abc/end", {}, b"", 404, "unknown_session"),
    ("POST", "/v1/bank-card/swallow", {}, b"", 404, "not_found"),
    ("POST", "/v1/id-card/read", JSON, b'{"device": "printer"}', 422, "wrong_device"),
    (
        "POST",
        "/v1/receipts",
        JSON,
        b'{"lines": ["' + b"x" * (70 * 1024) + b'"]}',
        413,
        "body_too_large",
    ),
    ("GET", "/v1/status", {"Host": "evil.example:80"}, b"", 403, "forbidden_host"),
    (
        "POST",
        "/v1/receipts",
        {**JSON, "Origin": "http://evil.example"},
        b'{"lines": ["a"]}',
        403,
        "forbidden_origin",
    ),
]


def _chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


_HEAD = b"Host: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
#: a real server differs from the old hand-written one here: uvicorn (h11) answers these
#: itself, with a plain-text 400 (the old parser gave 505 for HTTP/2.0 and JSON bodies)
MALFORMED_HTTP: list[bytes] = [
    b"HELLO\r\n\r\n",
    b"GET /v1/status HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\n\r\n",  # no Host
    b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nBroken\r\n\r\n",
    b"POST /v1/receipts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
    b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
]
RAW_REFUSED: list[tuple[bytes, int, str]] = [
    # chunked bodies are read now (the old server refused them with 501), and checked
    (
        b"POST /v1/receipts HTTP/1.1\r\n" + _HEAD + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b'{"lines": 5}'),
        422,
        "invalid_field",
    ),
    (
        b"POST /v1/receipts HTTP/1.1\r\n" + _HEAD + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b'{"lines": ["' + b"x" * 70000 + b'"]}'),
        413,
        "body_too_large",
    ),
    (
        b"GET /v1/status HTTP/1.0\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        b"GET /v1/status HTTP/1.1\r\n" + _HEAD + b"X-Big: " + b"a" * 10000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n" + _HEAD + b"\r\n", 414, "line_too_long"),
    (b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 401, "unauthorized"),
]


def test_bad_requests_get_clear_4xx_errors_and_the_service_keeps_answering(kiosk: Kiosk) -> None:
    with serve(kiosk) as running:
        for method, path, headers, body, expected, code in BAD_REQUESTS:
            status, answer = running.call(method, path, headers=headers, raw=body or None)
            assert (status, answer.get("code")) == (expected, code), (method, path, answer)
            assert isinstance(answer["error"], str) and answer["error"]
        # refused by the server itself (h11): a 4xx, whatever its body
        for raw in MALFORMED_HTTP:
            got, _ = running.raw(raw)
            assert 400 <= got < 500, raw[:60]
        # well-formed HTTP that the app refuses: the usual JSON
        for raw, expected, code in RAW_REFUSED:
            got, answer = running.raw(raw)
            assert answer is not None, raw[:60]
            assert (got, answer["code"]) == (expected, code), raw[:60]
        # still serving, and nothing was printed by any of it
        status, answer = running.call("GET", "/v1/status")
    assert status == 200
    assert set(answer["devices"]) == {
        "printer",
        "cash_acceptor",
        "coin_acceptor",
        "id_reader",
        "card_reader",
    }
    assert kiosk.printer.receipts == [] and kiosk.printer.current.lines == []


def test_keep_alive_connection_serves_several_requests(kiosk: Kiosk) -> None:
    with serve(kiosk) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        try:
            for _ in range(3):
                conn.request("GET", "/v1/cash-in/none", headers=AUTH)
                response = conn.getresponse()
                assert response.status == 404
                assert json.loads(response.read())["code"] == "unknown_session"
        finally:
            conn.close()


def test_unconfigured_and_unplugged_devices_answer_503() -> None:
    hub = DeviceHub(lock_timeout=1.0)
    sim = Crt591Simulator()
    transport = _memory(sim)
    hub.add("card_reader", lambda: Crt591Driver(transport, OPTIONS), driver="crt591")
    with Running(local_service(hub)) as running:
        for path in ("/v1/receipts", "/v1/id-card/read", "/v1/cash-in"):
            status, body = running.call("POST", path, {"lines": ["a"]} if "receipt" in path else {})
            assert status == 503, body
            assert body["code"] == "not_configured"
        transport.is_open = False  # unplugged
        status, body = running.call("POST", "/v1/bank-card/accept")
        assert (status, body["code"]) == (503, "device_unavailable")
        _, overview = running.call("GET", "/v1/status")
    assert overview["devices"]["card_reader"]["state"] == "no_device"


def test_print_and_status_reads_from_many_callers_do_not_interleave_frames(kiosk: Kiosk) -> None:
    """The coordinator's reads and the application's prints share the printer's port."""
    source = HubSource(kiosk.hub, "printer")
    results: list[int] = []
    with serve(kiosk) as running:

        def print_one(n: int) -> None:
            status, _ = running.call("POST", "/v1/receipts", {"lines": [f"回执 {n}"]})
            results.append(status)

        def read_status() -> None:
            for _ in range(5):
                assert source.read().state == "online"

        threads = [threading.Thread(target=print_one, args=(n,)) for n in range(4)]
        threads += [threading.Thread(target=read_status) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert results == [200] * 4
    printed = sorted(line for r in kiosk.printer.receipts for line in r.lines if line)
    assert printed == [f"回执 {n}" for n in range(4)]


def test_driver_kinds_are_checked(kiosk: Kiosk) -> None:
    assert kiosk.hub.kind("coin_acceptor") == "coin_acceptor"
    assert set(kiosk.hub.slots_of({"cash_acceptor", "coin_acceptor"})) == {
        "cash_acceptor",
        "coin_acceptor",
    }
    with kiosk.hub.use("cash_acceptor") as driver:
        assert isinstance(driver, CashAcceptor)


def test_an_allowed_browser_origin_gets_cors_answers(kiosk: Kiosk) -> None:
    origin = "http://localhost:3000"
    with serve(kiosk, allowed_origins=[origin]) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        try:
            conn.request("OPTIONS", "/v1/receipts", headers={"Origin": origin})
            preflight = conn.getresponse()
            preflight.read()
            conn.request("GET", "/v1/cash-in/none", headers={**AUTH, "Origin": origin})
            answer = conn.getresponse()
            answer.read()
        finally:
            conn.close()
        status, body = running.call("GET", "/v1/status", headers={"Origin": "http://evil.example"})
    assert preflight.status == 200
    assert preflight.getheader("Access-Control-Allow-Origin") == origin
    assert preflight.getheader("Access-Control-Allow-Methods") == "POST"
    assert answer.status == 404
    assert answer.getheader("Access-Control-Allow-Origin") == origin
    assert (status, body["code"]) == (403, "forbidden_origin")


def test_a_validator_reset_with_a_note_in_escrow_does_not_lock_the_session(kiosk: Kiosk) -> None:
    with serve(kiosk) as running:
        _, body = running.call("POST", "/v1/cash-in", {"devices": ["cash_acceptor"]})
        sid = body["id"]
        assert kiosk.bill.insert(3)  # 10 yuan into escrow
        _wait_session(running, sid, lambda s: s["escrow"] is not None)
        kiosk.bill.power_cycle()  # the validator resets and gives the note back
        after = _wait_session(running, sid, lambda s: s["escrow"] is None)
        assert after["returned"] == 1
        status, ended = running.call("POST", f"/v1/cash-in/{sid}/end")
    assert (status, ended["total"]) == (200, 0)


# -- the token (CONTRACT §6) ------------------------------------------------------------------
def test_every_endpoint_needs_the_token_and_the_description_does_not(kiosk: Kiosk) -> None:
    wrong = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer tökén"},  # latin-1: compared as bytes
    ]
    with serve(kiosk) as running:
        status, _, description = running.exchange("GET", "/openapi.json", token=None)
        assert status == 200
        endpoints = [
            (method.upper(), path.replace("{session_id}", "abc"))
            for path, operations in description["paths"].items()
            for method in operations
        ]
        assert len(endpoints) == 12
        for method, path in endpoints:
            for headers in wrong:
                raw = b"{" if method == "POST" else None  # not even parsed
                status, got, body = running.exchange(
                    method, path, headers={**JSON, **headers}, raw=raw, token=None
                )
                assert (status, body["code"]) == (401, "unauthorized"), (method, path, headers)
                assert got["www-authenticate"] == "Bearer"
        assert (
            running.call("GET", "/v1/status", headers={"Authorization": f"bearer {TOKEN}"})[0]
            == 200
        )
    # nothing moved
    assert kiosk.printer.receipts == [] and kiosk.printer.current.lines == []
    assert not kiosk.bill.accepting and not kiosk.coin.accepting
    assert not kiosk.card_reader.entry_enabled
    assert kiosk.events == []


# -- connections and time ---------------------------------------------------------------------
def test_a_request_head_that_never_ends_is_cut_off(kiosk: Kiosk) -> None:
    with (
        serve(kiosk, limits=ServiceLimits(request_timeout=0.5)) as running,
        socket.create_connection(("127.0.0.1", running.port), timeout=10) as slow,
        socket.create_connection(("127.0.0.1", running.port), timeout=10) as silent,
    ):
        slow.sendall(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        assert slow.recv(1024) == b""  # the server closed it
        assert silent.recv(1024) == b""  # a connection that never sends a byte too
        assert running.call("GET", "/v1/status")[0] == 200


def test_connections_beyond_the_limit_get_503(kiosk: Kiosk) -> None:
    with serve(kiosk, limits=ServiceLimits(max_connections=2)) as running:
        status, _ = running.raw(b"GET /v1/status HTTP/1.1\r\n" + _HEAD + b"\r\n")
        assert status == 200
        held = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(2)]
        try:
            status, _ = running.raw(b"GET /v1/status HTTP/1.1\r\n" + _HEAD + b"\r\n")
            assert status == 503
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: running.call("GET", "/v1/status")[0] == 200, timeout=5.0)


def test_uvicorn_leaves_the_agents_signal_handlers_alone(kiosk: Kiosk) -> None:
    """The agent owns SIGTERM/SIGINT; uvicorn's Server.serve would take them (in the main
    thread, where this test runs) and raise them again when it stops."""

    def handlers() -> tuple[object, object]:
        return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    async def main() -> list[tuple[object, object]]:
        service = local_service(kiosk.hub)
        seen = [handlers()]
        await service.start()
        seen.append(handlers())
        await service.stop()
        seen.append(handlers())
        return seen

    assert threading.current_thread() is threading.main_thread()
    before, during, after = asyncio.run(main())
    assert during == before
    assert after == before


def test_a_taken_port_is_a_local_service_error(kiosk: Kiosk) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            tracker = TransactionTracker(kiosk.hub)
            await LocalService(kiosk.hub, tracker, token=TOKEN, port=port).start()

        with pytest.raises(LocalServiceError, match="cannot listen"):
            asyncio.run(main())


# -- personal data in a failed answer ---------------------------------------------------------
def test_a_card_that_breaks_the_answer_leaks_nowhere(
    kiosk: Kiosk, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer to /v1/id-card/read is validated against its model; a card whose number
    does not fit makes that validation fail. Neither the 500 nor the log holds the card."""
    caplog.set_level(logging.DEBUG)
    odd = dataclasses.replace(
        FAKE_CITIZEN, name="错号公民", id_number="号码32020019000101", address="无锡市错号路9号"
    )
    kiosk.id_reader.present(odd)
    with serve(kiosk) as running:
        status, body = running.call("POST", "/v1/id-card/read")
        assert running.call("GET", "/v1/status")[0] == 200  # still serving
    assert (status, body) == (500, {"error": "internal error", "code": "internal"})
    assert "card.id_number (string_pattern_mismatch)" in caplog.text  # this path was taken
    for secret in (odd.name, odd.id_number, odd.address, odd.id_number[2:10], odd.name[1:]):
        assert secret not in caplog.text
        assert secret not in json.dumps(kiosk.events, ensure_ascii=False)
    for record in caplog.records:
        assert record.exc_info is None or not str(record.exc_info[1])


# -- garbage on the wire ----------------------------------------------------------------------
_VALID = (
    b"POST /v1/cash-in/abc/escrow HTTP/1.1\r\n" + _HEAD + b"Content-Type: application/json\r\n"
    b'Content-Length: 20\r\n\r\n{"action": "accept"}'
)


@st.composite
def _mangled(draw: st.DrawFn) -> bytes:
    """A valid request with a few bytes replaced, inserted or cut; or plain noise."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=300))
    data = bytearray(_VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "cut"]))
        if action == "replace":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


def _send_and_close(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)  # nothing more comes: the server must not wait for it
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


def test_garbage_never_crashes_the_service() -> None:
    hub = DeviceHub()
    with Running(local_service(hub, limits=ServiceLimits(request_timeout=1.0))) as running:

        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
        @given(raw=_mangled())
        def check(raw: bytes) -> None:
            answer = _send_and_close(running.port, raw)
            # a mangled request may still be a valid one (a 404 for another session, a 503
            # for a device this hub lacks): what must never come is a crash
            for head in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer):
                assert int(head) != 500, answer[:300]

        check()
        assert running.call("GET", "/v1/status")[0] == 200
