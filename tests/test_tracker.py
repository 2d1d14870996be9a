"""The transaction tracker without the local device service: the coordinator's reads through
the hub keep the state the update gate asks ("is a citizen mid-transaction?")."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from kioskfleet.agent.hub import DeviceHub, HubSource
from kioskfleet.agent.tracker import TransactionTracker
from kioskfleet.agent.transactions import UnknownSessionError
from kioskfleet.drivers.base import DriverOptions
from kioskfleet.drivers.cash import CashAcceptor
from kioskfleet.drivers.cctalk import CcTalkCoinAcceptor, CcTalkSimulator
from kioskfleet.drivers.crt591 import Crt591Driver, Crt591Simulator
from kioskfleet.drivers.simulator import SimulatorTransport
from kioskfleet.protocol.messages import Event

OPTIONS = DriverOptions(timeout=0.25, retries=1)


def _card_reader_hub(sim: Crt591Simulator) -> DeviceHub:
    hub = DeviceHub(lock_timeout=5.0)
    transport = SimulatorTransport(sim, timeout=0.25)
    hub.add("card_reader", lambda: Crt591Driver(transport, OPTIONS), driver="crt591")
    return hub


def test_a_card_left_in_the_reader_keeps_the_kiosk_busy_with_no_service() -> None:
    sim = Crt591Simulator()
    hub = _card_reader_hub(sim)
    events: list[dict[str, Any]] = []
    tracker = TransactionTracker(hub, on_event=events.extend)
    source = HubSource(hub, "card_reader")  # what the coordinator polls
    try:
        assert source.read().media == "not_present"
        assert not tracker.busy
        sim.insert_card()  # pushed into the gate: ours until taken
        assert source.read().media == "present"
        assert tracker.busy
        assert tracker.snapshot()["bank_card"] == {
            "card_reader": {"inside": True, "accepting": False}
        }
        assert tracker.idle_for() == 0.0
        sim.take_card()
        source.read()
        assert not tracker.busy
    finally:
        tracker.close()
        hub.close()
    for event in events:
        Event.model_validate(event)
    assert [e["phase"] for e in events] == ["inserted", "removed"]


def test_after_close_the_hub_no_longer_feeds_it() -> None:
    sim = Crt591Simulator()
    hub = _card_reader_hub(sim)
    events: list[dict[str, Any]] = []
    tracker = TransactionTracker(hub, on_event=events.extend)
    tracker.close()
    sim.insert_card()
    try:
        hub.read("card_reader")
    finally:
        hub.close()
    assert not tracker.busy
    assert events == []


def test_credits_outside_a_session_are_not_counted_but_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coin = CcTalkSimulator("coin")
    hub = DeviceHub(lock_timeout=5.0)
    transport = SimulatorTransport(coin, timeout=0.25)

    def opener() -> CcTalkCoinAcceptor:
        driver = CcTalkCoinAcceptor(transport, OPTIONS)
        driver.identify()
        return driver

    hub.add("coin_acceptor", opener, driver="cctalk")
    tracker = TransactionTracker(hub)
    try:
        hub.read("coin_acceptor")
        with hub.use("coin_acceptor") as driver:
            assert isinstance(driver, CashAcceptor)
            driver.enable()  # acceptance on, but no cash-in session
        assert coin.insert(3)
        hub.poll("coin_acceptor")
    finally:
        tracker.close()
        hub.close()
    assert "coin_acceptor credited 100 fen outside a cash-in session" in caplog.text
    assert tracker.snapshot()["cash_in"] == []


def test_with_a_loop_events_arrive_on_it_in_order() -> None:
    hub = DeviceHub()
    seen: list[tuple[str, list[str]]] = []

    async def main() -> None:
        done = asyncio.Event()

        def on_event(events: list[dict[str, Any]]) -> None:
            seen.append((threading.current_thread().name, [e["phase"] for e in events]))
            if len(seen) == 3:
                done.set()

        tracker = TransactionTracker(hub, on_event=on_event, loop=asyncio.get_running_loop())

        def from_a_worker() -> None:
            tracker.run(lambda s: s.printing_started())
            tracker.run(lambda s: s.printing_finished("ok"))
            tracker.run(lambda s: s.printing_started())
            tracker.run(lambda s: s.printing_finished("failed"))
            session = tracker.run(lambda s: s.open_cash_in(["cash_acceptor"]))
            with pytest.raises(UnknownSessionError):
                tracker.run(lambda s: s.end_cash_in(session.id + "x"))

        await asyncio.to_thread(from_a_worker)
        async with asyncio.timeout(5):
            await done.wait()
        assert tracker.busy  # the cash-in session is still open
        tracker.close()

    asyncio.run(main())
    assert seen == [
        ("MainThread", ["printed"]),
        ("MainThread", ["failed"]),
        ("MainThread", ["started"]),
    ]


def test_a_failing_event_sink_does_not_break_the_devices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = Crt591Simulator()
    hub = _card_reader_hub(sim)

    def broken(events: list[dict[str, Any]]) -> None:
        raise RuntimeError("the outbox is gone")

    tracker = TransactionTracker(hub, on_event=broken)
    caplog.set_level(logging.ERROR)
    try:
        sim.insert_card()
        assert hub.read("card_reader").media == "present"
        assert tracker.busy
    finally:
        tracker.close()
        hub.close()
    assert "could not hand transaction events to the agent" in caplog.text
