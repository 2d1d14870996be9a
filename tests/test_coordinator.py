"""The device coordinator keeps polling a source that raises, and reports it offline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from kioskfleet.agent.devices import FALLBACK_INTERVAL, Coordinator
from kioskfleet.protocol.devices import DeviceInfo, DeviceStatus

ONLINE = DeviceStatus(
    device="printer",
    driver="escpos",
    state="online",
    faults=[],
    info=DeviceInfo(model="SNBC BT-T080", serial="SN1"),
    supplies={"paper": "full"},
)


class FlakySource:
    """An in-memory :class:`DeviceSource` whose ``read`` raises while ``broken`` is set."""

    slot = "printer"

    def __init__(self, *, blocking: bool = False, broken: bool = False) -> None:
        self.blocking = blocking
        self.broken = broken
        self.reads = 0
        self.interval_broken = False

    def read(self) -> DeviceStatus:
        self.reads += 1
        if self.broken:
            raise RuntimeError("driver bug: index out of range")
        return ONLINE

    def poll_interval(self) -> float:
        if self.interval_broken:
            raise ZeroDivisionError("no interval")
        return 0.001


async def wait_for(check: Callable[[], bool]) -> None:
    """Poll ``check`` on the loop until it holds (five seconds at most)."""
    async with asyncio.timeout(5.0):
        while not check():  # noqa: ASYNC110 — conditions on plain state, no event to await
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("blocking", [False, True])
def test_a_source_that_raises_is_reported_offline_and_polled_on(
    blocking: bool, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[tuple[str, DeviceStatus]] = []
    source = FlakySource(blocking=blocking)

    async def scenario() -> None:
        coordinator = Coordinator([source], lambda slot, s: changes.append((slot, s)))
        await coordinator.refresh()
        coordinator.start()
        try:
            source.broken = True
            await wait_for(lambda: coordinator.statuses["printer"].state == "offline")
            failed_at = source.reads
            await wait_for(lambda: source.reads >= failed_at + 20)  # still polling
            offline = coordinator.statuses["printer"]
            assert (offline.device, offline.driver, offline.faults) == (
                "printer",
                "escpos",
                ["offline"],
            )
            assert offline.info == ONLINE.info
            source.broken = False
            await wait_for(lambda: coordinator.statuses["printer"].state == "online")
            recovered_at = source.reads
            await wait_for(lambda: source.reads >= recovered_at + 5)
        finally:
            await coordinator.stop()

    with caplog.at_level(logging.INFO, logger="kioskfleet.agent.devices"):
        asyncio.run(scenario())
    # one change each way, however many polls failed
    assert [s.state for _, s in changes] == ["offline", "online"]
    lines = [r for r in caplog.records if r.name == "kioskfleet.agent.devices"]
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in lines] == [
        ("WARNING", "printer unavailable"),
        ("INFO", "printer recovered"),
    ]
    assert lines[0].exc_info is not None  # a bug in a source: its traceback, once


def test_a_source_that_raises_before_it_ever_reported_is_polled_until_it_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = FlakySource(broken=True)
    changes: list[tuple[str, DeviceStatus]] = []

    async def scenario() -> None:
        coordinator = Coordinator([source], lambda slot, s: changes.append((slot, s)))
        coordinator.poll_once()  # the agent's first read, before the birth: does not raise
        assert "printer" not in coordinator.statuses  # nothing says which driver it is
        coordinator.start()
        try:
            await wait_for(lambda: source.reads >= 10)
            source.broken = False
            await wait_for(lambda: "printer" in coordinator.statuses)
        finally:
            await coordinator.stop()
        assert coordinator.statuses["printer"] == ONLINE

    with caplog.at_level(logging.INFO, logger="kioskfleet.agent.devices"):
        asyncio.run(scenario())
    assert changes == []  # its first status travels in the birth or telemetry
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1


def test_a_poll_interval_that_raises_falls_back_to_a_fixed_pace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = FlakySource()
    source.interval_broken = True

    async def scenario() -> None:
        coordinator = Coordinator([source], lambda slot, s: None)
        coordinator.start()
        # read and poll_interval run in one step of the task: once it has read, it has asked
        await wait_for(lambda: source.reads >= 1)
        await coordinator.stop()  # re-raises what ended a polling task, if anything did

    asyncio.run(scenario())
    assert f"polling every {FALLBACK_INTERVAL:g} s" in caplog.text
